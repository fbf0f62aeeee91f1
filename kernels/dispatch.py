"""Which implementation a dispatch function picks."""

import os

_CHOICES = ("auto", "reference")


def forced_backend() -> str:
    """The backend named by ``LLAVA_KERNELS`` (``auto`` when unset)."""
    choice = os.environ.get("LLAVA_KERNELS", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"LLAVA_KERNELS={choice!r} is not one of {', '.join(_CHOICES)}")
    return choice
