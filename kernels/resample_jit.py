"""The compiled loops of the exact resampler (``kernels.resample``), in numba.

Both passes of Pillow's resize become one loop shape, ``pass_rows``: every output row is
a weighted sum of a few consecutive input rows, accumulated in int32 exactly as Pillow's
C does (started at half a unit, shifted by 22 bits, clipped to a byte), and vectorised
along the row. A pass along the width runs on the transposed image, so it has that
shape too; ``transpose32`` moves whole pixels (four bytes, RGBX as Pillow stores RGB).

The signatures are fixed (C-contiguous rows for the passes, any strides for the
transpose), so importing this module compiles each loop once, for every image, or loads
it from numba's cache on disk; ``kernels.resample`` imports it on first use.
"""

import numba as nb
import numpy as np

from kernels.llvmlite_guard import guard

guard()  # numba loaded llvmlite: keep vLLM engines started in this process working

_HALF = np.int32(1 << 21)
_SHIFT = 22


@nb.njit(
    "void(uint8[:, ::1], int64, int64[::1], int64[::1], int32[:, ::1], uint8[:, ::1], int32[::1])",
    cache=True, nogil=True, boundscheck=False,
)
def pass_rows(src, base, starts, counts, weights, out, acc):  # pragma: no cover (compiled)
    """``out[i, m] = clip((2**21 + sum_t weights[i, t] * src[starts[i] - base + t, m]) >> 22)``.

    ``src`` ``(R, M)`` uint8, ``out`` ``(n, M)`` uint8, ``weights`` ``(n, K)`` int32
    (``counts[i]`` taps used), ``acc`` ``(M,)`` int32 scratch.
    """
    n, width = out.shape
    for i in range(n):
        first = starts[i] - base
        for m in range(width):
            acc[m] = _HALF
        for t in range(counts[i]):
            k = weights[i, t]
            row = src[first + t]
            for m in range(width):
                acc[m] += np.int32(row[m]) * k
        dest = out[i]
        for m in range(width):
            v = acc[m] >> _SHIFT
            dest[m] = max(0, min(v, 255))


_PIXELS = nb.types.Array(nb.uint32, 2, "C")
_READ_ONLY = nb.types.Array(nb.uint32, 2, "C", readonly=True)  # an image's buffer, or any


@nb.njit(
    nb.void(_READ_ONLY, nb.int64, nb.int64, _PIXELS, nb.int64, nb.int64, nb.int64, nb.int64),
    cache=True, nogil=True, boundscheck=False,
)
def transpose32(src, src_row, src_col, out, out_row, out_col, rows, cols):  # pragma: no cover
    """``out[out_row + x, out_col + r] = src[src_row + r, src_col + x]`` for ``r < rows``,
    ``x < cols``: a window of ``src`` transposed into a window of ``out``, in cache-sized
    tiles, reading along rows."""
    tile = 8
    for r0 in range(0, rows, tile):
        r1 = min(r0 + tile, rows)
        for x0 in range(0, cols, tile):
            x1 = min(x0 + tile, cols)
            for r in range(r0, r1):
                line = src[src_row + r]
                for x in range(x0, x1):
                    out[out_row + x, out_col + r] = line[src_col + x]


@nb.njit(
    nb.void(nb.types.Array(nb.uint8, 2, "C", readonly=True), nb.types.Array(nb.uint8, 2, "C")),
    cache=True, nogil=True, boundscheck=False,
)
def unpack(src, out):  # pragma: no cover (compiled)
    """Rows of four-byte pixels ``(R, 4 X)`` -> rows of their first ``C`` bytes ``(R, C X)``."""
    rows, width = out.shape
    pixels = src.shape[1] // 4
    channels = width // pixels
    for r in range(rows):
        line, dest = src[r], out[r]
        if channels == 3:  # RGB: spelled out, so the loop vectorises
            for x in range(pixels):
                dest[3 * x] = line[4 * x]
                dest[3 * x + 1] = line[4 * x + 1]
                dest[3 * x + 2] = line[4 * x + 2]
        else:
            for x in range(pixels):
                for c in range(channels):
                    dest[x * channels + c] = line[x * 4 + c]

