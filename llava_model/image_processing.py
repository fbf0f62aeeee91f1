"""Our image preprocessing: bytes or PIL images -> normalised pixel batches.

No Hugging Face image processor and no torchvision: PIL decodes, ``kernels.resample``
resizes (byte-exact with PIL) and ``kernels.normalize_images`` turns the whole batch of
uint8 images into normalised CHW tensors in one vectorised pass.

Geometry per image, by ``aspect_mode``:
- ``crop``   (CLIP): resize the shortest edge to ``shortest_edge``, centre-crop.
- ``pad``    (LLaVA-1.5): pad to a square filled with the mean colour, then as ``crop``.
- ``resize``: resize straight to ``image_size`` x ``image_size`` (aspect not kept).

``image_aspect_ratio`` values of the original LLaVA repo map onto these modes in one
place, ``aspect_mode_for``: there ``pad`` pads and anything else (``square``, the
default) runs the CLIP processor as is, i.e. ``crop``.

Resampling, by ``resampler``:
- ``exact`` (default): ``kernels.resample.resize_exact``, Pillow's two-pass fixed-point
  algorithm as compiled, vectorised loops (numba); every byte equal to ``Image.resize``
  (so to what transformers' processors compute) for BICUBIC and BILINEAR. Only the
  rows and columns that survive the centre crop are computed, and ``pad``'s square
  canvas is filled in as the image is read (never pasted): the same bytes as padding,
  resizing, then cropping. Other filters use PIL itself.
- ``torch``: PyTorch's antialiased bicubic/bilinear on uint8, vectorised and
  multi-threaded; every byte within two grey levels of PIL's result (almost all
  identical).
- ``pil``: PIL's resize, then the crop.
"""

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from kernels import normalize_images
from kernels.resample import SUPPORTED as EXACT_FILTERS
from kernels.resample import resize_exact, resize_exact_many
from llava_model.anyres import best_resolution, fit_within

AspectMode = Literal["crop", "pad", "resize"]
ASPECT_MODES: tuple[str, ...] = ("crop", "pad", "resize")
RESAMPLERS: tuple[str, ...] = ("exact", "torch", "pil")
_TORCH_MODES = {int(Image.Resampling.BICUBIC): "bicubic", int(Image.Resampling.BILINEAR): "bilinear"}

# The original LLaVA repo's ``image_aspect_ratio`` spellings -> our modes. There, any
# value but ``pad`` (and LLaVA-NeXT's ``anyres``) means CLIP's processor as is:
# shortest-edge resize, then centre crop.
ORIGINAL_ASPECT_RATIOS = {"pad": "pad", "square": "crop"}

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Modes whose alpha channel is composited onto white before dropping it.
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def aspect_mode_for(value: str) -> str:
    """Our aspect mode for an ``image_aspect_ratio`` value: the original repo's or ours."""
    mode = ORIGINAL_ASPECT_RATIOS.get(value, value)
    if mode not in ASPECT_MODES:
        raise ValueError(
            f"aspect mode {value!r} is not one of {ASPECT_MODES} or {tuple(ORIGINAL_ASPECT_RATIOS)}"
        )
    return mode


class ImageError(ValueError):
    """An image that cannot be used; the message says why."""


@dataclass(frozen=True)
class ImageProcessingConfig:
    image_size: int = 336  # output side, equal to the vision tower's input size
    shortest_edge: int = 336  # resize target of the shortest edge (crop / pad modes)
    aspect_mode: AspectMode = "crop"
    resample: int = Image.Resampling.BICUBIC
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    max_pixels: int | None = field(default=None)  # refuse larger images before decoding
    resampler: str = "exact"  # exact (PIL's bytes) | torch (fastest, within 2 grey levels) | pil

    def __post_init__(self) -> None:
        if self.aspect_mode not in ASPECT_MODES:
            raise ValueError(f"aspect mode {self.aspect_mode!r} is not one of {ASPECT_MODES}")
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"resampler {self.resampler!r} is not one of {RESAMPLERS}")
        if self.shortest_edge < self.image_size:
            raise ValueError(
                f"shortest_edge {self.shortest_edge} is smaller than the crop {self.image_size}"
            )

    @classmethod
    def from_hf_dict(
        cls,
        cfg: Mapping[str, object],
        image_size: int,
        aspect_mode: str | None = None,
    ) -> "ImageProcessingConfig":
        """Read a ``preprocessor_config.json`` (CLIP, LLaVA or SigLIP image processor).

        The mode comes from ``aspect_mode`` if given, else the file's
        ``image_aspect_ratio`` (ours or the original LLaVA's, see ``aspect_mode_for``),
        else ``do_pad`` -> ``pad``, else ``size``: ``shortest_edge`` -> ``crop``,
        ``height`` / ``width`` (SigLIP's, and transformers' meaning whatever the
        processor: straight to that size, aspect not kept) -> ``resize``.
        """
        crop = cfg.get("crop_size") or {"height": image_size, "width": image_size}
        crop_side = crop if isinstance(crop, int) else crop.get("height", image_size)
        if crop_side != image_size or (isinstance(crop, dict) and crop.get("width", crop_side) != crop_side):
            raise ValueError(
                f"preprocessor crop_size {crop} does not match the vision tower's image_size {image_size}"
            )
        size = cfg.get("size") or {"shortest_edge": image_size}
        fallback = "crop"
        if isinstance(size, int):
            shortest = size
        elif "shortest_edge" in size:
            shortest = int(size["shortest_edge"])
        else:  # resized to height x width; a centre crop afterwards would then cut nothing
            height, width = int(size.get("height", image_size)), int(size.get("width", image_size))
            if (height, width) != (image_size, image_size):
                raise ValueError(
                    f"preprocessor size {size} is not the vision tower's {image_size}x{image_size} input"
                )
            shortest, fallback = image_size, "resize"
        mode = aspect_mode or cfg.get("image_aspect_ratio") or ("pad" if cfg.get("do_pad") else fallback)
        return cls(
            image_size=image_size,
            shortest_edge=max(shortest, image_size),
            aspect_mode=aspect_mode_for(str(mode)),
            resample=int(cfg.get("resample", Image.Resampling.BICUBIC)),
            do_rescale=bool(cfg.get("do_rescale", True)),
            rescale_factor=float(cfg.get("rescale_factor", 1 / 255)),
            do_normalize=bool(cfg.get("do_normalize", True)),
            image_mean=tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(cfg.get("image_std", OPENAI_CLIP_STD)),
            resampler=str(cfg.get("resampler", "exact")),
        )


def decode_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Decode encoded bytes, checking the pixel count from the header first."""
    if not data:
        raise ImageError("image is empty (0 bytes)")
    # PIL's messages can carry object reprs with heap addresses: say the reason in our words.
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # a header claiming twice PIL's own pixel limit
        limit = max_pixels if max_pixels is not None else 2 * Image.MAX_IMAGE_PIXELS
        raise ImageError(f"image has more pixels than the limit of {limit}") from None
    except Exception:  # PIL raises several types for unreadable data
        raise ImageError("cannot decode image: not an image in a format the server reads") from None
    _check_size(image, max_pixels)
    try:
        image.load()
    except Exception:
        raise ImageError("cannot decode image: the image data is truncated or corrupt") from None
    return image


def _check_size(image: Image.Image, max_pixels: int | None) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"image has {width}x{height} pixels, more than the limit of {max_pixels}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode to 8-bit RGB.

    Transparent pixels are composited onto white; 16-bit and 32-bit grey images are
    scaled to 8 bits rather than clipped.
    """
    _check_size(image, None)
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # else it would only copy
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64)
        grey8 = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey8, mode="L").convert("RGB")
    if mode == "F":
        grey8 = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey8, mode="L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def as_pil(image: object) -> Image.Image:
    """Accept a PIL image, encoded bytes, or an HWC uint8 array / tensor."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_image(bytes(image))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
            image = np.transpose(image, (1, 2, 0))  # CHW -> HWC
        if image.dtype != np.uint8:
            raise ImageError(f"array images must be uint8, got {image.dtype}")
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim not in (2, 3) or 0 in image.shape:
            raise ImageError(f"array image has unusable shape {image.shape}")
        return Image.fromarray(image)
    raise ImageError(f"unsupported image type {type(image).__name__}")


def fit_geometry(image: Image.Image, cfg: ImageProcessingConfig) -> np.ndarray:
    """Pad / resize / crop an RGB image to an ``(S, S, 3)`` uint8 array."""
    side = cfg.image_size
    width, height = image.size
    if cfg.aspect_mode == "resize":
        return _resize(image, side, side, cfg)
    canvas = None
    if cfg.aspect_mode == "pad" and width != height:
        fill = tuple(int(m * 255) for m in cfg.image_mean)
        if _exact(cfg):  # the kernel pads as it reads: the same bytes as pasting first
            square = max(width, height)
            canvas = (square, square, (square - width) // 2, (square - height) // 2, fill)
        else:
            image = pad_to_square(image, fill)
        width = height = max(width, height)
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    left, top = (new_w - side) // 2, (new_h - side) // 2
    return _resize(image, new_w, new_h, cfg, crop=(left, top, side, side), canvas=canvas)


def _exact(cfg: ImageProcessingConfig) -> bool:
    return cfg.resampler == "exact" and int(cfg.resample) in EXACT_FILTERS


def _resize(
    image: Image.Image,
    width: int,
    height: int,
    cfg: ImageProcessingConfig,
    crop: tuple[int, int, int, int] | None = None,
    canvas: tuple | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 array of ``image`` resized to ``width`` x ``height``, or of the
    ``crop`` = ``(left, top, crop_width, crop_height)`` of that resize. ``canvas``
    (exact resampler only): see ``kernels.resample.resize_exact``."""
    left, top, cw, ch = crop if crop is not None else (0, 0, width, height)
    if _exact(cfg):
        out = resize_exact(image, width, height, int(cfg.resample), crop=(left, top, cw, ch), canvas=canvas)
        return out.numpy()
    if image.size == (width, height):
        return np.asarray(image)[top : top + ch, left : left + cw]
    mode = _TORCH_MODES.get(int(cfg.resample))
    if cfg.resampler != "torch" or mode is None:
        resized = np.asarray(image.resize((width, height), resample=cfg.resample))
    else:
        pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
        out = torch.nn.functional.interpolate(pixels, size=(height, width), mode=mode, antialias=True)
        resized = out[0].permute(1, 2, 0).numpy()
    return resized[top : top + ch, left : left + cw]


def pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def anyres_tiles(image: Image.Image, cfg: ImageProcessingConfig, pinpoints) -> np.ndarray:
    """LLaVA-NeXT's tower inputs for one RGB image (``llava_model.anyres``): the base image
    (resized straight to the tile side) then the tiles, row by row: ``(1 + R*C, S, S, 3)`` uint8.
    The same bytes as transformers' LlavaNextImageProcessor with the ``exact`` resampler."""
    side = cfg.image_size
    width, height = image.size
    target_h, target_w = best_resolution(height, width, pinpoints)
    new_h, new_w = fit_within(height, width, target_h, target_w)
    if _exact(cfg):  # one read of the photo for both resizes
        sizes = [(new_w, new_h), (side, side)]
        fitted, base = (t.numpy() for t in resize_exact_many(image, sizes, int(cfg.resample)))
    else:
        fitted, base = _resize(image, new_w, new_h, cfg), _resize(image, side, side, cfg)
    canvas = np.zeros((target_h, target_w, 3), dtype=np.uint8)  # black, as transformers pads
    top, left = (target_h - new_h) // 2, (target_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = fitted
    tiles = canvas.reshape(target_h // side, side, target_w // side, side, 3).swapaxes(1, 2)
    return np.concatenate([base[None], tiles.reshape(-1, side, side, 3)])


def preprocess_anyres(
    images: Sequence[object],
    cfg: ImageProcessingConfig,
    pinpoints,
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> tuple[torch.Tensor, list[int], list[tuple[int, int]]]:
    """Images -> (every image's tower inputs in one ``(T, 3, S, S)`` batch, inputs per image,
    each image's (height, width)), for LLaVA-NeXT. ``cfg.shortest_edge`` must be the side."""
    arrays, counts, sizes = [], [], []
    for index, raw in enumerate(images):
        rgb = _rgb(index, raw, cfg)
        tiles = anyres_tiles(rgb, cfg, pinpoints)
        arrays.append(tiles)
        counts.append(len(tiles))
        sizes.append((rgb.height, rgb.width))
    return _normalise(torch.from_numpy(np.concatenate(arrays)), cfg, dtype, backend), counts, sizes


def _rgb(index: int, raw: object, cfg: ImageProcessingConfig) -> Image.Image:
    """Image ``index`` of a request as 8-bit RGB within the pixel limit; errors name it."""
    try:
        rgb = to_rgb(as_pil(raw))
        _check_size(rgb, cfg.max_pixels)
    except ImageError as exc:
        raise ImageError(f"image {index}: {exc}") from None
    return rgb


def _normalise(batch: torch.Tensor, cfg: ImageProcessingConfig, dtype: torch.dtype, backend: str | None):
    """(B, S, S, 3) uint8 -> (B, 3, S, S) normalised in ``dtype``."""
    if not cfg.do_normalize:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    else:
        mean, std = cfg.image_mean, cfg.image_std
    rescale = cfg.rescale_factor if cfg.do_rescale else 1.0
    return normalize_images(batch, mean, std, rescale, dtype, backend=backend)


def preprocess_images(
    images: Sequence[object],
    cfg: ImageProcessingConfig,
    dtype: torch.dtype = torch.float32,
    backend: str | None = None,
) -> torch.Tensor:
    """Images (any accepted form) -> ``(B, 3, S, S)`` pixel values in ``dtype``.

    ``backend``: the normalisation kernel resolved at set-up (``kernels.dispatch``).
    """
    arrays = [fit_geometry(_rgb(index, raw, cfg), cfg) for index, raw in enumerate(images)]
    return _normalise(torch.from_numpy(np.stack(arrays)), cfg, dtype, backend)  # from (B, S, S, 3) uint8
