"""Kernels against their PyTorch references: dtype x shape sweeps, odd strides, bias on/off.

The Triton kernels' tests live in ``test_triton_kernels.py``: on a GPU they run
directly; on CPU this module runs them in a subprocess under ``TRITON_INTERPRET=1``.
"""

import pytest
import torch

from kernels.cpu_projector import PackedCpuProjector, cpu_fused_available
from kernels.dispatch import choose_backend
from kernels.preprocess import normalize_fused_cpu, normalize_reference
from kernels.projector import gelu_form, projector_reference

# Relative error ||out - ref|| / ||ref|| against an fp64 reference, per input dtype.
TOL = {torch.float32: 2e-5, torch.bfloat16: 1.5e-2, torch.float16: 2e-3}
TOKENS = [1, 7, 83, 576, 2 * 576 + 13]
TINY, SMALL, LARGE = (64, 128), (256, 512), (1024, 4096)
HAS_CUDA = torch.cuda.is_available()


def make_weights(d_in, d_out, dtype, bias=True, mlp=True, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(device, dtype)
    b1 = (torch.randn(d_out, generator=g) * 0.1).to(device, dtype) if bias else None
    w2 = (torch.randn(d_out, d_out, generator=g) / d_out**0.5).to(device, dtype) if mlp else None
    b2 = (torch.randn(d_out, generator=g) * 0.1).to(device, dtype) if bias and mlp else None
    return w1, b1, w2, b2


def make_input(tokens, d_in, dtype, contiguous=True, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    if contiguous:
        return torch.randn(tokens, d_in, generator=g).to(device, dtype)
    return torch.randn(tokens, 2 * d_in, generator=g).to(device, dtype)[:, ::2]  # stride 2 along K


def rel_err(out, x, weights, act):
    up = [None if t is None else t.double().cpu() for t in weights]
    ref = projector_reference(x.double().cpu(), *up, act=act)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    return ((out.double().cpu() - ref).norm() / ref.norm()).item()


# ---- CPU fused projector ---------------------------------------------------------------

CPU_DTYPES = [d for d in (torch.float32, torch.bfloat16) if cpu_fused_available(d)]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("sizes", [TINY, SMALL], ids=["tiny", "small"])
@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_cpu_fused_projector(dtype, tokens, sizes, act, bias):
    weights = make_weights(*sizes, dtype, bias=bias)
    packed = PackedCpuProjector.pack(*weights, gelu_form(act))
    x = make_input(tokens, sizes[0], dtype, contiguous=tokens % 2 == 0)
    assert rel_err(packed(x), x, weights, act) < TOL[dtype]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_cpu_fused_single_linear(dtype):
    weights = make_weights(*TINY, dtype, mlp=False)
    x = make_input(83, TINY[0], dtype)
    assert rel_err(PackedCpuProjector.pack(*weights, "none")(x), x, weights, "gelu") < TOL[dtype]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("tokens", [576, 2 * 576 + 13])
def test_cpu_fused_projector_llava_7b_shape(dtype, tokens):
    weights = make_weights(*LARGE, dtype)
    x = make_input(tokens, LARGE[0], dtype)
    assert rel_err(PackedCpuProjector.pack(*weights, "none")(x), x, weights, "gelu") < TOL[dtype]


# ---- Triton (tests/test_triton_kernels.py, interpreted in a subprocess here) -------------


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU the Triton tests run directly")
def test_triton_kernels_under_interpreter():
    """Triton must be imported with TRITON_INTERPRET=1 set, so its tests run apart."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_triton_kernels.py"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


# ---- dispatch ------------------------------------------------------------------------------


def test_dispatch_choices(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert choose_backend(cpu, fused_ok=True) == "fused"
    assert choose_backend(cpu, fused_ok=False) == "reference"
    monkeypatch.setenv("LLAVA_KERNELS", "reference")
    assert choose_backend(cpu, fused_ok=True) == "reference"
    monkeypatch.setenv("LLAVA_KERNELS", "triton")
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            choose_backend(cpu, fused_ok=True)
    monkeypatch.setenv("LLAVA_KERNELS", "fused")
    with pytest.raises(RuntimeError, match="fused"):
        choose_backend(cpu, fused_ok=False)
    monkeypatch.setenv("LLAVA_KERNELS", "fastest")
    with pytest.raises(ValueError, match="LLAVA_KERNELS"):
        choose_backend(cpu, fused_ok=True)


# ---- preprocessing --------------------------------------------------------------------------

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def random_batch(b=3, h=37, w=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)


def regions_for(batch):
    b, h, w, _ = batch.shape
    return torch.tensor([[0, 0, h, w], [3, 0, h - 6, w], [0, 5, h, w - 11]][:b], dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_regions", [False, True])
def test_fused_cpu_normalize(dtype, with_regions):
    batch = random_batch()
    regions = regions_for(batch) if with_regions else None
    ref = normalize_reference(batch, MEAN, STD, dtype=torch.float32, regions=regions)
    out = normalize_fused_cpu(batch, MEAN, STD, dtype=dtype, regions=regions)
    atol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=0)


def test_regions_fill_with_mean_colour():
    batch = random_batch(2)
    regions = regions_for(batch)
    out = normalize_reference(batch, MEAN, STD, regions=regions)
    fill = [(int(m * 255) / 255 - m) / s for m, s in zip(MEAN, STD)]
    torch.testing.assert_close(out[1, :, 0, 0], torch.tensor(fill), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[1, :, 5, 5], normalize_reference(batch, MEAN, STD)[1, :, 5, 5])
