"""The serving benchmark suite, end to end on the tiny model against our server.

Checks the report's structure and that every request succeeded, not timings.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def test_serving_benchmark_smoke(tmp_path):
    out = tmp_path / "serving_tiny"
    cmd = [
        sys.executable, "-m", "benchmarks.serving.run", "--config", "tiny", "--contenders", "ours",
        "--concurrency", "1", "3", "--rate", "4", "--num-requests", "6", "--images-per-request", "1", "2",
        "--image-size", "64", "48", "--input-words", "16", "--output-tokens", "8", "--eager",
        "--port", "8391", "--out", str(out), "--multiturn", "2",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    runs = report["runs"]
    assert [(r["mode"], r["level"]) for r in runs] == [("concurrency", 1), ("concurrency", 3), ("rate", 4.0)]
    for run in runs:
        assert run["completed"] == 6 and run["errors"] == 0, run["error_samples"]
        assert run["requests_per_s"] > 0 and run["output_tokens_per_s"] > 0
        for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
            assert set(run[key]) == {"mean", "p50", "p99"}
            assert 0 <= run[key]["p50"] <= run[key]["p99"]
        assert run["config"]["output_tokens"] == 8
    turns = report["multiturn"]["ours"]
    assert turns["completed_turns"] == 2 * 4 and turns["errors"] == 0, turns["error_samples"]
    assert len(turns["ttft_s_by_turn"]) == 4 and all(t > 0 for t in turns["ttft_s_by_turn"])
    assert report["settings"]["ceilings_gflops"]["float32"] > 0
    table = out.with_suffix(".md").read_text()
    assert table.count("| ours |") == 4  # three load levels and the multi-turn row
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
