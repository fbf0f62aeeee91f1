"""The LLaVA projector: vision features -> language-model embeddings.

``run_projector`` is the one entry point the model calls. Shapes: ``x`` is
``(tokens, vision_hidden)``; ``w1`` is ``(text_hidden, vision_hidden)``; ``w2`` is
``(text_hidden, text_hidden)`` or ``None`` for a single linear layer.
"""

import torch
import torch.nn.functional as F

from kernels.dispatch import forced_backend

# Activation names as they appear in configs -> the GELU form they mean.
GELU_FORMS = {
    "gelu": "none",  # exact (erf) GELU
    "gelu_pytorch_tanh": "tanh",
    "gelu_new": "tanh",
    "gelu_fast": "tanh",
}


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


def run_projector(
    x: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor | None,
    w2: torch.Tensor | None,
    b2: torch.Tensor | None,
    act: str = "gelu",
) -> torch.Tensor:
    """Dispatch: the reference is the only path until fused kernels land."""
    forced_backend()  # validates LLAVA_KERNELS even while only one path exists
    return projector_reference(x, w1, b1, w2, b2, act)
