"""Kernels behind one dispatch function per operation.

Each operation (``projector``, ``preprocess``) has a plain PyTorch reference; faster
paths (Triton on CUDA, a fused CPU path) sit behind the same call. ``LLAVA_KERNELS``
forces a path for all operations (``reference``, ``fused``, ``triton``) or per operation
(``projector=triton,preprocess=fused``); it is checked once at start-up
(``kernels.dispatch.resolve_backends``).

``kernels.resample`` (PIL-exact resizing, CPU) is not dispatched: ``resize_exact`` is
byte-exact wherever it runs (compiled loops, ``kernels/resample_jit.py``; PIL itself
without numba), with ``resize_reference`` as its plain transcription for tests.
The compiled modules (``*_jit.py``) are loaded through ``kernels.jit.compiled``.
"""

from kernels.preprocess import normalize_images
from kernels.projector import prepare_projector
from kernels.resample import resize_exact

__all__ = ["normalize_images", "prepare_projector", "resize_exact"]
