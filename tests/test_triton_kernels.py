"""Triton kernels against the PyTorch references.

Runs on a CUDA GPU, or on CPU when ``TRITON_INTERPRET=1`` was set before Python
started (``test_kernels.py`` starts such a run); skipped otherwise.
"""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1", allow_module_level=True)
pytest.importorskip("triton")

from kernels.preprocess import normalize_images, normalize_reference  # noqa: E402
from kernels.projector import gelu_form  # noqa: E402
from kernels.triton_projector import linear_act, projector_triton  # noqa: E402
from tests.test_kernels import (  # noqa: E402
    LARGE,
    MEAN,
    STD,
    TINY,
    TOKENS,
    TOL,
    make_input,
    make_weights,
    random_batch,
    regions_for,
    rel_err,
)

DEVICE = "cuda" if HAS_CUDA else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("second", ["cublas", "triton"])
def test_triton_projector_tiny(dtype, tokens, act, bias, second):
    if not HAS_CUDA and tokens > 83 and (dtype != torch.float32 or act != "gelu" or not bias or second != "triton"):
        pytest.skip("interpreter: large token counts only for one combination, to keep CI fast")
    weights = make_weights(*TINY, dtype, bias=bias, device=DEVICE)
    x = make_input(tokens, TINY[0], dtype, contiguous=tokens % 2 == 1, device=DEVICE)
    out = projector_triton(
        x, w1=weights[0], b1=weights[1], w2=weights[2], b2=weights[3], gelu=gelu_form(act), second=second
    )
    assert out.dtype == dtype
    assert rel_err(out, x, weights, act) < TOL[dtype]


def test_triton_single_linear_and_empty():
    weights = make_weights(*TINY, torch.float32, mlp=False, device=DEVICE)
    x = make_input(7, TINY[0], torch.float32, device=DEVICE)
    out = projector_triton(x, w1=weights[0], b1=weights[1], w2=None, b2=None, gelu="none")
    assert rel_err(out, x, weights, "gelu") < TOL[torch.float32]
    empty = linear_act(x[:0], weights[0], weights[1], "none")
    assert empty.shape == (0, TINY[1])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("second", ["cublas", "triton"])
def test_triton_projector_llava_7b_shape(dtype, tokens, second):
    weights = make_weights(*LARGE, dtype, device="cuda")
    x = make_input(tokens, LARGE[0], dtype, device="cuda")
    out = projector_triton(
        x, w1=weights[0], b1=weights[1], w2=weights[2], b2=weights[3], gelu="none", second=second
    )
    assert rel_err(out, x, weights, "gelu") < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_regions", [False, True])
def test_triton_normalize(monkeypatch, dtype, with_regions):
    batch = random_batch(3, 19, 23)
    regions = regions_for(batch) if with_regions else None
    ref = normalize_reference(batch, MEAN, STD, dtype=torch.float32, regions=regions)
    if not HAS_CUDA:
        monkeypatch.setenv("LLAVA_KERNELS", "triton")
    out = normalize_images(batch.to(DEVICE), MEAN, STD, dtype=dtype, regions=regions)
    atol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    assert out.dtype == dtype and out.shape == (3, 3, 19, 23)
    torch.testing.assert_close(out.float().cpu(), ref, atol=atol, rtol=0)
