"""The real server as a subprocess on 127.0.0.1, and a local HTTP server of test images."""

import io
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from server.child_process import free_port, running_server
from tests.images import noise, photo_like

__all__ = ["free_port", "image_server", "png", "running_server", "still_running", "wait_ended"]


def still_running(procs: list) -> list:
    """The ``psutil.Process``es that still run; an exited one that no parent has reaped yet (a
    zombie: psutil's ``is_running`` and ``wait_procs`` count it as alive) counts as ended."""
    import psutil

    running = []
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
        except psutil.NoSuchProcess:
            pass
    return running


def wait_ended(procs: list, timeout: float) -> list:
    """Wait up to ``timeout`` seconds for ``procs`` to end; return those still running."""
    deadline = time.monotonic() + timeout
    while still_running(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return still_running(procs)


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class _ImageHandler(BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802
        route = self.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.end_headers()
            return
        kind, payload = route
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", payload)
            self.end_headers()
            return
        if kind == "slow":
            time.sleep(payload)
            payload = b""
        self.send_response(200)
        self.send_header("Content-Type", "image/png" if kind == "png" else "text/plain")
        if kind != "stream":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@contextmanager
def image_server():
    """Serves test images on 127.0.0.1 (the server under test allow-lists this host)."""
    from PIL import Image

    routes = {
        "/img.png": ("png", png(photo_like(48, 40, seed=3))),
        "/big.png": ("png", png(noise(400, 400, seed=4))),  # ~480 KB, over the test cap
        "/big-stream.png": ("stream", png(noise(400, 400, seed=5))),  # no Content-Length
        "/many-pixels.png": ("png", png(Image.new("L", (3000, 3000)))),  # small file, 9 MP
        "/redirect": ("redirect", "/img.png"),
        "/loop": ("redirect", "/loop"),
        "/slow": ("slow", 5.0),
        "/text": ("text", b"hello, not an image"),
    }
    handler = type("Handler", (_ImageHandler,), {"routes": routes})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
