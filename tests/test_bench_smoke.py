"""The serving benchmark suite, end to end on the tiny model against our server.

Checks the report's structure and that every request succeeded, not timings.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_serving_benchmark_smoke(tmp_path):
    out = tmp_path / "serving_tiny"
    cmd = [
        sys.executable, "-m", "benchmarks.serving.run", "--config", "tiny", "--contenders", "ours",
        "--concurrency", "1", "3", "--rate", "4", "--goodput", "1", "200", "--num-requests", "6",
        "--images-per-request", "1", "4",
        "--image-size", "64", "48", "--input-words", "16", "--output-tokens", "8", "--eager",
        "--port", "8391", "--out", str(out), "--multiturn", "2",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    runs = report["runs"]
    swept = [r for r in runs if r["mode"] == "goodput"]
    assert [(r["mode"], r["level"]) for r in runs if r["mode"] != "goodput"] == [
        ("concurrency", 1), ("concurrency", 3), ("rate", 4.0)]
    # rising rates until one misses the SLO; the goodput is the highest that met it
    assert [r["level"] for r in swept] in ([1.0], [1.0, 200.0])
    assert all(r["meets_slo"] for r in swept[:-1]) and (len(swept) == 2 or not swept[0]["meets_slo"])
    assert report["goodput"]["ours"] == max([r["level"] for r in swept if r["meets_slo"]], default=0.0)
    assert runs[0]["images_per_request_mean"] == 2.5  # 1 and 4 images, alternating
    for run in runs:
        assert run["flops_per_request"] > 0 and 0 < run["ceiling_share"] < 1
        assert run["completed"] == 6 and run["errors"] == 0, run["error_samples"]
        assert run["requests_per_s"] > 0 and run["output_tokens_per_s"] > 0
        for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            assert set(run[key]) == {"mean", "p50", "p99"}
            assert 0 <= run[key]["p50"] <= run[key]["p99"]
        assert run["config"]["output_tokens"] == 8
    turns = report["multiturn"]["ours"]
    assert turns["completed_turns"] == 2 * 4 and turns["errors"] == 0, turns["error_samples"]
    assert len(turns["ttft_s_by_turn"]) == 4 and all(t > 0 for t in turns["ttft_s_by_turn"])
    settings = report["settings"]
    assert settings["ceilings_gflops"]["float32"] > 0
    assert settings["ceilings_gflops"]["float32"] == max(settings["ceilings_gflops_start"]["float32"],
                                                         settings["ceilings_gflops_end"]["float32"])
    table = out.with_suffix(".md").read_text()
    assert table.count("| ours |") == 4 + len(swept)  # load levels, goodput rates, the multi-turn row
    assert "measured matmul ceilings" in table
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


LLAMACPP_BUILD = Path(".llamacpp")


@pytest.mark.skipif(
    not ((LLAMACPP_BUILD / "bin/llama-server").exists() and (LLAMACPP_BUILD / "venv/bin/python").exists()),
    reason="no llama.cpp build: `make llamacpp` (bash benchmarks/serving/llamacpp_venv.sh) builds llama-server "
           "and the GGUF conversion venv into .llamacpp/",
)
def test_llamacpp_contenders_smoke(tmp_path):
    """llama.cpp's server on the tiny model converted to GGUF (f16 and q8_0), through the same
    load generator: every request answered, the report has both contenders' rows."""
    out = tmp_path / "serving_tiny_llamacpp"
    cmd = [
        sys.executable, "-m", "benchmarks.serving.run", "--config", "tiny", "--contenders", "llamacpp",
        "llamacpp-q8", "--dtype", "float16", "--concurrency", "1", "3", "--num-requests", "6",
        "--images-per-request", "1", "2", "--image-size", "64", "48", "--input-words", "16",
        "--output-tokens", "8", "--port", "8392", "--out", str(out), "--multiturn", "1",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    runs = report["runs"]
    assert [(r["contender"], r["level"]) for r in runs] == [
        ("llamacpp", 1), ("llamacpp", 3), ("llamacpp-q8", 1), ("llamacpp-q8", 3)]
    for run in runs:
        assert run["completed"] == 6 and run["errors"] == 0, run["error_samples"]
        assert run["output_tokens_per_s"] > 0
    for name in ("llamacpp", "llamacpp-q8"):
        turns = report["multiturn"][name]
        assert turns["completed_turns"] == 4 and turns["errors"] == 0, turns["error_samples"]


def _run(name: str, rps: float, ttft_p99: float, level=16, mode="concurrency") -> dict:
    return {"contender": name, "mode": mode, "level": level, "requests_per_s": rps,
            "ttft_s": {"p99": ttft_p99}}


def test_ratios_are_judged_against_the_stronger_vllm():
    from benchmarks.serving.report import goodput, ratios

    runs = [_run("ours", 3.0, 1.0), _run("vllm", 2.0, 4.0), _run("vllm-tuned", 2.5, 2.0), _run("hf", 0.5, 9.0),
            _run("ours", 9.0, 1.0, level=64)]
    found = ratios(runs)
    assert found["req/s ours / stronger vllm"] == 3.0 / 2.5 and found["stronger vllm is vllm-tuned"] == 1.0
    assert found["p99 TTFT ours / stronger vllm"] == 0.5 and found["req/s ours / vllm"] == 1.5
    assert found["req/s ours / hf"] == 6.0 and "p99 TTFT ours / hf" not in found
    swept = [{**_run("ours", 1, 1, level=r, mode="goodput"), "meets_slo": ok} for r, ok in ((1, True), (2, True), (4, False))]
    assert goodput(swept + [{**_run("vllm", 1, 1, level=1, mode="goodput"), "meets_slo": False}]) == {"ours": 2, "vllm": 0.0}


def test_flops_count_every_weight_of_the_model(tmp_path):
    """Linear work per token is 2 x the weights it multiplies, counted from a real model's
    parameters (the formula reads only config.json)."""
    from benchmarks.serving.flops import llm_flops, vision_flops
    from llava_model.tiny import TinyLlavaSpec, build_tiny_llava

    spec = TinyLlavaSpec(vision_feature_layer=-1)
    model = build_tiny_llava(tmp_path, spec)
    config = json.loads((tmp_path / "config.json").read_text())
    layers = model.model.language_model.layers
    matrices = sum(p.numel() for n, p in layers.named_parameters() if n.endswith("weight") and p.ndim == 2)
    vocab = model.lm_head.weight.numel()
    attention = lambda tokens: config["text_config"]["num_hidden_layers"] * 2 * tokens * (tokens + 1) * spec.hidden_size
    assert llm_flops(config, 10, 0) == 10 * 2 * matrices + attention(10)
    assert llm_flops(config, 10, 5) == 15 * 2 * matrices + attention(15) + 5 * 2 * vocab
    tower = model.model.vision_tower
    tokens = (spec.image_size // spec.patch_size) ** 2 + 1
    tower_matrices = sum(p.numel() for n, p in tower.encoder.named_parameters() if n.endswith("weight") and p.ndim == 2)
    projector = sum(p.numel() for n, p in model.model.multi_modal_projector.named_parameters() if p.ndim == 2)
    patch = tower.embeddings.patch_embedding.weight.numel()
    scores = spec.vision_layers * 4 * tokens * tokens * spec.vision_hidden
    assert vision_flops(config) == 2 * tokens * tower_matrices + scores + 2 * (tokens - 1) * (projector + patch)


def test_profile_smoke():
    """The in-process profile of ours runs and accounts for every part."""
    cmd = [sys.executable, "-m", "benchmarks.serving.profile", "--config", "tiny", "--concurrency", "2",
           "--num-requests", "4", "--output-tokens", "4", "--eager", "--dtype", "float32"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "%" in line]
    parts = {row.split(" | ")[0].lstrip("| ") for row in rows}
    assert {"vision tower", "projector", "LLM, decode-only steps", "LLM, steps with prefill", "logits",
            "preprocessing (our processor)"} <= parts
    calls = {row.split(" | ")[0].lstrip("| "): row.split(" | ")[3].rstrip(" |") for row in rows}
    assert calls["preprocessing (our processor)"] == "4"  # one per distinct image, none from the warm-up's


def test_vllm_client_cross_check_is_a_row_per_contender():
    from benchmarks.serving.report import markdown

    ok = {"completed": 64, "request_throughput": 2.5, "output_throughput": 160.0, "mean_ttft_ms": 900.0,
          "p99_ttft_ms": 2100.0, "mean_tpot_ms": 70.0}
    text = markdown([], {"ours": ok, "vllm-tuned": {"error": "boom"}}, {"config": "tiny"})
    assert "| ours | 64 | 2.50 | 160.0 | 900 ms | 2100 ms | 70 ms |" in text
    assert "| vllm-tuned | failed: 'boom'" in text


def test_a_contender_is_never_measured_on_a_port_another_server_holds(tmp_path):
    """A server left on the port (from an earlier, killed run) answers /health: the old
    harness took that for the contender being ready and measured the stray server in its
    name while the contender failed to bind. Now the start is refused."""
    import http.server
    import threading

    from benchmarks.serving.run import Contender, start

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    stray = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=stray.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{stray.server_address[1]}"
    sleeper = Contender("sleeper", [sys.executable, "-c", "import time; time.sleep(20)"], dict(os.environ))
    try:
        with pytest.raises(RuntimeError, match="already in use"):
            proc = start(sleeper, base, tmp_path / "sleeper.log", timeout=10)
            proc.kill()
    finally:
        stray.shutdown()
        stray.server_close()
