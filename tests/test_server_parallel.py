"""Parallel layouts and bad models at start-up.

Tensor parallelism on a CPU engine: ``llava-serve --tensor-parallel-size 2`` binds each rank's
threads to its share of the cores and gives TP=1's greedy tokens. Pipeline parallelism on a
CPU engine, an unsupported architecture, vision tower or quantisation: refused at start-up
with a message, never a stack trace.
"""

import base64
import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from server.child_process import free_port, server_env, start_server, stop, wait_healthy
from server.config import ServerSettings
from server.engine import (
    BIND_ENV,
    RESERVED_ENV,
    StartupError,
    compact_ids,
    cpu_engine_env,
    model_in_engine_process,
    split_cores,
)
from tests.images import photo_like
from tests.server_proc import png, running_server

# Every head count divides by 2, so both the LLM and the (sharded) CLIP tower split over two ranks.
TP_SPEC = TinyLlavaSpec(num_heads=2, num_kv_heads=2, vision_heads=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("parallel") / "model"
    build_tiny_llava(out, TP_SPEC)
    return out


# ---- the binding, without an engine ---------------------------------------------------------

def test_cores_split_evenly_between_ranks():
    assert split_cores({0, 1}, reserved=0, ranks=2) == "0|1"
    assert split_cores(range(8), reserved=0, ranks=2) == "0-3|4-7"
    assert split_cores(range(8), reserved=2, ranks=2) == "0-2|3-5"  # the last cores stay reserved
    assert split_cores(range(5), reserved=0, ranks=2) == "0-1|2-3"  # the odd core stays unbound
    assert split_cores({8, 2, 4, 6, 9}, reserved=1, ranks=2) == "2,4|6,8"
    assert compact_ids([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_too_few_cores_are_refused_with_the_numbers():
    with pytest.raises(StartupError) as info:
        split_cores({0, 1}, reserved=1, ranks=2)
    message = str(info.value)
    assert "2 parallel ranks" in message and "2 core(s) (0-1)" in message
    assert "1 of them reserved" in message and "leaving 1" in message


def test_engine_env_for_tensor_parallel():
    tp2 = ServerSettings(tensor_parallel_size=2)
    # Small machine: nothing reserved, one core per rank.
    small = cpu_engine_env(tp2, environ={}, allowed={0, 1}, cpu_count=2)
    assert small == {RESERVED_ENV: "0", BIND_ENV: "0|1"}
    # The flag's reserved cores come off the end.
    flagged = ServerSettings(tensor_parallel_size=2, cpu_reserved_cores=2)
    assert cpu_engine_env(flagged, environ={}, allowed=range(8), cpu_count=8)[BIND_ENV] == "0-2|3-5"
    # Large machine, nothing set: vLLM's default reserve, one core per rank.
    assert cpu_engine_env(tp2, environ={}, allowed=range(16), cpu_count=16) == {BIND_ENV: "0-6|7-13"}
    # The user's binding wins (and is not rewritten); a binding for the wrong rank count is refused.
    assert BIND_ENV not in cpu_engine_env(tp2, environ={BIND_ENV: "0-3|4-7"}, allowed={0, 1}, cpu_count=2)
    with pytest.raises(StartupError, match="gives 1 core list"):
        cpu_engine_env(tp2, environ={BIND_ENV: "0-3"}, allowed={0, 1}, cpu_count=2)
    # One rank: vLLM's own binding, as before.
    assert cpu_engine_env(ServerSettings(), environ={}, allowed={0, 1}, cpu_count=2) == {RESERVED_ENV: "0"}
    with pytest.raises(StartupError, match="3 parallel ranks"):
        cpu_engine_env(ServerSettings(tensor_parallel_size=3), environ={}, allowed={0, 1}, cpu_count=2)



def test_model_runs_in_the_engine_process_on_small_machines_with_one_rank():
    one = ServerSettings()
    assert model_in_engine_process(one, environ={}, cpu_count=2)
    assert model_in_engine_process(one, environ={}, cpu_count=4)
    assert not model_in_engine_process(one, environ={}, cpu_count=8)  # vLLM's worker, threads bound
    assert not model_in_engine_process(one, environ={BIND_ENV: "0-1"}, cpu_count=2)  # the user binds
    assert not model_in_engine_process(ServerSettings(tensor_parallel_size=2), environ={}, cpu_count=2)


# ---- TP=2 through the real server gives TP=1's greedy tokens --------------------------------

def _greedy(base: str, messages: list) -> list[tuple[str, float]]:
    body = {"model": "model", "messages": messages, "temperature": 0, "max_tokens": 24, "min_tokens": 24,
            "logprobs": True, "top_logprobs": 2}
    r = httpx.post(base + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert len(content) == 24
    return [(t["token"], t["logprob"], tuple(a["token"] for a in t["top_logprobs"])) for t in content]


def _prompts() -> list[list]:
    url = "data:image/png;base64," + base64.b64encode(png(photo_like(48, 40, seed=3))).decode()
    return [
        [{"role": "user", "content": "How many objects are there?"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                      {"type": "text", "text": "What is in the image?"}]}],
    ]


def test_tensor_parallel_2_matches_tp_1(model_dir, tmp_path, monkeypatch):
    assert TP_SPEC.num_heads % 2 == TP_SPEC.num_kv_heads % 2 == TP_SPEC.vision_heads % 2 == 0
    monkeypatch.delenv(BIND_ENV, raising=False)
    results, logs = {}, {}
    for tp in (1, 2):
        logs[tp] = tmp_path / f"tp{tp}.log"
        started = time.perf_counter()
        with running_server(model_dir, "--tensor-parallel-size", str(tp), "--dtype", "float32",
                            log_path=logs[tp]) as (base, _):
            results[tp] = [_greedy(base, p) for p in _prompts()]
        print(f"TP={tp}: {time.perf_counter() - started:.1f} s")
    assert "the model runs in the engine's process" in logs[1].read_text()  # TP=1 here: no worker process
    log2 = logs[2].read_text()
    assert "the model runs in the engine's process" not in log2
    assert f"{BIND_ENV}=" in log2 and "derived from the cores" in log2, log2[-3000:]
    assert "local_world_size=2" in log2 and "local_rank=1, core ids=" in log2
    for one, two in zip(results[1], results[2], strict=True):
        assert [t[0] for t in one] == [t[0] for t in two]  # the same tokens
        assert [t[2] for t in one] == [t[2] for t in two]  # and the same runners-up
        assert [t[1] for t in one] == pytest.approx([t[1] for t in two], abs=1e-3)


# ---- refused at start-up ---------------------------------------------------------------------

def _serve(model: str, *flags: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "server", "--model", model, *flags], capture_output=True,
                          text=True, timeout=120, env=server_env(), check=False)
    return done, time.perf_counter() - started


def test_pipeline_parallel_on_cpu_is_refused(model_dir):
    done, seconds = _serve(str(model_dir), "--pipeline-parallel-size", "2")
    assert done.returncode != 0
    assert "--pipeline-parallel-size 2 is not supported on a CPU engine" in done.stderr
    assert "vLLM 0.32's CPU scheduler" in done.stderr and "works on GPUs" in done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 60, seconds


@pytest.mark.parametrize("size", ["16", "48", "0"])
def test_a_block_size_the_cpu_engine_cannot_run_is_refused(model_dir, size):
    done, seconds = _serve(str(model_dir), "--block-size", size)
    assert done.returncode != 0
    expected = "must be at least 1 token" if size == "0" else f"--block-size {size} cannot run on a CPU engine"
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert seconds < 60, seconds


@pytest.mark.parametrize(
    "change, named, supported",
    [
        (lambda c: c.update(architectures=["FooForCausalLM"]),
         "FooForCausalLM", "LlavaForConditionalGeneration"),
        (lambda c: c["vision_config"].update(model_type="bogus"),
         "'bogus'", "clip_vision_model"),
        (lambda c: c.update(quantization_config={"quant_method": "bitsandbytes"}),
         "'bitsandbytes'", "supported: compressed-tensors"),
    ],
    ids=["architecture", "vision-tower", "quantisation"],
)
def test_unsupported_model_is_refused_by_name(model_dir, tmp_path, change, named, supported):
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    change(config)
    (bad / "config.json").write_text(json.dumps(config))
    done, _ = _serve(str(bad))
    assert done.returncode != 0
    assert named in done.stderr and supported in done.stderr, done.stderr[-2000:]
    assert "not supported" in done.stderr
    assert "Traceback" not in done.stderr


def test_max_model_len_beyond_the_models_positions_is_refused(model_dir, tmp_path):
    """vLLM would fail on it inside the engine's start (a traceback, exit 3); refused by name."""
    limit = json.loads((model_dir / "config.json").read_text())["text_config"]["max_position_embeddings"]
    done, _ = _serve(str(model_dir), "--max-model-len", str(limit * 2))
    assert done.returncode != 0
    assert f"--max-model-len {limit * 2} is longer than this model's max_position_embeddings ({limit}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_start_whose_port_was_taken_is_retried_on_another(model_dir, tmp_path, monkeypatch):
    """The port is picked free but bound only after the engine loads; if something took it
    meanwhile, the helper starts again on a new port instead of failing the test run."""
    import socket

    import server.child_process as child

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    # The first start gets the taken port; later ones a port picked free when they start (a port
    # picked at the top of this test could be taken again by the time a second start used it).
    first = iter([taken.getsockname()[1]])
    free = child.free_port
    monkeypatch.setattr(child, "free_port", lambda: next(first, None) or free())
    try:
        with child.running_server(model_dir, "--dtype", "float32", log_path=tmp_path / "log") as (base, _):
            assert httpx.get(base + "/health", timeout=10).status_code == 200
            assert str(taken.getsockname()[1]) not in base
    finally:
        taken.close()


def test_a_port_in_use_is_refused_before_the_engine_loads(model_dir):
    """The listening address is bound before the engine loads: a port another process holds
    is refused at once with its reason, not after minutes of loading the model."""
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done, _ = _serve(str(model_dir), "--port", str(port), "--enforce-eager", "--kv-cache-gb", "1")
    finally:
        taken.close()
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in done.stderr
    assert "Traceback" not in done.stderr
    assert "engine ready" not in done.stderr and "application startup" not in done.stderr.lower()


def test_the_port_is_held_while_the_engine_loads(model_dir, tmp_path):
    """Nothing can bind the server's port between its start and the engine being ready."""
    import socket

    port = free_port()
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc, _ = start_server(model_dir, ("--dtype", "float32"), out, port=port)
    try:
        deadline = time.time() + 120
        while "listening on" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert "listening on http://127.0.0.1:" in log.read_text(), log.read_text()[-2000:]
        assert "engine ready" not in log.read_text()  # the model takes seconds to load
        with socket.socket() as rival, pytest.raises(OSError, match="in use"):
            rival.bind(("127.0.0.1", port))
        assert wait_healthy(proc, f"http://127.0.0.1:{port}", timeout=240), log.read_text()[-2000:]
    finally:
        stop(proc)
    assert proc.returncode == 0, log.read_text()[-2000:]
