"""Kernels behind one dispatch function per operation.

Each operation has a plain PyTorch reference; faster paths (Triton on CUDA, a fused
CPU path) sit behind the same call. ``LLAVA_KERNELS`` forces a path for testing
(``reference``, ``fused`` or ``triton``; see ``kernels.dispatch``).
"""

from kernels.preprocess import normalize_images
from kernels.projector import prepare_projector

__all__ = ["normalize_images", "prepare_projector"]
