"""Server lifecycle: SIGTERM drains requests in flight; a dead engine turns /health to 503."""

import json
import signal
import threading
import time

import httpx
import psutil
import pytest

from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from tests.server_proc import running_server


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lifecycle") / "model"
    build_tiny_llava(out, TinyLlavaSpec())
    return out


def _stream_all(base: str, max_tokens: int, first_chunk: threading.Event, result: dict) -> None:
    body = {"model": "model", "messages": [{"role": "user", "content": "count"}], "max_tokens": max_tokens,
            "min_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    lines = []
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as r:
        result["status"] = r.status_code
        for line in r.iter_lines():
            if line:
                lines.append(line)
                first_chunk.set()
    result["lines"] = lines


def test_sigterm_drains_in_flight_requests(model_dir, tmp_path):
    with running_server(model_dir, "--shutdown-grace-s", "60", log_path=tmp_path / "log") as (base, proc):
        first, result = threading.Event(), {}
        worker = threading.Thread(target=_stream_all, args=(base, 400, first, result))
        worker.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.HTTPError):  # no new connections once draining
            httpx.get(base + "/health", timeout=2)
        worker.join(120)
        assert proc.wait(90) == 0
    assert result["status"] == 200
    assert result["lines"][-1] == "data: [DONE]"
    usage = json.loads(result["lines"][-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 400  # the request in flight finished whole


def test_request_timeout_then_dead_engine_makes_health_503(model_dir, tmp_path):
    with running_server(model_dir, "--request-timeout-s", "1.5", log_path=tmp_path / "log") as (base, proc):
        slow = {"model": "model", "messages": [{"role": "user", "content": "go"}], "max_tokens": 900,
                "min_tokens": 900}
        r = httpx.post(base + "/v1/chat/completions", json=slow, timeout=60)
        assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]

        children = psutil.Process(proc.pid).children(recursive=True)
        cores = [c for c in children if "EngineCore" in " ".join(c.cmdline()) or "EngineCore" in c.name()]
        assert cores, [c.cmdline() for c in children]
        for core in cores:
            core.kill()
        deadline = time.time() + 60
        while time.time() < deadline and httpx.get(base + "/health", timeout=5).status_code != 503:
            time.sleep(0.5)
        assert httpx.get(base + "/health", timeout=5).status_code == 503
        r = httpx.post(base + "/v1/chat/completions", json={"model": "model", "messages": [
            {"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable_error"
        assert "retry-after" in r.headers
