"""Our LLaVA-NeXT (LLaVA-1.6) model for vLLM's engine: LLaVA with ``anyres`` tiling.

The vision tower, projector and LLM are LLaVA's (``llava_model.model``); what NeXT adds
is the tiling (``llava_model.anyres``) and one learned ``image_newline`` vector. Every
tile of every image in the engine's batch (base images and grid tiles, across requests)
goes through the tower and projector as one batch; the result is then split per image
and packed: base tile, unpadded feature map, a newline after each row.
"""

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.multimodal import MULTIMODAL_REGISTRY

from llava_model.anyres import AnyresLayout, pack_features
from llava_model.model import LlavaForConditionalGeneration
from llava_model.next_processing import (
    LlavaNextDummyInputsBuilder,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
)


def _sizes(image_sizes: object) -> list[tuple[int, int]]:
    """Each image's (height, width) from the batched field: a (N, 2) tensor or a list of (2,)."""
    if isinstance(image_sizes, torch.Tensor):
        return [tuple(map(int, size)) for size in image_sizes.reshape(-1, 2).tolist()]
    return [tuple(map(int, torch.as_tensor(size).tolist())) for size in image_sizes]


@MULTIMODAL_REGISTRY.register_processor(
    LlavaNextMultiModalProcessor,
    info=LlavaNextProcessingInfo,
    dummy_inputs=LlavaNextDummyInputsBuilder,
)
class LlavaNextForConditionalGeneration(LlavaForConditionalGeneration):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.layout = AnyresLayout.from_config(self.config)
        self.image_newline = nn.Parameter(torch.empty(self.config.text_config.hidden_size))

    def embed_multimodal(self, **kwargs: object):
        pixel_values = kwargs.pop("pixel_values", None)
        image_sizes = kwargs.pop("image_sizes", None)
        kwargs.pop("num_tiles", None)
        if pixel_values is None:
            return super().embed_multimodal(**kwargs)  # image_embeds, or nothing
        if not isinstance(pixel_values, torch.Tensor):  # tiles of several requests, not yet joined
            pixel_values = torch.cat(list(pixel_values))
        sizes = _sizes(image_sizes)
        features = self.encode_images(pixel_values)  # (all tiles, per_side ** 2, hidden)
        packed, start = [], 0
        for height, width in sizes:
            grid = self.layout.grid(height, width)
            count = 1 + grid[0] * grid[1]
            tiles = features[start : start + count]
            start += count
            packed.append(pack_features(tiles[0], tiles[1:], height, width, grid, self.image_newline))
        if start != features.shape[0]:
            raise ValueError(
                f"{features.shape[0]} tiles were given for images of sizes {sizes}, which make {start}"
            )
        return packed
