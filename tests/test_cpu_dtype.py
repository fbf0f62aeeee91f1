"""``--dtype auto`` on a CPU picks what this machine runs fastest (``server.cpu_dtype``), and
the ceilings behind it (``kernels.ceiling``) are real measurements."""

import math

import pytest

from kernels.ceiling import ceilings, matmul_gflops
from server.cpu_dtype import MARGIN, checkpoint_dtype, choose, vllm_auto


@pytest.mark.parametrize(
    "config, named",
    [
        ({"dtype": "float16"}, "float16"),
        ({"torch_dtype": "bfloat16"}, "bfloat16"),
        ({"text_config": {"torch_dtype": "float16"}}, "float16"),
        ({"dtype": "torch.float32"}, "float32"),
        ({}, "float32"),
    ],
)
def test_checkpoint_dtype_is_read_where_transformers_writes_it(config, named):
    assert checkpoint_dtype(config) == named


def rates(**measured):
    return lambda name: measured[name]


def test_vllms_pick_is_kept_where_it_is_fast():
    dtype, why = choose({"dtype": "float32"}, rates(bfloat16=800.0, float32=300.0))
    assert dtype == "auto" and vllm_auto("float32") == "bfloat16"
    assert "bfloat16 800, float32 300 GFLOP/s; running bfloat16" in why


def test_float32_wins_where_bf16_is_slow():
    """The 2-core machine of the issue: AVX-512 BF16 without AMX, bf16 163 vs fp32 318."""
    dtype, why = choose({"dtype": "bfloat16"}, rates(bfloat16=163.0, float32=318.0))
    assert dtype == "float32"
    assert why.endswith("running float32")


def test_only_a_clear_margin_changes_the_pick():
    assert choose({}, rates(bfloat16=100.0, float32=MARGIN * 100.0 - 1))[0] == "auto"
    assert choose({}, rates(bfloat16=100.0, float32=MARGIN * 100.0 + 1))[0] == "float32"


def test_float16_checkpoints_leave_a_scalar_float16_path():
    """llava-hf's LLaVA-1.5 is float16; vLLM runs that as float16 on a CPU, which CPUs without
    AVX-512 FP16 multiply in a scalar loop."""
    assert choose({"dtype": "float16"}, rates(float16=3.0, bfloat16=230.0, float32=90.0))[0] == "bfloat16"
    assert choose({"dtype": "float16"}, rates(float16=3.0, bfloat16=60.0, float32=90.0))[0] == "float32"
    assert choose({"dtype": "float16"}, rates(float16=500.0, bfloat16=230.0, float32=90.0))[0] == "auto"


def test_measurements_are_real_numbers():
    for name in ("float32", "bfloat16"):
        rate = matmul_gflops(name, size=256, seconds=0.02)
        assert math.isfinite(rate) and rate > 0
    measured = ceilings(size=128)
    assert set(measured) == {"float32", "bfloat16", "float16"} and all(v > 0 for v in measured.values())


def test_the_ceiling_takes_the_faster_of_mm_and_linear(monkeypatch):
    """A CPU may run one of them in a slow path (bf16 ``mm`` at 1 GFLOP/s beside ``linear`` at 16
    on one of ours); a model's layers call ``linear``, so the slow ``mm`` is not the ceiling."""
    import time

    import torch

    real_mm = torch.mm

    def slow_mm(a, b):
        time.sleep(0.05)
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", slow_mm)
    slow_bound = 2 * 256**3 / 0.05 / 1e9  # what a ceiling from the slow mm could be at most
    assert matmul_gflops("float32", size=256, seconds=0.02) > 3 * slow_bound
