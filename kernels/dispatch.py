"""Which implementation a dispatch function picks.

``auto``: Triton for CUDA tensors, the fused CPU path for CPU tensors when the CPU
supports the dtype, the PyTorch reference otherwise. ``LLAVA_KERNELS`` forces one
of ``reference``, ``fused`` (CPU) or ``triton`` (CUDA, or CPU under
``TRITON_INTERPRET=1``); a forced backend that cannot run raises.
"""

import importlib.util
import os

import torch

BACKENDS = ("auto", "reference", "fused", "triton")


def forced_backend() -> str:
    """The backend named by ``LLAVA_KERNELS`` (``auto`` when unset)."""
    choice = os.environ.get("LLAVA_KERNELS", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"LLAVA_KERNELS={choice!r} is not one of {', '.join(BACKENDS)}")
    return choice


def triton_usable(device: torch.device) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def choose_backend(
    device: torch.device,
    fused_ok: bool,
    fused_preferred: bool | None = None,
    triton_preferred: bool = True,
) -> str:
    """Pick a backend for tensors on ``device``.

    ``fused_ok``: the CPU path can run these tensors; ``fused_preferred`` (default:
    ``fused_ok``): ``auto`` should pick it; ``triton_preferred``: ``auto`` should pick
    Triton on CUDA (an operation sets it False where its Triton kernel measured slower).
    """
    choice = forced_backend()
    if choice == "auto":
        if device.type == "cuda" and triton_preferred and triton_usable(device):
            return "triton"
        if device.type == "cpu" and (fused_ok if fused_preferred is None else fused_preferred):
            return "fused"
        return "reference"
    if choice == "triton" and not triton_usable(device):
        raise RuntimeError(f"LLAVA_KERNELS=triton needs a CUDA device or TRITON_INTERPRET=1, got {device}")
    if choice == "fused" and not (device.type == "cpu" and fused_ok):
        raise RuntimeError(f"LLAVA_KERNELS=fused needs CPU tensors of a dtype this CPU supports, got {device}")
    return choice
