"""The real server as a subprocess on 127.0.0.1, and a local HTTP server of test images."""

import io
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from tests.images import noise, photo_like


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def running_server(model_dir, *extra: str, log_path=None, ready_timeout: float = 240.0):
    """Start ``python -m server``; yield (base_url, process); SIGTERM it at the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_ENABLE_V1_MULTIPROCESSING")}
    env.update(PYTHONUNBUFFERED="1", VLLM_CPU_KVCACHE_SPACE="1")
    cmd = [
        sys.executable, "-m", "server", "--model", str(model_dir), "--port", str(port),
        "--enforce-eager", "--kv-cache-gb", "1", "--max-model-len", "1024", *extra,
    ]
    log = open(log_path or os.devnull, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} while starting (log: {log_path})")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise RuntimeError(f"server not ready within {ready_timeout} s (log: {log_path})")
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


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
