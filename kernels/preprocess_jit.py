"""The fused CPU normalisation as one compiled loop (numba), for ``kernels.preprocess``.

``out[b, c, y, x] = float32(src[b, y, x, c]) * scale[c] + shift[c]``: the same two float32
roundings, in the same order, as the torch passes it replaces (a strided uint8-to-float
copy, then a multiply, then an add), so every value is bit-equal to theirs. One pass over
the batch instead of three matters once a batch outgrows the caches (a LLaVA-NeXT image is
five 336-px tiles, 6.8 MB of float32).
"""

import numba as nb
import numpy as np

from kernels.llvmlite_guard import guard

guard()  # numba loaded llvmlite: keep vLLM engines started in this process working


@nb.njit(
    "void(uint8[:, :, :, ::1], float32[::1], float32[::1], float32[:, :, :, ::1])",
    cache=True, nogil=True, boundscheck=False,
)
def normalize_hwc(src, scale, shift, out):  # pragma: no cover (compiled)
    """``src`` ``(B, H, W, 3)`` uint8 -> ``out`` ``(B, 3, H, W)`` float32."""
    batch, height, width, _ = src.shape
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                for c in range(3):
                    out[b, c, y, x] = np.float32(src[b, y, x, c]) * scale[c] + shift[c]
