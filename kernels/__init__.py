"""Kernels behind one dispatch function per operation.

Each operation has a plain PyTorch reference; faster paths (Triton on CUDA, a fused
CPU path) plug in behind the same call. ``LLAVA_KERNELS`` forces a path for testing:
``reference`` always picks the reference.
"""

from kernels.preprocess import normalize_images
from kernels.projector import run_projector

__all__ = ["normalize_images", "run_projector"]
