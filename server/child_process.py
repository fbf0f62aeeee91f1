"""Run our server as a child process on 127.0.0.1 (for benchmarks, shapes-bench and tests)."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(model_dir, *extra: str, log_path=None, ready_timeout: float = 240.0, kv_cache_gb: int = 1):
    """Start ``python -m server``; yield (base_url, process); SIGTERM it at the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_ENABLE_V1_MULTIPROCESSING")}
    env.update(PYTHONUNBUFFERED="1", VLLM_CPU_KVCACHE_SPACE=str(kv_cache_gb))
    cmd = [
        sys.executable, "-m", "server", "--model", str(model_dir), "--port", str(port),
        "--enforce-eager", "--kv-cache-gb", str(kv_cache_gb), "--max-model-len", "1024", *extra,
    ]
    log = open(log_path or os.devnull, "w")  # noqa: SIM115 (closed in finally)
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
