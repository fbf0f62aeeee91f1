"""Our preprocessing against transformers' CLIP / LLaVA / SigLIP image processors, and odd inputs."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from kernels.preprocess import normalize_reference
from llava_model.image_processing import (
    OPENAI_CLIP_STD,
    ImageError,
    ImageProcessingConfig,
    decode_image,
    fit_geometry,
    preprocess_images,
    to_rgb,
)
from tests.images import noise, photo_like
from tests.reference import hf_processor

# With the exact (default) or PIL resampling our bytes are PIL's and the output equals
# the reference's float32 arithmetic up to the last bit; with torch resampling each byte
# is within two grey levels of PIL's, which is 2 / 255 / min(std) after normalisation,
# and almost all bytes are identical.
ATOL = {"exact": 1e-5, "pil": 1e-5, "torch": 2 / 255 / min(OPENAI_CLIP_STD) + 1e-5}
MEAN_ATOL = {"exact": 1e-6, "pil": 1e-6, "torch": 1e-3}

SIZES = [(640, 480), (480, 640), (336, 336), (337, 335), (1, 1), (3, 500), (500, 3), (1023, 77)]


@pytest.mark.parametrize("resampler", ["exact", "pil", "torch"])
@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", ["photo", "noise"])
def test_matches_transformers(resampler, mode, size, kind):
    side = 336
    image = (photo_like if kind == "photo" else noise)(*size, seed=size[0])
    cfg = ImageProcessingConfig(image_size=side, shortest_edge=side, aspect_mode=mode, resampler=resampler)
    ours = preprocess_images([image], cfg)
    ref = hf_processor(mode, side)(images=[image], return_tensors="pt")["pixel_values"].to(torch.float32)
    assert ours.shape == ref.shape == (1, 3, side, side)
    torch.testing.assert_close(ours, ref, atol=ATOL[resampler], rtol=0)
    assert (ours - ref).abs().mean() < MEAN_ATOL[resampler]


@pytest.mark.parametrize("size", [(640, 480), (480, 640)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_original_square_is_clip_processing(size):
    """The original LLaVA's ``image_aspect_ratio: square`` runs CLIP's processor as is
    (shortest-edge resize, centre crop), so a non-square image is cropped, not squashed."""
    side = 336
    cfg = ImageProcessingConfig.from_hf_dict({"image_aspect_ratio": "square"}, side)
    image = photo_like(*size, seed=size[0])
    ours = preprocess_images([image], cfg)
    ref = hf_processor("crop", side)(images=[image], return_tensors="pt")["pixel_values"].to(torch.float32)
    torch.testing.assert_close(ours, ref, atol=ATOL["exact"], rtol=0)


# llava-interleave's preprocessor_config.json, as its processor writes it (384 px there)
SIGLIP_FILE = {
    "image_processor_type": "SiglipImageProcessor",
    "processor_class": "LlavaProcessor",
    "do_resize": True,
    "size": {"height": 384, "width": 384},
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


@pytest.mark.parametrize("size", SIZES + [(384, 384), (1920, 1080)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_siglip_processor_file_matches_transformers(size):
    """SigLIP's processor stretches every image to its size (no crop, no pad) and
    normalises with 0.5 / 0.5; read from its own file, ours gives transformers' bytes."""
    side = 384
    cfg = ImageProcessingConfig.from_hf_dict(SIGLIP_FILE, side)
    assert (cfg.aspect_mode, cfg.image_mean, cfg.image_std) == ("resize", (0.5,) * 3, (0.5,) * 3)
    image = photo_like(*size, seed=size[1])
    ours = preprocess_images([image], cfg)
    ref = hf_processor("resize", side, "siglip")(images=[image], return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape == (1, 3, side, side)
    torch.testing.assert_close(ours, ref.to(torch.float32), atol=ATOL["exact"], rtol=0)


def test_batch_of_mixed_sizes_matches_one_by_one():
    cfg = ImageProcessingConfig(image_size=32, shortest_edge=32, aspect_mode="pad")
    images = [photo_like(40, 60, 1), noise(100, 30, 2), photo_like(32, 32, 3)]
    batch = preprocess_images(images, cfg)
    assert batch.shape == (3, 3, 32, 32)
    for i, image in enumerate(images):
        torch.testing.assert_close(batch[i : i + 1], preprocess_images([image], cfg), atol=0, rtol=0)


@pytest.mark.parametrize("resampler,max_levels", [("exact", 0), ("pil", 0), ("torch", 2)])
def test_resize_mode_ignores_aspect(resampler, max_levels):
    cfg = ImageProcessingConfig(image_size=64, shortest_edge=64, aspect_mode="resize", resampler=resampler)
    image = photo_like(200, 50)
    out = fit_geometry(image, cfg)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    expected = np.asarray(image.resize((64, 64), resample=Image.Resampling.BICUBIC))
    assert np.abs(out.astype(int) - expected).max() <= max_levels


def test_pad_fills_with_mean_colour():
    cfg = ImageProcessingConfig(image_size=32, shortest_edge=32, aspect_mode="pad")
    out = np.asarray(fit_geometry(Image.new("RGB", (32, 8), (0, 0, 0)), cfg))
    assert tuple(out[0, 0]) == tuple(int(m * 255) for m in cfg.image_mean)
    assert tuple(out[16, 16]) == (0, 0, 0)


def test_bf16_output_dtype():
    cfg = ImageProcessingConfig(image_size=32, shortest_edge=32)
    out = preprocess_images([noise(50, 40)], cfg, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), preprocess_images([noise(50, 40)], cfg), atol=0.05, rtol=0.01)


def test_normalize_reference_matches_formula():
    images = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    out = normalize_reference(images, mean, std, 1 / 255)
    expected = (images.permute(0, 3, 1, 2).double() / 255 - torch.tensor(mean).double()[:, None, None]) / torch.tensor(
        std
    ).double()[:, None, None]
    torch.testing.assert_close(out.double(), expected, atol=1e-6, rtol=0)


# ---- modes, orientation and bad input ----------------------------------------------------


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def test_transparent_pixels_become_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgb = np.asarray(to_rgb(rgba))
    assert tuple(rgb[1, 1]) == (255, 255, 255)
    assert tuple(rgb[0, 0]) == (0, 0, 255)
    la = Image.new("LA", (2, 2), (0, 0))
    assert tuple(np.asarray(to_rgb(la))[0, 0]) == (255, 255, 255)


def test_palette_with_transparency():
    image = Image.new("P", (2, 2), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    rgb = np.asarray(to_rgb(decode_image(_encode(image, "PNG", transparency=0))))
    assert tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[1, 1]) == (200, 100, 50)


@pytest.mark.parametrize(
    "mode,value,expected",
    [("L", 77, 77), ("I;16", 65535, 255), ("I;16", 257 * 40, 40), ("I", 257 * 90, 90), ("F", 12.4, 12)],
)
def test_grey_modes_scale_to_8_bit(mode, value, expected):
    image = Image.new(mode, (3, 2), value)
    assert to_rgb(image).mode == "RGB"
    assert tuple(np.asarray(to_rgb(image))[0, 0]) == (expected,) * 3


def test_sixteen_bit_png_round_trip():
    grey = Image.fromarray(np.full((4, 4), 257 * 200, dtype=np.uint16))
    rgb = np.asarray(to_rgb(decode_image(_encode(grey, "PNG"))))
    assert rgb.shape == (4, 4, 3) and rgb[0, 0, 0] == 200


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    rgb = np.asarray(to_rgb(decode_image(_encode(cmyk, "JPEG", quality=95))))
    assert rgb[4, 4, 0] > 200 and rgb[4, 4, 1] < 60 and rgb[4, 4, 2] < 60


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    image.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(_encode(image, "JPEG", exif=exif, quality=100))
    upright = to_rgb(decoded)
    assert decoded.size == (20, 10) and upright.size == (10, 20)
    assert np.asarray(upright)[0, -1].min() > 200  # top-left pixel moved to top-right


@pytest.mark.parametrize("data", [b"", b"not an image at all", _encode(noise(8, 8), "PNG")[:40]])
def test_corrupt_bytes_raise_image_error(data):
    with pytest.raises(ImageError, match="image"):
        decode_image(data)


def test_zero_size_images_raise():
    with pytest.raises(ImageError, match="zero size"):
        to_rgb(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError, match="image 1: .*unusable shape"):
        preprocess_images([noise(4, 4), np.zeros((0, 5, 3), np.uint8)], ImageProcessingConfig(32, 32))


def test_pixel_cap_checked_before_decoding():
    big = _encode(Image.new("RGB", (3000, 3000)), "PNG")
    with pytest.raises(ImageError, match="more than the limit"):
        decode_image(big, max_pixels=1_000_000)


def test_config_from_preprocessor_json():
    cfg = ImageProcessingConfig.from_hf_dict(
        {"crop_size": {"height": 336, "width": 336}, "size": {"shortest_edge": 336}, "do_pad": True}, 336
    )
    assert cfg.aspect_mode == "pad"
    assert ImageProcessingConfig.from_hf_dict({"image_aspect_ratio": "resize"}, 224).aspect_mode == "resize"
    assert ImageProcessingConfig.from_hf_dict({}, 224, aspect_mode="crop").aspect_mode == "crop"
    with pytest.raises(ValueError, match="does not match"):
        ImageProcessingConfig.from_hf_dict({"crop_size": {"height": 224, "width": 224}}, 336)
    with pytest.raises(ValueError, match="aspect mode"):
        ImageProcessingConfig.from_hf_dict({}, 224, aspect_mode="anyres")
    # a height x width size other than the tower's input cannot be honoured: refused, not guessed
    with pytest.raises(ValueError, match="not the vision tower's 384x384"):
        ImageProcessingConfig.from_hf_dict({**SIGLIP_FILE, "size": {"height": 384, "width": 512}}, 384)


def test_a_header_past_pils_own_limit_is_refused_as_too_many_pixels():
    """A PNG whose header claims 100,000 x 100,000 pixels trips PIL's decompression-bomb guard
    at open; it was reported as "not an image in a format the server reads"."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
    data = b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    with pytest.raises(ImageError, match="more pixels than the limit of 40000000"):
        decode_image(data, max_pixels=40_000_000)
