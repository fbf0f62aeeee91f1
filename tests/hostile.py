"""Hostile image servers on loopback addresses, for the fetching tests and the soak.

Each route misbehaves in one way a real attacker's server would; the server records
what it saw (request headers, how far a drip got, whether the client hung up) so a
test can check the fetcher's side of the story. Every loop here is bounded.
"""

import gzip
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.images import photo_like
from tests.server_proc import png

BOMB_BYTES = 64 * 2**20  # what the gzip bomb inflates to


class Record:
    """What the hostile server observed, per route."""

    def __init__(self):
        self.lock = threading.Lock()
        self.hits: dict[str, int] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.hung_up: dict[str, float] = {}  # route -> monotonic time the client was found gone

    def hit(self, path: str, headers) -> None:
        with self.lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            self.headers[path] = {k.lower(): v for k, v in headers.items()}


def _handler(routes: dict, record: Record):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            path = self.path.split("?")[0]
            record.hit(path, self.headers)
            route = routes.get(path)
            if route is None:
                self._send(404, b"no such image", "text/plain")
                return
            route(self, path)

        def _send(self, status: int, body: bytes, kind: str = "image/png", extra: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def drip(period_s: float, total: int = 2000):
    """A valid-looking response that sends one byte per ``period_s`` (at most ``total``)."""

    def route(handler, path):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.send_header("Content-Length", str(total))
        handler.end_headers()
        try:
            for _ in range(total):
                handler.wfile.write(b"\x89")
                handler.wfile.flush()
                time.sleep(period_s)
        except (BrokenPipeError, ConnectionResetError):
            with handler.server.record.lock:
                handler.server.record.hung_up[path] = time.monotonic()

    return route


def gzip_bomb(handler, path):
    """A small gzip body that inflates to ``BOMB_BYTES``, sent even if not asked for."""
    body = handler.server.bomb
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    try:
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass


def redirect(location: str):
    def route(handler, path):
        handler._send(302, b"", "text/plain", {"Location": location})

    return route


def image(handler, path):
    handler._send(200, handler.server.png)


def not_an_image(handler, path):
    handler._send(200, b"hello, not an image", "text/plain")


@contextmanager
def hostile_server(host: str = "127.0.0.1", routes: dict | None = None):
    """Yield ``(base_url, record)`` of a server on ``host`` (any 127.0.0.x) with the
    default hostile routes plus ``routes`` (path -> route function)."""
    record = Record()
    table = {
        "/img.png": image,
        "/drip": drip(0.2),
        "/drip-fast": drip(0.05),
        "/gzip-bomb": gzip_bomb,
        "/text": not_an_image,
        **(routes or {}),
    }
    httpd = ThreadingHTTPServer((host, 0), _handler(table, record))
    httpd.daemon_threads = True
    httpd.record = record
    httpd.png = png(photo_like(40, 30, seed=11))
    httpd.bomb = gzip.compress(b"\0" * BOMB_BYTES, compresslevel=9)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{httpd.server_address[1]}", record
    finally:
        httpd.shutdown()
        httpd.server_close()
