"""Test images made in code: photo-like (smooth gradients and shapes) and noise."""

import numpy as np
from PIL import Image, ImageDraw


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / max(width, 1) * 3.1 + seed),
            128 + 100 * np.cos(y / max(height, 1) * 2.3),
            128 + 60 * np.sin((x + y) / max(width + height, 1) * 5.0),
        ],
        axis=-1,
    )
    base += rng.normal(0, 6, base.shape)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.integers(0, max(width, 2)), rng.integers(0, max(height, 2))
        size = int(rng.integers(1, max(min(width, height) // 2, 2)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x0, y0, x0 + size, y0 + size], fill=color)
    return image


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
