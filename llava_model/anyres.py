"""LLaVA-NeXT's ``anyres``: how an image of any size becomes a grid of tiles, and how
many image tokens it then costs.

Each image is seen twice by the vision tower: once whole, squeezed to one tile (the
*base* image), and once at a higher resolution, split into tiles of the tower's input
side. The resolution is one of the checkpoint's ``image_grid_pinpoints`` (height, width
pairs, multiples of the tile side), the one that keeps most of the image's pixels once
the image is scaled to fit it, then the one that wastes least. The image is scaled to
fit it with its aspect kept, centred on a black canvas of that size and cut into tiles,
row by row.

After the tower and projector, the tiles' features are laid out as one feature map
(``grid rows x n`` by ``grid cols x n``, n features per tile side), the rows or columns
that only saw the canvas' padding are cut away, and one learned ``image_newline``
vector ends every row. An image's tokens are then the base tile's, followed by
``rows x (cols + 1)``: a number that depends on the image's size, so it is computed
here, from the size alone, before the engine runs.

All sizes are (height, width), as transformers' LLaVA-NeXT code writes them.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def is_anyres(config) -> bool:
    """Whether a model config (transformers object or config.json dict) is LLaVA-NeXT's."""
    if isinstance(config, dict):
        return config.get("model_type") == "llava_next"
    return getattr(config, "model_type", None) == "llava_next"


def check_pinpoints(pinpoints: object, tile: int) -> list[tuple[int, int]]:
    """``image_grid_pinpoints`` as (height, width) pairs, each a positive multiple of ``tile``."""
    if not isinstance(pinpoints, (list, tuple)) or not pinpoints:
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of [height, width], got {pinpoints!r}")
    pairs = []
    for point in pinpoints:
        if (
            not isinstance(point, (list, tuple))
            or len(point) != 2
            or not all(isinstance(v, int) and v > 0 and v % tile == 0 for v in point)
        ):
            raise ValueError(
                f"image_grid_pinpoints entry {point!r} is not a [height, width] pair of positive "
                f"multiples of the vision tower's image size {tile}"
            )
        pairs.append((int(point[0]), int(point[1])))
    return pairs


def best_resolution(height: int, width: int, pinpoints: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The pinpoint an image of ``height`` x ``width`` is tiled at: most of its pixels kept
    once it is scaled to fit, then least area wasted; the first such in the list."""
    best, best_key = None, None
    for target_h, target_w in pinpoints:
        scale = min(target_w / width, target_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        key = (kept, -(target_h * target_w - kept))
        if best_key is None or key > best_key:
            best, best_key = (target_h, target_w), key
    return best


def fit_within(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The size of the image once scaled, aspect kept, to fit ``target_h`` x ``target_w``
    (the side that limits the scale fills the target; the other is rounded up)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def grid_shape(height: int, width: int, pinpoints: Sequence[tuple[int, int]], tile: int) -> tuple[int, int]:
    """(rows, cols) of tiles an image is cut into."""
    target_h, target_w = best_resolution(height, width, pinpoints)
    return target_h // tile, target_w // tile


def num_tiles(height: int, width: int, pinpoints: Sequence[tuple[int, int]], tile: int) -> int:
    """Tower inputs for one image: the base image and its tiles."""
    rows, cols = grid_shape(height, width, pinpoints, tile)
    return 1 + rows * cols


def kept_window(height: int, width: int, map_h: int, map_w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the feature map's part that saw the image, not the
    padding around it: the map is ``map_h`` x ``map_w`` features for the whole canvas."""
    if width / height > map_w / map_h:  # wider than the canvas: padding above and below
        shown = int(round(height * (map_w / width), 7))
        pad = (map_h - shown) // 2
        return pad, map_h - pad, 0, map_w
    shown = int(round(width * (map_h / height), 7))
    pad = (map_w - shown) // 2
    return 0, map_h, pad, map_w - pad


def num_image_tokens(height: int, width: int, pinpoints, tile: int, per_side: int, base_tokens: int) -> int:
    """Image tokens for an image of ``height`` x ``width``: the base tile's ``base_tokens``
    and the unpadded feature map with one newline per row."""
    rows, cols = grid_shape(height, width, pinpoints, tile)
    top, bottom, left, right = kept_window(height, width, rows * per_side, cols * per_side)
    return base_tokens + (bottom - top) * (right - left + 1)


def max_image_tokens(pinpoints, tile: int, per_side: int, base_tokens: int) -> tuple[int, tuple[int, int]]:
    """The most tokens any image can cost, and an image size (height, width) that costs it.

    An image exactly the size of a pinpoint is tiled at it (nothing is lost, nothing is
    wasted) with no padding, so it keeps the whole map; no image of that grid keeps more."""
    best = max(
        ((num_image_tokens(h, w, pinpoints, tile, per_side, base_tokens), (h, w)) for h, w in pinpoints),
        key=lambda item: item[0],
    )
    return best


def pack_features(
    base: torch.Tensor,
    tiles: torch.Tensor,
    height: int,
    width: int,
    grid: tuple[int, int],
    newline: torch.Tensor,
) -> torch.Tensor:
    """One image's embeddings: ``base`` (n*n, D), then the ``tiles`` (rows*cols, n*n, D)
    laid out as one map, unpadded, each row ended by ``newline`` (D,)."""
    rows, cols = grid
    per_tile, dim = tiles.shape[1], tiles.shape[2]
    n = math.isqrt(per_tile)
    if n * n != per_tile or tiles.shape[0] != rows * cols:
        raise ValueError(
            f"{tiles.shape[0]} tile(s) of {per_tile} features cannot form a {rows}x{cols} grid of square tiles"
        )
    feature_map = tiles.view(rows, cols, n, n, dim).permute(0, 2, 1, 3, 4).reshape(rows * n, cols * n, dim)
    top, bottom, left, right = kept_window(height, width, rows * n, cols * n)
    feature_map = feature_map[top:bottom, left:right]
    ends = newline.to(feature_map.dtype).expand(feature_map.shape[0], 1, dim)
    return torch.cat([base, torch.cat([feature_map, ends], dim=1).reshape(-1, dim)], dim=0)


@dataclass(frozen=True)
class AnyresLayout:
    """One checkpoint's anyres settings: everything the processor and the model need."""

    pinpoints: tuple[tuple[int, int], ...]
    tile: int  # the vision tower's input side
    per_side: int  # features along a tile's side
    base_tokens: int  # the base image's tokens (per_side ** 2)

    @classmethod
    def from_config(cls, config) -> "AnyresLayout":
        from llava_model.vision import num_image_tokens as tile_tokens

        vision = config.vision_config
        tile, per_side = vision.image_size, vision.image_size // vision.patch_size
        base = tile_tokens(config)
        if base != per_side * per_side:
            raise ValueError(
                f"LLaVA-NeXT lays each tile's {per_side}x{per_side} patch features out as a grid, but this "
                f"tower and vision_feature_select_strategy {config.vision_feature_select_strategy!r} give "
                f"{base} features per tile; use 'default' with a CLIP tower"
            )
        pinpoints = check_pinpoints(getattr(config, "image_grid_pinpoints", None), tile)
        return cls(tuple(pinpoints), tile, per_side, base)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return grid_shape(height, width, self.pinpoints, self.tile)

    def tiles(self, height: int, width: int) -> int:
        return num_tiles(height, width, self.pinpoints, self.tile)

    def tokens(self, height: int, width: int) -> int:
        return num_image_tokens(height, width, self.pinpoints, self.tile, self.per_side, self.base_tokens)

    def most_tokens(self) -> tuple[int, tuple[int, int]]:
        return max_image_tokens(self.pinpoints, self.tile, self.per_side, self.base_tokens)


@dataclass(frozen=True)
class ImageTokenCount:
    """What an image costs in prompt tokens, for any of our LLaVA configs: a fixed count
    (LLaVA-1.5) or one that depends on the image's size (LLaVA-NeXT)."""

    least: int  # no image costs fewer
    layout: AnyresLayout | None = None

    @classmethod
    def for_config(cls, config) -> "ImageTokenCount":
        if is_anyres(config):
            layout = AnyresLayout.from_config(config)
            return cls(least=layout.base_tokens, layout=layout)  # a sliver of an image keeps no row
        from llava_model.vision import num_image_tokens as tile_tokens

        return cls(least=tile_tokens(config))

    def __call__(self, height: int, width: int) -> int:
        return self.least if self.layout is None else self.layout.tokens(height, width)
