"""``kernels.resample``: byte-for-byte equal to the installed Pillow's ``Image.resize``.

Every comparison is ``np.array_equal`` against ``PIL.Image.resize(size, resample)`` with
default arguments: random noise and smooth images (gradients reach the rounding edges
differently), sizes up and down, both pass orders, crops, every PIL mode after
``to_rgb``, and the whole preprocessing path. "Probe" images put each output's sum
within a pixel value of a rounding boundary, so one fixed-point weight off by one unit
changes a byte; ``test_one_weight_off_by_one_is_caught`` checks that they do.
"""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

import kernels.resample as resample
from kernels.resample import (
    BICUBIC,
    BILINEAR,
    coefficients,
    coefficients_reference,
    resize_exact,
    resize_exact_many,
    resize_reference,
    vertical_first,
)
from llava_model.image_processing import ImageProcessingConfig, preprocess_images, to_rgb
from tests.images import noise, photo_like

FILTERS = {"bicubic": BICUBIC, "bilinear": BILINEAR}


def gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth ramps with odd slopes: sums land on many different fractions."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    slopes = rng.uniform(0.05, 3.0, size=(3, 2))
    planes = [(x * sx + y * sy + 17 * c) % 256 for c, (sx, sy) in enumerate(slopes)]
    return Image.fromarray(np.stack(planes, axis=-1).astype(np.uint8))


KINDS = {"noise": noise, "photo": photo_like, "gradient": gradient}


def pil(image: Image.Image, width: int, height: int, filt: int) -> np.ndarray:
    return np.asarray(image.resize((width, height), filt))


def ours(image, width: int, height: int, filt: int, **kwargs) -> np.ndarray:
    return resize_exact(image, width, height, filt, **kwargs).numpy()


# (input size, output size): down, up, one axis each way, identity, both pass orders
# (vertical first where the height shrinks by more than twice the width's shrink).
SIZE_CASES = [
    ((1, 1), (336, 336)),
    ((1, 1), (1, 1)),
    ((1, 9), (336, 336)),
    ((9, 1), (336, 336)),
    ((1, 300), (5, 17)),
    ((300, 1), (17, 5)),
    ((2, 3), (336, 336)),
    ((2, 3), (1, 1)),
    ((17, 9), (336, 336)),
    ((17, 9), (5, 3)),
    ((335, 337), (336, 336)),
    ((337, 335), (336, 336)),
    ((336, 336), (336, 336)),
    ((336, 500), (336, 700)),
    ((336, 500), (336, 336)),
    ((640, 480), (448, 336)),
    ((480, 640), (336, 448)),
    ((640, 480), (336, 336)),
    ((1023, 77), (4464, 336)),
    ((1023, 77), (336, 336)),
    ((77, 1023), (336, 4464)),
    ((77, 1023), (336, 336)),
    ((2000, 1500), (448, 336)),
    ((1500, 2000), (336, 448)),
    ((2000, 1500), (336, 336)),
    ((20, 20), (336, 336)),
    ((21, 13), (542, 336)),
    ((333, 517), (336, 521)),
    ((517, 333), (521, 336)),
    ((999, 101), (336, 336)),
    ((101, 999), (336, 336)),
    ((50, 300), (336, 2016)),
    ((300, 50), (2016, 336)),
    ((1000, 4000), (336, 1344)),
    ((1000, 4000), (336, 336)),
    ((4000, 500), (336, 336)),
    ((701, 1201), (335, 337)),
]


def _case_id(case) -> str:
    (w, h), (ow, oh) = case
    return f"{w}x{h}-{ow}x{oh}"


def test_size_cases_cover_both_orders():
    orders = {vertical_first(w, h, ow, oh) for (w, h), (ow, oh) in SIZE_CASES if ow != w and oh != h}
    assert orders == {True, False}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("filt", list(FILTERS))
@pytest.mark.parametrize("case", SIZE_CASES, ids=_case_id)
def test_matches_pillow(case, filt, kind):
    (w, h), (ow, oh) = case
    image = KINDS[kind](w, h, seed=w * 7 + h)
    expected = pil(image, ow, oh, FILTERS[filt])
    assert np.array_equal(ours(image, ow, oh, FILTERS[filt]), expected)
    tensor = torch.from_numpy(np.array(image))
    assert np.array_equal(ours(tensor, ow, oh, FILTERS[filt]), expected)
    # crops: centred (as fit_geometry asks) and off-centre
    for left, top, cw, ch in [
        ((ow - min(ow, 336)) // 2, (oh - min(oh, 336)) // 2, min(ow, 336), min(oh, 336)),
        (ow // 3, oh // 5, max(1, ow // 2), max(1, oh // 3)),
    ]:
        crop = (left, top, cw, ch)
        got = ours(image, ow, oh, FILTERS[filt], crop=crop)
        assert np.array_equal(got, expected[top : top + ch, left : left + cw]), crop


GRID = [1, 2, 3, 7, 16, 33]


@pytest.mark.parametrize("filt", list(FILTERS))
def test_small_size_grid(filt):
    """Every pairing of small input and output sizes (1296 per filter), noise images."""
    mismatches = []
    for w, h, ow, oh in itertools.product(GRID, GRID, GRID, GRID):
        image = noise(w, h, seed=w + 40 * h + 1600 * ow + oh)
        if not np.array_equal(ours(image, ow, oh, FILTERS[filt]), pil(image, ow, oh, FILTERS[filt])):
            mismatches.append((w, h, ow, oh))
    assert not mismatches


@pytest.mark.parametrize("filt", list(FILTERS))
@pytest.mark.parametrize(
    "in_size,out_size", [(1, 5), (5, 1), (17, 9), (9, 17), (640, 448), (1023, 336), (77, 336), (4000, 336)]
)
def test_weights_match_the_plain_transcription(in_size, out_size, filt):
    fast = coefficients(in_size, out_size, FILTERS[filt])
    starts, weights = coefficients_reference(in_size, out_size, FILTERS[filt])
    assert fast.start.tolist() == starts
    for i, taps in enumerate(weights):
        assert fast.count[i] == len(taps)
        assert fast.weights[i, : len(taps)].tolist() == taps
        assert not fast.weights[i, len(taps) :].any()


@pytest.mark.parametrize("filt", list(FILTERS))
@pytest.mark.parametrize(
    "case", [((17, 9), (5, 3)), ((2, 3), (7, 11)), ((40, 30), (13, 50)), ((13, 50), (20, 9))]
)
def test_plain_reference_matches_pillow(case, filt):
    (w, h), (ow, oh) = case
    image = noise(w, h, seed=3)
    expected = pil(image, ow, oh, FILTERS[filt])
    assert np.array_equal(resize_reference(np.asarray(image), ow, oh, FILTERS[filt]), expected)


# ---- probes: sums within a pixel value of a rounding boundary -------------------------------


def _near_boundary(k: np.ndarray, low: int, rng, samples: int = 4096) -> np.ndarray | None:
    """Pixels ``p`` in 128..255 with ``(2**21 + sum(p k)) mod 2**22`` in ``low:low + 128``,
    found by meeting in the middle: sorted sums of random first halves against random
    second halves (some 2**24 pairs tried at once); ``None`` if there are none."""
    one, half = 1 << 22, max(1, len(k) // 2)
    first = rng.integers(128, 256, size=(samples, half))
    second = rng.integers(128, 256, size=(samples, len(k) - half))
    sums_first = (first @ k[:half] + (one >> 1)) % one
    sums_second = (second @ k[half:]) % one
    order = np.argsort(sums_first)
    ordered = sums_first[order]
    wanted = (low - sums_second) % one  # first-half sums that land the total in the window
    at = np.searchsorted(ordered, wanted) % samples
    hits = np.flatnonzero((ordered[at] - wanted) % one < 128)
    if not len(hits):
        return None
    j = hits[0]
    return np.concatenate([first[order[at[j]]], second[j]])


def probe_rows(in_size: int, out_size: int, filt: int, seed: int = 0) -> np.ndarray:
    """``(R, in_size)`` uint8 rows, all pixels >= 128. For each output ``j`` that can be
    probed, one row puts ``2**21 + sum(p k)`` within 128 below a multiple of 2**22 and
    one within 128 above: any weight of ``j`` (or a spurious tap) one unit too high
    flips the first row's byte, one unit too low the second's."""
    rng = np.random.default_rng(seed)
    starts, weights = coefficients_reference(in_size, out_size, filt)
    rows = []
    for start, taps in zip(starts, weights):
        k = np.array(taps, dtype=np.int64)
        for low in ((1 << 22) - 128, 0):
            pixels = _near_boundary(k, low, rng)
            if pixels is not None:
                row = rng.integers(128, 256, size=in_size)
                row[start : start + len(k)] = pixels
                rows.append(row)
    return np.array(rows, dtype=np.uint8).reshape(-1, in_size)


# (input, output) sizes probed, with how many probe rows at least are expected: every
# output of a bicubic downscale; fewer where outputs have two or three taps.
PROBED = {
    ("bicubic", 17, 9): 4,
    ("bicubic", 9, 17): 4,
    ("bicubic", 640, 448): 896,
    ("bicubic", 480, 336): 672,
    ("bicubic", 1023, 336): 672,
    ("bicubic", 77, 336): 600,
    ("bicubic", 333, 336): 600,
    ("bicubic", 2000, 336): 672,
    ("bilinear", 17, 9): 8,
    ("bilinear", 640, 448): 50,
    ("bilinear", 480, 336): 40,
    ("bilinear", 1023, 336): 400,
    ("bilinear", 77, 336): 400,
    ("bilinear", 333, 336): 400,
    ("bilinear", 2000, 336): 400,
}


@pytest.mark.parametrize("filt,in_size,out_size", list(PROBED), ids=lambda v: str(v))
def test_probes_match_pillow(filt, in_size, out_size):
    rows = probe_rows(in_size, out_size, FILTERS[filt])
    # Outputs with few taps cannot get near a boundary (their sums take a few hundred
    # values far apart), nor can any image: no byte depends on a unit of their weights.
    assert len(rows) >= PROBED[filt, in_size, out_size]
    wide = Image.fromarray(np.repeat(rows[:, :, None], 3, axis=2))  # width pass only
    tall = wide.transpose(Image.Transpose.TRANSPOSE)  # height pass only
    n = len(rows)
    assert np.array_equal(ours(wide, out_size, n, FILTERS[filt]), pil(wide, out_size, n, FILTERS[filt]))
    assert np.array_equal(ours(tall, n, out_size, FILTERS[filt]), pil(tall, n, out_size, FILTERS[filt]))


@pytest.fixture
def fresh_plans():
    """Weight tables built anew (a test swaps ``coefficients``), and again afterwards."""
    caches = (resample._axis,)
    for cache in caches:
        cache.cache_clear()
    yield
    for cache in caches:
        cache.cache_clear()


@pytest.mark.parametrize("delta", [1, -1])
@pytest.mark.parametrize("output,tap", [(0, 0), (3, 2), (7, 5)])
def test_one_weight_off_by_one_is_caught(monkeypatch, fresh_plans, output, tap, delta):
    """The probes are sharp: one weight one unit off changes some byte."""
    in_size, out_size = 640, 448
    rows = probe_rows(in_size, out_size, BICUBIC)
    image = Image.fromarray(np.repeat(rows[:, :, None], 3, axis=2))
    expected = pil(image, out_size, len(rows), BICUBIC)
    assert np.array_equal(ours(image, out_size, len(rows), BICUBIC), expected)

    true_coefficients = resample.coefficients

    def off_by_one(n, m, filt):
        table = true_coefficients(n, m, filt)
        if (n, m) != (in_size, out_size):
            return table
        weights = table.weights.copy()
        weights[output, tap] += delta
        return resample.Coefficients(table.start, table.count, weights)

    monkeypatch.setattr(resample, "coefficients", off_by_one)
    resample._axis.cache_clear()
    assert not np.array_equal(ours(image, out_size, len(rows), BICUBIC), expected)


# ---- pass order, modes, canvas, fallback ---------------------------------------------------


@pytest.mark.parametrize(
    "w,h,ow", [(300, 400, 250), (640, 480, 600), (50, 5000, 40), (200, 210, 199), (16, 16, 9)]
)
def test_vertical_first_boundary(w, h, ow):
    """The installed Pillow runs the height pass first exactly when the height shrinks by
    more than twice the width's shrink: bytes match around that boundary."""
    boundary = h - 2 * (w - ow)  # vertical first iff oh < boundary
    for oh in (boundary - 1, boundary, boundary + 1):
        if not 0 < oh < h:
            continue
        assert vertical_first(w, h, ow, oh) == (oh < boundary)
        image = noise(w, h, seed=oh)
        for filt in FILTERS.values():
            assert np.array_equal(ours(image, ow, oh, filt), pil(image, ow, oh, filt)), (oh, filt)


def _modes(base: Image.Image) -> dict[str, Image.Image]:
    alpha = Image.fromarray(np.tile(np.linspace(0, 255, base.width, dtype=np.uint8), (base.height, 1)))
    rgba = base.copy()
    rgba.putalpha(alpha)
    grey16 = Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257 + 3).astype(np.uint16))
    palette = base.quantize(64)
    transparent = palette.copy()
    transparent.info["transparency"] = 5
    return {
        "L": base.convert("L"),
        "LA": rgba.convert("LA"),
        "P": palette,
        "P-transparent": transparent,
        "RGBA": rgba,
        "CMYK": base.convert("CMYK"),
        "I;16": grey16,
        "I": base.convert("I"),
        "F": base.convert("F"),
        "1": base.convert("1"),
        "YCbCr": base.convert("YCbCr"),
        "HSV": base.convert("HSV"),
        "RGB": base,
    }


@pytest.mark.parametrize("mode", list(_modes(photo_like(8, 8))))
def test_every_mode_after_to_rgb(mode):
    image = to_rgb(_modes(photo_like(91, 67, seed=5))[mode])
    assert image.mode == "RGB"
    for (ow, oh), filt in itertools.product([(336, 336), (45, 30), (91, 336)], FILTERS.values()):
        assert np.array_equal(ours(image, ow, oh, filt), pil(image, ow, oh, filt)), (ow, oh, filt)


@pytest.mark.parametrize("mode", ["L", "YCbCr", "HSV", "CMYK"])
def test_other_8_bit_modes_directly(mode):
    image = photo_like(64, 40, seed=2).convert(mode)
    for filt in FILTERS.values():
        expected = np.asarray(image.resize((30, 90), filt)).reshape(90, 30, -1)
        assert np.array_equal(ours(image, 30, 90, filt), expected)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "LAB", "I;16", "P"])
def test_other_modes_are_refused(mode):
    """Alpha is premultiplied, LAB's a/b are signed, P is resized as NEAREST in PIL."""
    rgb = photo_like(4, 4)
    if mode == "I;16":
        image = Image.fromarray(np.full((4, 4), 1000, dtype=np.uint16))
    else:
        image = rgb.quantize(8) if mode == "P" else rgb.convert(mode)
    assert image.mode == mode
    with pytest.raises(ValueError, match="unsigned 8-bit modes"):
        resize_exact(image, 2, 2)


@pytest.mark.parametrize(
    "size", [(640, 480), (480, 640), (50, 300), (300, 50), (1, 7), (333, 517), (1920, 1080)]
)
@pytest.mark.parametrize("side", [336, 32, 5000])
def test_canvas_equals_paste_then_resize(size, side):
    """LLaVA's pad to square, read on the fly: rows of fill are not resampled."""
    w, h = size
    fill = (122, 116, 104)
    square = max(w, h)
    image = photo_like(w, h, seed=w)
    pasted = Image.new("RGB", (square, square), fill)
    pasted.paste(image, ((square - w) // 2, (square - h) // 2))
    canvas = (square, square, (square - w) // 2, (square - h) // 2, fill)
    out = min(side, 2 * square)
    for filt in FILTERS.values():
        expected = pil(pasted, out, out, filt)
        crop = ((out - min(out, 336)) // 2,) * 2 + (min(out, 336),) * 2
        left, top, cw, ch = crop
        got = ours(image, out, out, filt, crop=crop, canvas=canvas)
        assert np.array_equal(got, expected[top : top + ch, left : left + cw]), filt


# One image, several sizes: LLaVA-NeXT's grid and base tile, both pass orders in one list,
# a size equal to the image's, one axis unchanged, upscaling.
MANY_CASES = [
    ((1920, 1080), [(672, 378), (336, 336)]),
    ((1080, 1920), [(378, 672), (336, 336)]),
    ((640, 480), [(672, 504), (336, 336), (640, 480)]),
    ((999, 101), [(336, 34), (336, 336), (999, 50), (500, 101)]),
    ((333, 517), [(336, 522), (336, 336), (111, 517), (20, 7)]),
    ((1, 9), [(3, 3), (5, 1)]),
]


@pytest.mark.parametrize("case", MANY_CASES, ids=lambda c: "x".join(map(str, c[0])))
@pytest.mark.parametrize("kind", ["noise", "photo"])
def test_many_sizes_equal_pillow(case, kind):
    """``resize_exact_many`` reads the image once for all its sizes: each output is still
    Pillow's bytes (the shared width pass must give every size its own taps)."""
    (w, h), sizes = case
    image = KINDS[kind](w, h, seed=w + h)
    for filt in FILTERS.values():
        got = resize_exact_many(image, sizes, filt)
        assert len(got) == len(sizes)
        for (ow, oh), out in zip(sizes, got):
            assert np.array_equal(out.numpy(), pil(image, ow, oh, filt)), (ow, oh, filt)


def test_many_sizes_share_one_read(monkeypatch):
    """Two sizes that both start along the width transpose the photo's rows once, not twice."""
    image = photo_like(1920, 1080, seed=3)
    calls = []
    original = resample._width_passes
    def counted(src, axes, *rest):
        calls.append(len(axes))
        return original(src, axes, *rest)

    monkeypatch.setattr(resample, "_width_passes", counted)
    resize_exact_many(image, [(672, 378), (336, 336)])
    assert calls == [2]


def test_many_sizes_on_tensors_and_bad_input(monkeypatch):
    grey = torch.from_numpy(np.asarray(photo_like(90, 70, seed=2).convert("L"))[:, :, None].copy())
    got = resize_exact_many(grey, [(40, 50), (90, 30)])
    for (ow, oh), out in zip([(40, 50), (90, 30)], got):
        expected = np.asarray(Image.fromarray(grey[:, :, 0].numpy()).resize((ow, oh), BICUBIC))
        assert np.array_equal(out[:, :, 0].numpy(), expected)
    with pytest.raises(ValueError, match="cannot resize to 0x5"):
        resize_exact_many(grey, [(0, 5)])
    with pytest.raises(ValueError, match="modes"):
        resize_exact_many(Image.new("I;16", (4, 4)), [(2, 2)])
    monkeypatch.setattr(resample, "jit_usable", lambda: False)  # PIL does it: the same bytes
    image = photo_like(90, 70, seed=1)
    for (ow, oh), out in zip([(40, 50), (33, 70)], resize_exact_many(image, [(40, 50), (33, 70)])):
        assert np.array_equal(out.numpy(), pil(image, ow, oh, BICUBIC))


def test_exact_without_numba(monkeypatch):
    """Where the compiled loops are missing, PIL does it: the same bytes."""
    monkeypatch.setattr(resample, "jit_usable", lambda: False)
    image = photo_like(90, 70, seed=1)
    expected = pil(image, 40, 50, BICUBIC)[4:34, 3:23]
    assert np.array_equal(ours(image, 40, 50, BICUBIC, crop=(3, 4, 20, 30)), expected)
    canvas = (90, 90, 0, 10, (1, 2, 3))
    pasted = Image.new("RGB", (90, 90), (1, 2, 3))
    pasted.paste(image, (0, 10))
    assert np.array_equal(ours(image, 45, 45, BILINEAR, canvas=canvas), pil(pasted, 45, 45, BILINEAR))


def test_threads_do_not_share_buffers():
    from concurrent.futures import ThreadPoolExecutor

    images = [photo_like(300 + 40 * i, 200 + 30 * i, seed=i) for i in range(6)]
    expected = [pil(image, 224, 224, BICUBIC) for image in images]
    with ThreadPoolExecutor(3) as pool:
        for _ in range(3):
            got = list(pool.map(lambda image: ours(image, 224, 224, BICUBIC), images))
            assert all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_compiled_loops_are_used_here():
    """numba is a dependency: the fast path runs here, not PIL."""
    assert resample.jit_usable()
    resample.warm_up()


def test_default_resize_arguments():
    """``Image.resize(size, resample)`` means no ``reducing_gap`` and the whole image as
    box, which is what the kernel reproduces; a reducing gap would give other bytes."""
    image = noise(2000, 1500, seed=9)
    default = pil(image, 336, 252, BICUBIC)
    explicit = image.resize((336, 252), BICUBIC, box=(0, 0, 2000, 1500), reducing_gap=None)
    assert np.array_equal(default, np.asarray(explicit))
    assert not np.array_equal(default, np.asarray(image.resize((336, 252), BICUBIC, reducing_gap=2.0)))
    assert np.array_equal(ours(image, 336, 252, BICUBIC), default)


# ---- the whole preprocessing path ----------------------------------------------------------

PATH_IMAGES = [
    (640, 480, photo_like),
    (333, 517, noise),
    (50, 300, photo_like),
    (2000, 1500, gradient),
    (1, 1, noise),
    (336, 336, photo_like),
    (336, 500, gradient),
    (1000, 4000, photo_like),
    (20, 20, noise),
]


def test_exact_is_the_default():
    assert ImageProcessingConfig().resampler == "exact"
    assert ImageProcessingConfig.from_hf_dict({}, 336).resampler == "exact"


@pytest.mark.parametrize("filt", list(FILTERS))
@pytest.mark.parametrize("mode", ["crop", "pad", "resize"])
@pytest.mark.parametrize("sizes", [(336, 336), (224, 256), (32, 32)], ids=lambda s: f"{s[0]}-{s[1]}")
def test_preprocess_exact_equals_pil(mode, sizes, filt):
    side, shortest = sizes
    images = [make(w, h, seed=i) for i, (w, h, make) in enumerate(PATH_IMAGES)]
    common = dict(image_size=side, shortest_edge=shortest, aspect_mode=mode, resample=FILTERS[filt])
    exact = ImageProcessingConfig(**common)
    assert exact.resampler == "exact"
    reference = ImageProcessingConfig(**common, resampler="pil")
    assert torch.equal(preprocess_images(images, exact), preprocess_images(images, reference))
