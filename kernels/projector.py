"""The LLaVA projector: vision features -> language-model embeddings.

``prepare_projector`` is the one entry point the model calls, once after its
weights are loaded: it takes the backend resolved at model build
(``kernels.dispatch.resolve_backends``), keeps it if it runs on the weights' device
and dtype (else ``auto``'s pick there), and prepares the weights for it (oneDNN's
blocked layout on CPU). The returned callable maps ``(tokens, vision_hidden)`` to
``(tokens, text_hidden)``.

Shapes: ``w1`` is ``(text_hidden, vision_hidden)``; ``w2`` is
``(text_hidden, text_hidden)``, or ``None`` for a single linear layer.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from kernels.dispatch import choose_backend

# Activation names as they appear in configs -> the GELU form they mean.
GELU_FORMS = {
    "gelu": "none",  # exact (erf) GELU
    "gelu_pytorch_tanh": "tanh",
    "gelu_new": "tanh",
    "gelu_fast": "tanh",
}

ProjectorFn = Callable[[torch.Tensor], torch.Tensor]


def gelu_form(act: str) -> str:
    try:
        return GELU_FORMS[act]
    except KeyError:
        raise ValueError(
            f"projector activation {act!r} is not supported; use one of {sorted(GELU_FORMS)}"
        ) from None


def projector_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor | None,
    b2: torch.Tensor | None,
    act: str = "gelu",
) -> torch.Tensor:
    """Plain PyTorch: linear_1, then (for the MLP) GELU and linear_2."""
    h = F.linear(x, w1, b1)
    if w2 is None:
        return h
    h = F.gelu(h, approximate=gelu_form(act))
    return F.linear(h, w2, b2)


def prepare_projector(
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor | None,
    b2: torch.Tensor | None,
    act: str = "gelu",
    backend: str | None = None,
) -> ProjectorFn:
    """Choose the backend once and return ``x -> projector(x)``.

    ``backend``: the model's resolved choice; ``None`` reads ``LLAVA_KERNELS`` now.
    (On CUDA, ``auto`` keeps cuBLAS + a separate GELU; see ``kernels.dispatch``.)
    """
    gelu = gelu_form(act)
    from kernels.cpu_projector import PackedCpuProjector

    backend = choose_backend("projector", w1.device, w1.dtype, backend)
    if backend == "fused":
        return PackedCpuProjector.pack(w1, b1, w2, b2, gelu)
    if backend == "triton":
        from kernels.triton_projector import projector_triton

        return partial(projector_triton, w1=w1, b1=b1, w2=w2, b2=b2, gelu=gelu)
    return partial(projector_reference, w1=w1, b1=b1, w2=w2, b2=b2, act=act)
