"""vLLM's multimodal processing for LLaVA-NeXT (``anyres``), with our own preprocessing.

Each image becomes its base tile plus the tiles of its grid (``llava_model.anyres``),
all images of a request in one ``(tiles, 3, S, S)`` batch (``pixel_values``, split per
image by ``num_tiles``), with each image's (height, width) in ``image_sizes``. Its
``<image>`` token is replaced by as many image tokens as that size costs, computed here
from the size, before the engine runs.
"""

from collections.abc import Mapping
from functools import cached_property

import torch
from transformers import BatchFeature, LlavaNextConfig
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageProcessorItems

from llava_model.anyres import AnyresLayout
from llava_model.image_processing import ImageProcessingConfig, preprocess_anyres
from llava_model.processing import (
    LlavaDummyInputsBuilder,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    processor_options,
)


def anyres_image_config(raw: Mapping[str, object], config) -> ImageProcessingConfig:
    """The preprocessing settings of a LLaVA-NeXT checkpoint's ``preprocessor_config.json``.

    The base image is resized straight to the tile side, so the aspect mode is ``resize``
    whatever the file says (its ``do_pad`` pads batches to equal tile counts, not images
    to squares). Tiles are the tower's input side: a ``shortest_edge`` other than that
    (which would zoom into every tile) is refused.
    """
    side = config.vision_config.image_size
    size = raw.get("size") or {}
    shortest = size.get("shortest_edge", side) if isinstance(size, dict) else size
    if shortest != side:
        raise ValueError(
            f"preprocessor size {size} differs from the vision tower's image size {side}; "
            "LLaVA-NeXT tiles are resized to the tower's side"
        )
    return ImageProcessingConfig.from_hf_dict(raw, image_size=side, aspect_mode="resize")


class LlavaNextProcessingInfo(LlavaProcessingInfo):
    def get_hf_config(self) -> LlavaNextConfig:
        return self.ctx.get_hf_config(LlavaNextConfig)

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"images_kwargs": set()}

    @cached_property
    def layout(self) -> AnyresLayout:
        return AnyresLayout.from_config(self.get_hf_config())

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.layout.most_tokens()[0]}

    def image_config(self, aspect_mode: str | None = None) -> ImageProcessingConfig:
        if "_anyres_config" not in self.__dict__:
            self.__dict__["_anyres_config"] = anyres_image_config(
                self.ctx.get_hf_image_processor_config(), self.get_hf_config()
            )
        return self.__dict__["_anyres_config"]


class LlavaNextDummyInputsBuilder(LlavaDummyInputsBuilder):
    """Images of the size that costs the most tokens, for vLLM's memory profiling."""

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        height, width = self.info.layout.most_tokens()[1]
        return {
            "image": self._get_dummy_images(
                width=width,
                height=height,
                num_images=mm_counts.get("image", 0),
                overrides=(mm_options or {}).get("image"),
            )
        }


class LlavaNextMultiModalProcessor(LlavaMultiModalProcessor):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        processor_options(self.info.ctx.get_merged_mm_kwargs(hf_kwargs), supported=set())
        images = hf_data.get("images") or []
        if not images:
            return BatchFeature()
        pixel_values, counts, sizes = preprocess_anyres(
            images,
            self.info.image_config(),
            self.info.layout.pinpoints,
            dtype=self.info.model_dtype,
            backend=self.preprocess_backend,
        )
        return BatchFeature(
            {
                "pixel_values": pixel_values,
                "image_sizes": torch.tensor(sizes, dtype=torch.long),
                "num_tiles": torch.tensor(counts, dtype=torch.long),
            }
        )

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        counts = hf_inputs.get("num_tiles", torch.empty(0, dtype=torch.long))
        return {
            "pixel_values": MultiModalFieldConfig.flat_from_sizes("image", counts),
            "image_sizes": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "num_tiles": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            "image_embeds": MultiModalFieldConfig.batched("image"),
        }

    def _image_tokens(self, images: ImageProcessorItems, item_idx: int, out_mm_kwargs: MultiModalKwargsItems) -> int:
        processed = out_mm_kwargs.get("image", [None] * (item_idx + 1))[item_idx]
        if processed is not None:  # the size the image had when it was tiled (after EXIF orientation)
            height, width = processed["image_sizes"].data.tolist()
        else:
            size = images.get_image_size(item_idx)
            height, width = size.height, size.width
        return self.info.layout.tokens(height, width)
