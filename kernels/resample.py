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
- ``resize_exact``: the fast path, int8 matrix products (``torch._int_mm``, oneDNN on
  CPUs with AVX512-VNNI) with the exact integer arithmetic described below. Each pass
  multiplies overlapping windows of the input (strided views, no gather) by cached,
  banded blocks of the weight matrix, a cost-model-chosen number of outputs per block,
  and combines each block's digit sums while they are in cache. Only the output rows
  and columns inside ``crop`` are computed (exact: each output depends only on its own
  taps), and a ``canvas`` (LLaVA's pad to square) is read on the fly, its rows of pure
  fill colour not resampled at all. Where int8 matmuls are not fast and exact, or
  could overflow int32 (never for sane sizes), PIL itself does the resize.
"""

import functools
import math
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

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
# Pixels enter int8 matmuls as ``p - 128`` and each fixed-point weight as three balanced
# base-256 int8 digits, ``k = d0 + 256 d1 + 65536 d2``, so every product sum is an exact
# int32 (``|sum| <= 128 * 128 * taps``). With ``e = sum(k) - 2**22`` per output, Pillow's
# ``(2**21 + sum(p k)) >> 22`` equals ``((sum((p - 128) k) + 2**21 + 128 e) >> 22) + 128``
# (the ``128 * 2**22`` part shifts out exactly), so results stay centred (``v - 128``) and
# feed the next pass as int8 as they are.

_LIMB = 1 << 8
_INT8_MIN, _INT8_MAX = -128, 127


def _limbs(fixed: np.ndarray) -> np.ndarray:
    """int64 weights -> ``(3, ...)`` int8 digits with ``fixed = d0 + 256 d1 + 65536 d2``."""
    d0 = (fixed + 128) % 256 - 128
    rest = (fixed - d0) // 256
    d1 = (rest + 128) % 256 - 128
    d2 = (rest - d1) // 256
    if np.abs(d2).max(initial=0) > _INT8_MAX:
        raise ValueError("weight out of the three-digit range")
    return np.stack([d0, d1, d2]).astype(np.int8)


@dataclass(frozen=True)
class _Pass:
    """One axis, outputs ``lo:hi``, as ``nblocks`` int8 matmuls over input windows.

    Window ``b`` reads inputs ``origin + b * stride`` up to ``+ length`` and yields the
    sums of outputs ``b * block`` up to ``+ block`` (the last block is padded with
    zero-weight outputs); ``first`` / ``last`` bound the inputs that carry weight. With
    ``group`` > 1 the inputs are pixels of ``group`` interleaved channels and the
    weights are block-diagonal over the channels.

    ``weights``: ``(nblocks, 3 * block * group, length * group)`` int8, rows ordered
    (digit, output, channel); ``bias``: ``(nblocks, block * group, 1)`` int32,
    ``2**21 + 128 e`` per output row.
    """

    weights: torch.Tensor
    bias: torch.Tensor
    block: int
    stride: int
    origin: int
    length: int
    first: int
    last: int
    outputs: int
    group: int
    constant_exact: bool  # a row of one value v maps to v: 255 * |e| < 2**21 for every output

    @property
    def nblocks(self) -> int:
        return self.weights.shape[0]

    @functools.cached_property
    def block_weights(self) -> tuple[torch.Tensor, ...]:
        return self.weights.unbind(0)

    @functools.cached_property
    def block_bias(self) -> tuple[torch.Tensor, ...]:
        return self.bias.unbind(0)

    @property
    def span(self) -> int:
        """Input positions the windows cover, from ``origin``."""
        return (self.nblocks - 1) * self.stride + self.length

    @property
    def lead(self) -> int:
        """Where input ``first`` sits in a buffer that starts at ``origin``."""
        return self.first - self.origin

    @property
    def padded(self) -> int:
        """Outputs computed, the last block's padding included."""
        return self.nblocks * self.block


def _layout(start: np.ndarray, end: np.ndarray, block: int, stride: int) -> tuple[int, int, int]:
    """``(nblocks, origin, length)`` of windows ``origin + b * stride`` covering blocks of
    ``block`` consecutive outputs whose taps run from ``start`` to ``end``."""
    outputs = len(start)
    nblocks = -(-outputs // block)
    b = np.arange(nblocks)
    first = start[b * block]  # starts (and ends) never decrease with the output index
    last = end[np.minimum((b + 1) * block, outputs) - 1]
    origin = int((first - b * stride).min())
    return nblocks, origin, int((last - origin - b * stride).max())


# Rough CPU costs (ns) that steer the block size: per block (a matmul and the digit
# combination), per int8 multiply-add (zeros included), per int32 digit sum. Only speed
# depends on them.
_BLOCK_NS, _MAC_NS, _SUM_NS = 40000.0, 0.004, 0.25
# Digit sums combined together (bytes): about half of a core's L2 cache.
_CACHE_BYTES = 1 << 20


def _choose_layout(
    start: np.ndarray, end: np.ndarray, scale: float, other: int, group: int, block: int | None
) -> tuple[int, int, int, int]:
    """``(block, stride, origin, length)``: ``block`` if given, else the cheapest block
    size by the cost model (``other``: the extent of the axis kept, per channel group),
    each with the stride that fits it best (windows move by ``block * scale`` on average)."""
    outputs = len(start)
    sizes = [min(block, outputs)] if block else range(1, min(outputs, 160) + 1)
    best = None
    for size in sizes:
        ideal = size * scale
        for stride in sorted({max(int(math.floor(ideal)), 0), int(math.ceil(ideal))}):
            nblocks, origin, length = _layout(start, end, size, stride)
            if nblocks == 1:
                stride = 0
            rows = 3 * size * group * other
            cost = nblocks * (_BLOCK_NS + rows * (max(length, 2) * group * _MAC_NS + _SUM_NS))
            if best is None or cost < best[0]:
                best = (cost, size, stride, origin, length)
    return best[1:]


@functools.lru_cache(maxsize=1024)
def _plan(
    in_size: int,
    out_size: int,
    resample: int,
    lo: int,
    hi: int,
    other: int,
    group: int = 1,
    block: int | None = None,
) -> _Pass:
    """The cached layout and int8 weights of outputs ``lo:hi`` of one axis (``other``,
    ``group``: see ``_choose_layout``)."""
    c = coefficients(in_size, out_size, resample)
    start, count, fixed = c.start[lo:hi], c.count[lo:hi], c.weights[lo:hi]
    outputs = hi - lo
    scale = in_size / out_size
    block, stride, origin, length = _choose_layout(start, start + count, scale, other, group, block)
    # oneDNN misreads a (1, N) operand whose strides are both 1: keep two taps or more
    length = max(length, 2)
    nblocks = -(-outputs // block)
    dense = np.zeros((nblocks, block, length), dtype=np.int64)  # [block, output, tap position]
    j = np.arange(outputs)
    b, row = j // block, j % block
    taps = np.arange(fixed.shape[1])
    cols = start[:, None] + taps[None, :] - origin - (b * stride)[:, None]
    valid = taps[None, :] < count[:, None]
    shape = cols.shape
    blocks, rows = np.broadcast_to(b[:, None], shape)[valid], np.broadcast_to(row[:, None], shape)[valid]
    dense[blocks, rows, cols[valid]] = fixed[valid]
    digits = _limbs(dense).transpose(1, 0, 2, 3)  # (nblocks, 3, block, length)
    weights = np.zeros((nblocks, 3, block, group, length, group), dtype=np.int8)
    for ch in range(group):
        weights[:, :, :, ch, :, ch] = digits
    bias = np.full(nblocks * block, _HALF, dtype=np.int64)
    bias[:outputs] += 128 * (fixed.sum(axis=1) - _ONE)
    return _Pass(
        weights=torch.from_numpy(weights.reshape(nblocks, 3 * block * group, length * group)),
        bias=torch.from_numpy(np.repeat(bias, group).astype(np.int32).reshape(nblocks, block * group, 1)),
        block=block,
        stride=stride,
        origin=origin,
        length=length,
        first=int(start[0]),
        last=int((start + count)[-1]),
        outputs=outputs,
        group=group,
        constant_exact=bool(255 * np.abs(fixed.sum(axis=1) - _ONE).max() < _HALF),
    )


@functools.lru_cache(maxsize=512)
def _fits_int32(in_size: int, out_size: int, resample: int) -> bool:
    """Whether no int32 in the digit combination can overflow for this axis: centred
    pixels are at most 128 in magnitude, so a digit sum is at most ``128 * sum(|digit|)``.
    Only extreme downscales (hundreds of taps per output) could fail; PIL takes those."""
    c = coefficients(in_size, out_size, resample)
    per_digit = 128 * np.abs(_limbs(c.weights).astype(np.int64)).sum(axis=-1)  # (3, outputs)
    scaled = per_digit[0] + _LIMB * per_digit[1] + _LIMB * _LIMB * per_digit[2]
    bias = _HALF + 128 * np.abs(c.weights.sum(axis=1) - _ONE)
    return bool((scaled + bias).max() < 2**31)


_SCRATCH_LIMIT = 32 << 20  # bytes; larger buffers are allocated per call


class _Scratch(threading.local):
    """Per-thread buffers reused across calls: a fresh multi-megabyte tensor costs more in
    page faults than the arithmetic done on it. Results handed out never live here."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        size = math.prod(shape)
        if size * dtype.itemsize > _SCRATCH_LIMIT:  # a rare huge image: not kept
            return torch.empty(shape, dtype=dtype)
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < size:
            buf = self.buffers[name] = torch.empty(max(size, 1), dtype=dtype)
        return buf[:size].view(shape)


_SCRATCH = _Scratch()


def _pass(x: torch.Tensor, plan: _Pass, along_rows: bool, dest: torch.Tensor) -> None:
    """Resample centred int8 pixels along one axis into ``dest`` (centred, int8).

    ``along_rows``: ``x`` is ``(span, K)``, resampled down its rows, ``dest`` is
    ``(nblocks, block, K)``. Otherwise ``x`` is ``(N, span * group)``, resampled along
    its rows' (channel-interleaved) entries, and ``dest`` is ``(nblocks, block * group, N)``:
    transposed, outputs first. Each block's digit sums are combined while still in cache.
    """
    g, (rows_stride, cols_stride) = plan.group, x.stride()
    if along_rows:
        kept = x.shape[1]
        shape = (plan.nblocks, plan.length, kept)
        strides = (plan.stride * rows_stride, rows_stride, cols_stride)
    else:
        kept = x.shape[0]
        shape = (plan.nblocks, g * plan.length, kept)
        strides = (g * plan.stride * cols_stride, cols_stride, rows_stride)
    windows = x.as_strided(shape, strides, x.storage_offset()).unbind(0)  # operand of each block's matmul
    rows = plan.block * g
    # combine the digit sums of a few blocks at a time, while they are still in cache
    batch = max(1, min(plan.nblocks, _CACHE_BYTES // (3 * rows * kept * 4)))
    sums = _SCRATCH.get("sums", (batch, 3, rows, kept), torch.int32)
    flats = sums.view(batch, 3 * rows, kept).unbind(0)
    for first in range(0, plan.nblocks, batch):
        last = min(first + batch, plan.nblocks)
        for flat, weights, window in zip(flats, plan.block_weights[first:last], windows[first:last]):
            torch._int_mm(weights, window, out=flat)
        low, mid, high = sums[: last - first].unbind(1)
        low.add_(mid, alpha=_LIMB).add_(high, alpha=_LIMB * _LIMB).add_(plan.bias[first:last])
        dest[first:last].copy_(low.bitwise_right_shift_(PRECISION_BITS).clamp_(_INT8_MIN, _INT8_MAX))


@dataclass(frozen=True)
class _Source:
    """What is resampled: ``pixels`` ``(h, w, C)`` pasted at ``(left, top)`` on a
    ``width`` x ``height`` canvas of colour ``fill`` (``(C,)`` uint8); without a fill,
    the canvas is the pixels themselves."""

    pixels: torch.Tensor
    width: int
    height: int
    left: int = 0
    top: int = 0
    fill: torch.Tensor | None = None

    def rows_inside(self, r0: int, r1: int) -> tuple[int, int]:
        """The image rows among canvas rows ``r0:r1`` (an empty range at ``r0`` if none)."""
        a, b = max(r0, self.top), min(r1, self.top + self.pixels.shape[0])
        return (a, b) if a < b else (r0, r0)

    def put(self, dest: torch.Tensor, r0: int, c0: int, centred: bool = True) -> None:
        """``dest`` ``(R, W', C)`` uint8 = canvas rows ``r0:`` and columns ``c0:``, as
        centred int8 bit patterns (``p ^ 0x80 == p - 128``) unless ``centred`` is false."""
        rows, cols = dest.shape[:2]
        h, w = self.pixels.shape[:2]
        ir0, ir1 = max(r0, self.top), min(r0 + rows, self.top + h)
        ic0, ic1 = max(c0, self.left), min(c0 + cols, self.left + w)
        inside = ir0 < ir1 and ic0 < ic1
        if not (inside and (ir0, ir1, ic0, ic1) == (r0, r0 + rows, c0, c0 + cols)):
            if self.fill is None:
                raise ValueError("rows or columns outside an image without a canvas")
            dest.copy_(self.fill ^ 128 if centred else self.fill)
        if inside:
            pixels = self.pixels[ir0 - self.top : ir1 - self.top, ic0 - self.left : ic1 - self.left]
            region = dest[ir0 - r0 : ir1 - r0, ic0 - c0 : ic1 - c0]
            if centred:
                torch.bitwise_xor(pixels, 128, out=region)
            else:
                region.copy_(pixels)


def _across_to_image(across: torch.Tensor, cw: int, c: int) -> torch.Tensor:
    """Width-pass output ``(padded * C, rows)`` centred int8 -> ``(rows, cw, C)`` uint8."""
    rows = across.shape[-1]
    out = torch.empty((rows, cw, c), dtype=torch.uint8)
    out.view(torch.int8).copy_(across.reshape(-1, c, rows)[:cw].permute(2, 0, 1))
    return out.bitwise_xor_(128)


def _resize_source(src: _Source, width: int, height: int, resample: int, crop, block) -> torch.Tensor:
    """The ``crop`` of the resized canvas, ``(crop_h, crop_w, C)`` uint8."""
    in_h, in_w, c = src.height, src.width, src.pixels.shape[2]
    left, top, cw, ch = crop
    do_w, do_h = width != in_w, height != in_h
    if do_h and not do_w:  # height only: down the rows of the kept columns
        hplan = _plan(in_h, height, resample, top, top + ch, cw * c, 1, block)
        buf = _SCRATCH.get("src", (hplan.span, cw, c), torch.uint8)
        src.put(buf[hplan.lead : hplan.lead + hplan.last - hplan.first], hplan.first, left)
        out = torch.empty((hplan.padded, cw, c), dtype=torch.uint8)
        dest = out.view(torch.int8).view(hplan.nblocks, hplan.block, cw * c)
        _pass(buf.view(torch.int8).view(hplan.span, cw * c), hplan, True, dest)
        return out[:ch].bitwise_xor_(128)
    if do_h and vertical_first(in_w, in_h, width, height):
        # height pass first, down the rows, over the columns the width pass will read
        wplan = _plan(in_w, width, resample, left, left + cw, ch, c, block)
        hplan = _plan(in_h, height, resample, top, top + ch, wplan.span * c, 1, block)
        buf = _SCRATCH.get("src", (hplan.span, wplan.span, c), torch.uint8)
        rows = slice(hplan.lead, hplan.lead + hplan.last - hplan.first)
        src.put(buf[rows, wplan.lead : wplan.lead + wplan.last - wplan.first], hplan.first, wplan.first)
        mid = _SCRATCH.get("mid", (hplan.padded, wplan.span * c), torch.int8)
        down = mid.view(hplan.nblocks, hplan.block, -1)
        _pass(buf.view(torch.int8).view(hplan.span, -1), hplan, True, down)
        across = _SCRATCH.get("across", (wplan.padded * c, ch), torch.int8)
        _pass(mid[:ch], wplan, False, across.view(wplan.nblocks, wplan.block * c, ch))
        return _across_to_image(across, cw, c)
    # width pass first (or alone), along the rows the height pass will read
    hplan = _plan(in_h, height, resample, top, top + ch, cw * c, 1, block) if do_h else None
    r0, r1 = (hplan.first, hplan.last) if do_h else (top, top + ch)
    # rows of the fill colour stay that colour (``constant_exact``): only image rows are resampled
    shortcut = do_h and src.fill is not None
    wplan = _plan(in_w, width, resample, left, left + cw, r1 - r0, c, block)
    a, b = src.rows_inside(r0, r1) if shortcut and wplan.constant_exact else (r0, r1)
    buf = _SCRATCH.get("src", (b - a, wplan.span, c), torch.uint8)
    src.put(buf[:, wplan.lead : wplan.lead + wplan.last - wplan.first], a, wplan.first)
    x = buf.view(torch.int8).view(b - a, wplan.span * c)
    if not do_h:
        across = _SCRATCH.get("across", (wplan.padded * c, ch), torch.int8)
        _pass(x, wplan, False, across.view(wplan.nblocks, wplan.block * c, ch))
        return _across_to_image(across, cw, c)
    mid = _SCRATCH.get("mid", (wplan.padded * c, hplan.span), torch.int8)
    at = hplan.lead - r0  # canvas row r is column at + r of mid
    if b > a:
        _pass(x, wplan, False, mid.view(wplan.nblocks, wplan.block * c, hplan.span)[:, :, at + a : at + b])
    if (a, b) != (r0, r1):
        fill = (src.fill ^ 128).view(torch.int8).view(1, c, 1)
        by_channel = mid.view(wplan.padded, c, hplan.span)
        by_channel[:, :, at + r0 : at + a].copy_(fill.expand(wplan.padded, c, a - r0))
        by_channel[:, :, at + b : at + r1].copy_(fill.expand(wplan.padded, c, r1 - b))
    out = torch.empty((hplan.padded, cw, c), dtype=torch.uint8)
    _pass(mid[: cw * c], hplan, False, out.view(torch.int8).view(hplan.nblocks, hplan.block, cw * c))
    return out[:ch].bitwise_xor_(128)


def _cpu_has_avx512_vnni() -> bool:
    """ATen's own condition for oneDNN's int8 matmul; read from /proc/cpuinfo, else timed
    (oneDNN multiplies 192^3 int8 in ~0.05 ms, the scalar loop takes ~10 ms)."""
    try:
        with open("/proc/cpuinfo") as info:
            return "avx512_vnni" in info.read()
    except OSError:
        square = torch.ones((192, 192), dtype=torch.int8)
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            torch._int_mm(square, square)
            best = min(best, time.perf_counter() - start)
        return best < 3e-3


@functools.cache
def int8_matmul_usable() -> bool:
    """Whether ``torch._int_mm`` is exact and fast here, checked once.

    With oneDNN enabled on a CPU with AVX512-VNNI it runs oneDNN's int8 matmul; elsewhere
    an exact scalar loop some hundred times slower, where PIL itself is the faster exact
    resampler. Checked: extreme values (no saturation), strided operands included.
    """
    try:
        if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
            return False
        if not _cpu_has_avx512_vnni():
            return False
        gen = torch.Generator().manual_seed(0)
        a = torch.randint(-128, 128, (64, 96), dtype=torch.int8, generator=gen)
        b = torch.randint(-128, 128, (40, 100), dtype=torch.int8, generator=gen)[:, 2:98].t()
        a[:32] = -128
        a[32:48] = 127
        b[:, :8] = -128
        b[:, 8:16] = 127
        return bool(torch.equal(torch._int_mm(a, b).long(), a.long() @ b.long()))
    except (RuntimeError, AttributeError):
        return False


def _resize_pil(src: "_Source", width: int, height: int, resample: int, crop) -> torch.Tensor:
    """The same bytes from PIL, band by band (every band is resampled on its own there)."""
    left, top, cw, ch = crop
    full = torch.empty((src.height, src.width, src.pixels.shape[2]), dtype=torch.uint8)
    src.put(full, 0, 0, centred=False)
    bands = [
        np.asarray(Image.fromarray(band.numpy(), mode="L").resize((width, height), resample=resample))
        for band in full.unbind(2)
    ]
    return torch.from_numpy(np.stack(bands, axis=-1)[top : top + ch, left : left + cw].copy())


def _pixels(image) -> torch.Tensor:
    """``(H, W, C)`` uint8 view of a PIL image's pixels (read only) or the tensor given."""
    if not isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    with warnings.catch_warnings():  # PIL's buffer is read only; it is only ever read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


# PIL modes resampled as plain unsigned bytes per band (alpha modes are premultiplied
# first and LAB's a/b bands are signed there; P and 1 are resized as NEAREST).
_MODES = ("RGB", "L", "CMYK", "YCbCr", "HSV")


def resize_exact(
    image: "Image.Image | torch.Tensor",
    width: int,
    height: int,
    resample: int = BICUBIC,
    crop: tuple[int, int, int, int] | None = None,
    block: int | None = None,
    canvas: tuple[int, int, int, int, tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """A PIL image of mode RGB, L, CMYK, YCbCr or HSV or an ``(H, W, C)`` uint8 tensor ->
    ``(height, width, C)`` uint8, byte-exact with ``Image.resize((width, height), resample)``.

    ``crop`` = ``(left, top, crop_width, crop_height)`` inside the resized image: only
    that part is computed and returned. ``canvas`` = ``(canvas_width, canvas_height, x, y,
    fill)``: resize the image pasted at ``(x, y)`` on a canvas of colour ``fill`` instead
    (``Image.paste`` then ``resize``), without building the canvas; rows of pure fill are
    not resampled. ``block`` forces the outputs per matmul (tests); by default a cost
    model picks it per axis.
    """
    resample = _check_filter(resample)
    if isinstance(image, Image.Image) and image.mode not in _MODES:
        raise ValueError(f"exact resampling takes unsigned 8-bit modes {_MODES}, not {image.mode!r}")
    pixels = _pixels(image)
    if pixels.dtype != torch.uint8 or pixels.ndim != 3:
        raise ValueError(f"expected (H, W, C) uint8 pixels, got {tuple(pixels.shape)} {pixels.dtype}")
    if canvas is None:
        src = _Source(pixels, pixels.shape[1], pixels.shape[0])
    else:
        canvas_w, canvas_h, x, y, fill = canvas
        if not (0 <= x and 0 <= y and x + pixels.shape[1] <= canvas_w and y + pixels.shape[0] <= canvas_h):
            raise ValueError(f"the image does not fit at ({x}, {y}) on a {canvas_w}x{canvas_h} canvas")
        fill_t = torch.tensor(fill, dtype=torch.uint8)
        if fill_t.shape != (pixels.shape[2],):
            raise ValueError(f"fill {fill} does not have one value per channel ({pixels.shape[2]})")
        src = _Source(pixels, canvas_w, canvas_h, x, y, fill_t)
    left, top, cw, ch = crop if crop is not None else (0, 0, width, height)
    if not (0 <= left and 0 <= top and cw > 0 and ch > 0 and left + cw <= width and top + ch <= height):
        raise ValueError(f"crop {crop} is not inside the {width}x{height} output")
    if (width, height) == (src.width, src.height):
        out = torch.empty((ch, cw, pixels.shape[2]), dtype=torch.uint8)
        src.put(out, top, left, centred=False)
        return out
    usable = int8_matmul_usable() and _fits_int32(src.width, width, resample)
    if not (usable and _fits_int32(src.height, height, resample)):
        return _resize_pil(src, width, height, resample, (left, top, cw, ch))
    return _resize_source(src, width, height, resample, (left, top, cw, ch), block)
