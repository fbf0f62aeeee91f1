"""Run our server as a child process on 127.0.0.1 (for benchmarks, shapes-bench and tests)."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The port is free when picked; the server binds it as it starts, before its engine loads,
# but another socket can take it in the seconds between: such a start is tried again on
# another port.
PORT_TAKEN = "address already in use"
PORT_ATTEMPTS = 3


def server_env() -> dict[str, str]:
    """This process's environment for a server child, without a parent's in-process engine switch."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VLLM_ENABLE_V1_MULTIPROCESSING")}


def start_server(model_dir, extra, log, kv_cache_gb: int = 1,
                 port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``python -m server`` on ``port`` (else a free one), its output to the open file ``log``;
    (process, base URL). Not waited for: see ``wait_healthy``."""
    port = free_port() if port is None else port
    env = server_env()
    env.update(PYTHONUNBUFFERED="1", VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gb))
    cmd = [
        sys.executable, "-m", "server", "--model", str(model_dir), "--port", str(port),
        "--enforce-eager", "--kv-cache-gb", str(kv_cache_gb), "--max-model-len", "1024", *extra,
    ]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen, base: str, timeout: float) -> bool:
    """True once ``base``/health answers 200 while ``proc`` runs; False if ``proc`` exited
    first. Raises TimeoutError after ``timeout`` seconds (the process is left running)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200 and proc.poll() is None:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"not healthy within {timeout} s")


def stop(proc: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM ``proc``; SIGKILL it if it has not exited after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(proc: subprocess.Popen, base: str, ready_timeout: float, log_path: Path) -> bool:
    """True once the server answers /health; False if it exited because its port was taken."""
    try:
        if wait_healthy(proc, base, ready_timeout):
            return True
    except TimeoutError:
        raise RuntimeError(f"server not ready within {ready_timeout} s (log: {log_path})") from None
    if PORT_TAKEN in log_path.read_text(errors="replace").lower():
        return False
    raise RuntimeError(f"server exited with {proc.returncode} while starting (log: {log_path})")


@contextmanager
def running_server(model_dir, *extra: str, log_path=None, ready_timeout: float = 240.0, kv_cache_gb: int = 1):
    """Start ``python -m server``; yield (base_url, process); SIGTERM it at the end. The log
    (``log_path``, else a temporary file) holds the last start's output."""
    with tempfile.TemporaryDirectory(prefix="llava-server-") as scratch:
        path = Path(log_path) if log_path else Path(scratch) / "server.log"
        for _ in range(PORT_ATTEMPTS):
            with open(path, "w") as log:
                proc, base = start_server(model_dir, extra, log, kv_cache_gb)
                try:
                    if _ready(proc, base, ready_timeout, path):
                        try:
                            yield base, proc
                        finally:
                            stop(proc)
                        return
                finally:
                    stop(proc)
        raise RuntimeError(f"server lost its port {PORT_ATTEMPTS} times while starting (log: {path})")
