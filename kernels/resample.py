"""Pillow-exact image resampling (BICUBIC, BILINEAR) of 8-bit images, in PyTorch.

Pillow 13 (``libImaging/Resample.c``; every rule below is checked against the installed
Pillow by ``tests/test_resample.py``) resizes in two separable passes with fixed-point
weights:

1. Per output pixel ``i`` of one axis (input size ``n``, output size ``m``):
   ``scale = n / m``, ``filterscale = max(scale, 1)``, ``support = filter_support *
   filterscale``, ``center = (i + 0.5) * scale``; the taps are input pixels
   ``xmin = max(0, int(center - support + 0.5))`` up to (excluding)
   ``xmax = min(n, int(center + support + 0.5))``; tap ``x`` weighs
   ``filter((x + xmin - center + 0.5) * (1 / filterscale))`` (double; bicubic with
   ``a = -0.5``, support 2; bilinear, support 1), and the weights are divided by their
   sum (summed in tap order).
2. Each weight becomes a fixed-point integer with ``PRECISION_BITS = 32 - 8 - 2 = 22``
   fraction bits, rounded half away from zero (``int(w * 2**22 +- 0.5)``, truncating).
3. An output byte is ``clip(floor((2**21 + sum(pixel * weight)) / 2**22), 0, 255)``:
   int32 accumulation started at half a unit, an arithmetic shift, a clip to a byte.
4. A pass whose size does not change is skipped (no change at all is a copy). With
   both, the horizontal pass runs first, unless the height shrinks by more than twice
   as many pixels as the width does (``vertical_first``; new in Pillow 13): the first
   pass's bytes, clipped, feed the second.

``Image.resize(size, resample)`` passes ``reducing_gap=None`` and the whole image as
``box`` by default, so neither the ``reduce()`` pre-step nor a fractional box is
involved; images without alpha are resampled as they are (no premultiplication).

Two implementations:

- ``resize_reference``: a plain transcription (scalar Python for the weights, one
  int64 multiply-add per tap for the passes), for tests.
- ``resize_exact``: the fast path, Pillow's integer arithmetic as compiled loops
  (``kernels.resample_jit``, numba) that run along whole rows of pixels (vectorised),
  the width pass on the transposed image. Only the output rows and columns inside
  ``crop`` are computed (exact: each output depends only on its own taps), and only
  the inputs they weigh are read; a ``canvas`` (LLaVA's pad to square) is filled in
  as the image is read, never pasted. Without numba, PIL itself does the resize.
  ``resize_exact_many``: one image to several sizes (LLaVA-NeXT's grid and base
  tile), reading it once for all of them.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from kernels.jit import compiled

PRECISION_BITS = 32 - 8 - 2
_ONE = 1 << PRECISION_BITS
_HALF = 1 << (PRECISION_BITS - 1)
BICUBIC_A = -0.5

BICUBIC = int(Image.Resampling.BICUBIC)
BILINEAR = int(Image.Resampling.BILINEAR)
SUPPORTED = (BICUBIC, BILINEAR)
_SUPPORT = {BICUBIC: 2.0, BILINEAR: 1.0}


# ---- filters: scalar (reference) and vectorised, same operation order as Pillow's C -------


def _bicubic_scalar(x: float) -> float:
    a = BICUBIC_A
    if x < 0.0:
        x = -x
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _bilinear_scalar(x: float) -> float:
    if x < 0.0:
        x = -x
    if x < 1.0:
        return 1.0 - x
    return 0.0


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = BICUBIC_A
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


_SCALAR = {BICUBIC: _bicubic_scalar, BILINEAR: _bilinear_scalar}
_VECTOR = {BICUBIC: _bicubic, BILINEAR: _bilinear}


def _check_filter(resample: int) -> int:
    resample = int(resample)
    if resample not in SUPPORTED:
        raise ValueError(f"exact resampling supports BICUBIC and BILINEAR, not filter {resample}")
    return resample


def vertical_first(in_w: int, in_h: int, width: int, height: int) -> bool:
    """Whether Pillow runs the vertical pass first: when the height shrinks, and by more
    than twice as many pixels as the width does (Pillow 13; ``tests/test_resample.py``
    pins the boundary against the installed Pillow)."""
    return height < in_h and (in_h - height) > 2 * (in_w - width)


# ---- weights ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coefficients:
    """Fixed-point weights of one axis: output ``i`` reads ``start[i] : start[i] + count[i]``."""

    start: np.ndarray  # (out,) int64
    count: np.ndarray  # (out,) int64
    weights: np.ndarray  # (out, ksize) int64, zero past count[i]


def coefficients_reference(in_size: int, out_size: int, resample: int) -> tuple[list[int], list[list[int]]]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``, one output at a time."""
    resample = _check_filter(resample)
    fn, support = _SCALAR[resample], _SUPPORT[resample]
    scale = filterscale = float(in_size) / out_size
    if filterscale < 1.0:
        filterscale = 1.0
    support = support * filterscale
    inv_filterscale = 1.0 / filterscale
    starts, weights = [], []
    for xx in range(out_size):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        taps = [fn((x + xmin - center + 0.5) * inv_filterscale) for x in range(xmax)]
        total = 0.0
        for w in taps:
            total += w
        if total != 0.0:
            taps = [w / total for w in taps]
        fixed = [int(-0.5 + w * _ONE) if w < 0 else int(0.5 + w * _ONE) for w in taps]
        starts.append(xmin)
        weights.append(fixed)
    return starts, weights


@functools.lru_cache(maxsize=512)
def coefficients(in_size: int, out_size: int, resample: int) -> Coefficients:
    """``coefficients_reference``, vectorised over outputs (loops over taps only). Cached."""
    resample = _check_filter(resample)
    if in_size <= 0 or out_size <= 0:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = filterscale = float(in_size) / out_size
    filterscale = max(filterscale, 1.0)
    support = _SUPPORT[resample] * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # C's (int) truncates toward zero; a negative start is clamped to 0 either way.
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    count = xmax - xmin
    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < count[:, None]
    arg = ((taps[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * (1.0 / filterscale)
    w = np.where(valid, _VECTOR[resample](arg), 0.0)
    total = np.zeros(out_size, dtype=np.float64)
    for t in range(ksize):  # Pillow sums in tap order; numpy's sum is pairwise
        total = total + w[:, t]
    w = np.divide(w, total[:, None], out=w.copy(), where=total[:, None] != 0.0)
    fixed = np.where(w < 0, np.trunc(-0.5 + w * _ONE), np.trunc(0.5 + w * _ONE)).astype(np.int64)
    fixed[~valid] = 0
    for array in (xmin, count, fixed):
        array.flags.writeable = False
    return Coefficients(xmin, count, fixed)


# ---- the plain reference ----------------------------------------------------------------------


def _pass_reference(pixels: np.ndarray, axis: int, out_size: int, resample: int) -> np.ndarray:
    starts, weights = coefficients_reference(pixels.shape[axis], out_size, resample)
    moved = np.moveaxis(pixels.astype(np.int64), axis, 0)
    out = np.empty((out_size, *moved.shape[1:]), dtype=np.uint8)
    for i, (start, taps) in enumerate(zip(starts, weights)):
        acc = np.full(moved.shape[1:], _HALF, dtype=np.int64)
        for t, k in enumerate(taps):
            acc += moved[start + t] * k
        out[i] = np.clip(acc >> PRECISION_BITS, 0, 255)
    return np.moveaxis(out, 0, axis)


def resize_reference(pixels: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
    """``(H, W, C)`` uint8 -> ``(height, width, C)`` uint8, as ``Image.resize`` computes it."""
    out = np.asarray(pixels)
    axes = [(1, width), (0, height)]
    if vertical_first(out.shape[1], out.shape[0], width, height):
        axes.reverse()
    for axis, size in axes:
        if out.shape[axis] != size:
            out = _pass_reference(out, axis, size, resample)
    return out.copy()


# ---- the fast path ----------------------------------------------------------------------------
#
# Pixels travel as uint32 (four bytes: RGBX, as Pillow stores RGB; fewer channels are padded),
# so a transpose moves whole pixels and a pass treats a row of pixels as a row of bytes.


@dataclass(frozen=True)
class _Axis:
    """Outputs ``lo:hi`` of one axis: their taps (int32 weights) and the inputs they read,
    ``first:last``."""

    starts: np.ndarray  # (n,) int64
    counts: np.ndarray  # (n,) int64
    weights: np.ndarray  # (n, K) int32
    first: int
    last: int


@functools.lru_cache(maxsize=1024)
def _axis(in_size: int, out_size: int, resample: int, lo: int, hi: int) -> _Axis:
    c = coefficients(in_size, out_size, resample)
    starts, counts = c.start[lo:hi].copy(), c.count[lo:hi].copy()  # writable: what the loops take
    weights = c.weights[lo:hi].astype(np.int32)
    return _Axis(starts, counts, weights, int(starts.min()), int((starts + counts).max()))


@dataclass(frozen=True)
class _Source:
    """What is resampled: ``pixels`` ``(h, w)`` uint32 with ``channels`` meaningful bytes,
    pasted at ``(left, top)`` on a ``width`` x ``height`` canvas of colour ``fill`` (a
    uint32 pixel); without a fill, the canvas is the pixels themselves."""

    pixels: np.ndarray
    channels: int
    width: int
    height: int
    left: int = 0
    top: int = 0
    fill: np.uint32 | None = None

    def window(self, r0: int, r1: int, c0: int, c1: int, transposed: bool = False) -> np.ndarray:
        """Canvas rows ``r0:r1`` and columns ``c0:c1`` as a fresh uint32 array, or its transpose."""
        h, w = self.pixels.shape
        shape = (c1 - c0, r1 - r0) if transposed else (r1 - r0, c1 - c0)
        ir0, ir1 = max(r0, self.top), min(r1, self.top + h)
        ic0, ic1 = max(c0, self.left), min(c1, self.left + w)
        out = np.empty(shape, dtype=np.uint32)
        if (ir0, ir1, ic0, ic1) != (r0, r1, c0, c1):
            if self.fill is None:
                raise ValueError("rows or columns outside an image without a canvas")
            out.fill(self.fill)
        if ir0 < ir1 and ic0 < ic1:
            if transposed:
                _loops().transpose32(self.pixels, ir0 - self.top, ic0 - self.left,
                                     out, ic0 - c0, ir0 - r0, ir1 - ir0, ic1 - ic0)
            else:
                part = self.pixels[ir0 - self.top : ir1 - self.top, ic0 - self.left : ic1 - self.left]
                out[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0] = part
        return out


def _run_pass(src: np.ndarray, axis: _Axis, base: int) -> np.ndarray:
    """Resample down the rows of ``src`` ``(R, X)`` uint32 (row ``j`` is input ``base + j``)
    -> ``(n, X)`` uint32."""
    rows, cols = src.shape
    out = np.empty((len(axis.starts), cols), dtype=np.uint32)
    _loops().pass_rows(
        src.view(np.uint8).reshape(rows, cols * 4), base, axis.starts, axis.counts, axis.weights,
        out.view(np.uint8).reshape(len(axis.starts), cols * 4), np.empty(cols * 4, dtype=np.int32),
    )
    return out


def _transposed(pixels: np.ndarray) -> np.ndarray:
    """A contiguous ``(R, X)`` uint32 array -> its transpose, contiguous."""
    rows, cols = pixels.shape
    out = np.empty((cols, rows), dtype=np.uint32)
    _loops().transpose32(pixels, 0, 0, out, 0, 0, rows, cols)
    return out


@dataclass(frozen=True)
class _Plan:
    """How one resize (of a ``crop``) runs: its axes (``None``: that size does not
    change), the canvas rows and columns its first pass reads, and whether that first
    pass runs along the width of the source."""

    across: _Axis | None
    down: _Axis | None
    rows: tuple[int, int]
    cols: tuple[int, int]
    width_first: bool


def _plan(src: _Source, width: int, height: int, resample: int, crop) -> _Plan:
    left, top, cw, ch = crop
    do_w, do_h = width != src.width, height != src.height
    across = _axis(src.width, width, resample, left, left + cw) if do_w else None
    down = _axis(src.height, height, resample, top, top + ch) if do_h else None
    cols = (across.first, across.last) if do_w else (left, left + cw)
    rows = (down.first, down.last) if do_h else (top, top + ch)
    width_first = do_w and not (do_h and vertical_first(src.width, src.height, width, height))
    return _Plan(across, down, rows, cols, width_first)


def _resize_jit(src: _Source, plan: _Plan, wide: np.ndarray | None = None) -> np.ndarray:
    """The planned crop of the resized canvas, ``(crop_h, crop_w)`` uint32 pixels. Each
    pass reads only the inputs its outputs (those inside the crop) weigh. ``wide``: the
    first (width) pass, already run (``_resize_jit_many``)."""
    across, down = plan.across, plan.down
    (r0, r1), (c0, c1) = plan.rows, plan.cols
    if not plan.width_first:
        tall = _run_pass(src.window(r0, r1, c0, c1), down, r0)  # (ch, canvas columns c0:c1)
        if across is None:
            return tall
        # the width pass of those rows, as of any image: ``tall`` stands at column c0
        ch = tall.shape[0]
        wide = _width_pass(_Source(tall, src.channels, c1, ch, left=c0), across, 0, ch, c0, c1)
        return _transposed(wide)
    if wide is None:
        wide = _width_pass(src, across, r0, r1, c0, c1)  # (cw, rows)
    if down is None:
        return _transposed(wide)
    return _run_pass(_transposed(wide), down, r0)


def _resize_jit_many(src: _Source, plans: list[_Plan]) -> list[np.ndarray]:
    """Several planned resizes of one source. Those that start along the width over the
    same rows run that pass together: each block of source rows is transposed once."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, plan in enumerate(plans):
        if plan.width_first:
            groups.setdefault(plan.rows, []).append(k)
    wides: dict[int, np.ndarray] = {}
    for (r0, r1), members in groups.items():
        if len(members) < 2:
            continue
        c0 = min(plans[k].cols[0] for k in members)
        c1 = max(plans[k].cols[1] for k in members)
        axes = tuple(plans[k].across for k in members)
        wides.update(zip(members, _width_passes(src, axes, r0, r1, c0, c1)))
    return [_resize_jit(src, plan, wides.get(k)) for k, plan in enumerate(plans)]


# Rows per block of the width pass: a block's transposed window (at most this many bytes)
# is still in cache when its pass reads it (one whole transposed photo is not).
_BLOCK_BYTES = 1 << 20


def _width_pass(src: _Source, across: _Axis, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """The width pass of canvas rows ``r0:r1`` (inputs ``c0:c1``), transposed: ``(n, rows)``."""
    return _width_passes(src, (across,), r0, r1, c0, c1)[0]


def _width_passes(
    src: _Source, axes: tuple[_Axis, ...], r0: int, r1: int, c0: int, c1: int
) -> list[np.ndarray]:
    """The width passes of canvas rows ``r0:r1`` (inputs ``c0:c1``, which hold every
    axis' taps) to several widths, each transposed ``(n, rows)``: each block of rows is
    transposed once and read by every pass. A row of pure fill colour (LLaVA's padding)
    is a constant row, whose outputs Pillow's arithmetic gives in closed form,
    ``(2**21 + v * sum(weights)) >> 22``: only the image's rows go through the loops."""
    a, b = max(r0, src.top), min(r1, src.top + src.pixels.shape[0])
    if src.fill is None:
        a, b = r0, r1
    wides = [np.empty((len(across.starts), r1 - r0), dtype=np.uint32) for across in axes]
    if (a, b) != (r0, r1):
        fill = np.frombuffer(np.uint32(src.fill).tobytes(), dtype=np.uint8).astype(np.int64)  # (4,)
        for across, wide in zip(axes, wides):
            sums = across.weights.sum(axis=1, dtype=np.int64)  # (n,)
            constant = np.clip((_HALF + fill[None, :] * sums[:, None]) >> PRECISION_BITS, 0, 255)
            wide[:] = constant.astype(np.uint8).view(np.uint32)  # (n, 1): every row fill, but the image's
    step = max(16, _BLOCK_BYTES // (4 * (c1 - c0)))
    for start in range(a, b, step):
        end = min(start + step, b)
        window = src.window(start, end, c0, c1, transposed=True)
        for across, wide in zip(axes, wides):
            wide[:, start - r0 : end - r0] = _run_pass(window, across, c0)
    return wides


def _pixels32(image) -> tuple[np.ndarray, int]:
    """``(H, W)`` uint32 pixels (channel ``c`` in byte ``c``) and the channel count, from a
    PIL image or an ``(H, W, C)`` uint8 tensor / array (``C`` <= 4)."""
    if isinstance(image, Image.Image):
        if image.mode == "RGB":  # Pillow's own four-byte layout, one copy
            data = np.frombuffer(image.tobytes("raw", "RGBX"), dtype=np.uint32)
            return data.reshape(image.height, image.width), 3
        array = np.asarray(image)
    else:
        array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    h, w, c = array.shape
    if c == 4:
        return np.ascontiguousarray(array).view(np.uint32).reshape(h, w), c
    padded = np.zeros((h, w, 4), dtype=np.uint8)
    padded[:, :, :c] = array
    return padded.view(np.uint32).reshape(h, w), c


def _as_bytes(pixels: np.ndarray, channels: int) -> torch.Tensor:
    """``(h, w)`` uint32 pixels -> ``(h, w, channels)`` uint8, contiguous."""
    h, w = pixels.shape
    out = np.empty((h, w, channels), dtype=np.uint8)
    rows = np.ascontiguousarray(pixels).view(np.uint8).reshape(h, w * 4)
    if jit_usable():
        _loops().unpack(rows, out.reshape(h, w * channels))
    else:
        out[:] = rows.reshape(h, w, 4)[:, :, :channels]
    return torch.from_numpy(out)


def _resize_pil(src: _Source, width: int, height: int, resample: int, crop) -> torch.Tensor:
    """The same bytes from PIL, band by band (every band is resampled on its own there)."""
    left, top, cw, ch = crop
    full = src.window(0, src.height, 0, src.width).view(np.uint8).reshape(src.height, src.width, 4)
    bands = [
        np.asarray(Image.fromarray(np.ascontiguousarray(full[:, :, b]), mode="L").resize((width, height), resample))
        for b in range(src.channels)
    ]
    return torch.from_numpy(np.stack(bands, axis=-1)[top : top + ch, left : left + cw].copy())


def _loops():
    """``kernels.resample_jit``, or ``None`` (``kernels.jit``)."""
    return compiled("resample_jit")


def jit_usable() -> bool:
    """Whether the compiled loops are here (else PIL resizes, with the same bytes)."""
    return _loops() is not None


def warm_up() -> None:
    """Compile (or load from numba's cache) the loops now rather than on a first request:
    every array layout the paths hand them (whole and partial windows, both pass orders,
    a canvas, a crop)."""
    if not jit_usable():
        return
    image = torch.zeros((6, 9, 3), dtype=torch.uint8)
    resize_exact(image, 4, 5)  # width first
    resize_exact(image, 8, 2)  # height first
    resize_exact(image, 9, 3, crop=(1, 1, 7, 2))  # one pass, cropped
    resize_exact(image, 5, 5, crop=(1, 1, 3, 3), canvas=(9, 9, 0, 1, (1, 2, 3)))


# PIL modes resampled as plain unsigned bytes per band (alpha modes are premultiplied
# first and LAB's a/b bands are signed there; P and 1 are resized as NEAREST).
_MODES = ("RGB", "L", "CMYK", "YCbCr", "HSV")


def _checked_pixels(image: "Image.Image | torch.Tensor") -> tuple[np.ndarray, int]:
    """``_pixels32`` of an image ``resize_exact`` takes; anything else is refused by name."""
    if isinstance(image, Image.Image) and image.mode not in _MODES:
        raise ValueError(f"exact resampling takes unsigned 8-bit modes {_MODES}, not {image.mode!r}")
    if not isinstance(image, Image.Image) and (
        image.dtype != torch.uint8 or image.ndim != 3 or not 1 <= image.shape[2] <= 4
    ):
        raise ValueError(f"expected (H, W, C) uint8 pixels, C <= 4, got {tuple(image.shape)} {image.dtype}")
    return _pixels32(image)


def resize_exact(
    image: "Image.Image | torch.Tensor",
    width: int,
    height: int,
    resample: int = BICUBIC,
    crop: tuple[int, int, int, int] | None = None,
    canvas: tuple[int, int, int, int, tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """A PIL image of mode RGB, L, CMYK, YCbCr or HSV or an ``(H, W, C)`` uint8 tensor ->
    ``(height, width, C)`` uint8, byte-exact with ``Image.resize((width, height), resample)``.

    ``crop`` = ``(left, top, crop_width, crop_height)`` inside the resized image: only
    that part is computed and returned. ``canvas`` = ``(canvas_width, canvas_height, x, y,
    fill)``: resize the image pasted at ``(x, y)`` on a canvas of colour ``fill`` instead
    (``Image.paste`` then ``resize``), without pasting it.
    """
    resample = _check_filter(resample)
    pixels, channels = _checked_pixels(image)
    if canvas is None:
        src = _Source(pixels, channels, pixels.shape[1], pixels.shape[0])
    else:
        canvas_w, canvas_h, x, y, fill = canvas
        if not (0 <= x and 0 <= y and x + pixels.shape[1] <= canvas_w and y + pixels.shape[0] <= canvas_h):
            raise ValueError(f"the image does not fit at ({x}, {y}) on a {canvas_w}x{canvas_h} canvas")
        if len(fill) != channels:
            raise ValueError(f"fill {fill} does not have one value per channel ({channels})")
        fill32 = np.frombuffer(bytes([*fill, *[0] * (4 - channels)]), dtype=np.uint32)[0]
        src = _Source(pixels, channels, canvas_w, canvas_h, x, y, fill32)
    left, top, cw, ch = crop if crop is not None else (0, 0, width, height)
    if not (0 <= left and 0 <= top and cw > 0 and ch > 0 and left + cw <= width and top + ch <= height):
        raise ValueError(f"crop {crop} is not inside the {width}x{height} output")
    if (width, height) == (src.width, src.height):
        return _as_bytes(src.window(top, top + ch, left, left + cw), channels)
    if not jit_usable():
        return _resize_pil(src, width, height, resample, (left, top, cw, ch))
    return _as_bytes(_resize_jit(src, _plan(src, width, height, resample, (left, top, cw, ch))), channels)


def resize_exact_many(
    image: "Image.Image | torch.Tensor",
    sizes: "list[tuple[int, int]]",
    resample: int = BICUBIC,
) -> list[torch.Tensor]:
    """``[resize_exact(image, w, h, resample) for w, h in sizes]``, the same bytes, with the
    image read once: it is unpacked once, and the resizes that start along the width
    share that pass's transposed reads (LLaVA-NeXT resizes each photo twice, to its grid
    and to the base tile, and that reading is most of a large photo's cost)."""
    resample = _check_filter(resample)
    pixels, channels = _checked_pixels(image)
    src = _Source(pixels, channels, pixels.shape[1], pixels.shape[0])
    for width, height in sizes:
        if width <= 0 or height <= 0:
            raise ValueError(f"cannot resize to {width}x{height}")
    whole = [(0, 0, w, h) for w, h in sizes]
    if not jit_usable():
        return [_resize_pil(src, w, h, resample, crop) for (w, h), crop in zip(sizes, whole)]
    out: list[torch.Tensor | None] = [None] * len(sizes)
    todo = []
    for k, (width, height) in enumerate(sizes):
        if (width, height) == (src.width, src.height):
            out[k] = _as_bytes(pixels, channels)
        else:
            todo.append(k)
    plans = [_plan(src, *sizes[k], resample, whole[k]) for k in todo]
    for k, resized in zip(todo, _resize_jit_many(src, plans)):
        out[k] = _as_bytes(resized, channels)
    return out
