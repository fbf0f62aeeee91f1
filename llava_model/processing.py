"""vLLM's multimodal processing for LLaVA, with our own image preprocessing.

vLLM tokenizes the prompt itself; this module turns the request's images into
pixel batches (``llava_model.image_processing``) and replaces each ``<image>``
token with as many image tokens as the vision tower yields per image.
"""

from collections.abc import Mapping, Sequence
from functools import cached_property

import torch
from transformers import BatchFeature, LlavaConfig
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems, MultiModalDataItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from kernels.dispatch import resolve_backends
from llava_model.image_processing import ImageProcessingConfig, preprocess_images
from llava_model.vision import num_image_tokens

# Per-request options (``mm_processor_kwargs``) our processor understands.
PROCESSOR_KWARGS = {"image_aspect_ratio"}
_IGNORED_KWARGS = {"return_tensors", "truncation"}


class LlavaProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> LlavaConfig:
        return self.ctx.get_hf_config(LlavaConfig)

    def get_hf_processor(self, **kwargs: object):
        raise NotImplementedError("this model preprocesses images itself; it has no HF processor")

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"images_kwargs": set(PROCESSOR_KWARGS)}

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.num_image_tokens}

    @cached_property
    def num_image_tokens(self) -> int:
        return num_image_tokens(self.get_hf_config())

    @cached_property
    def image_token_id(self) -> int:
        return int(self.get_hf_config().image_token_index)

    @cached_property
    def image_token(self) -> str:
        return self.get_tokenizer().convert_ids_to_tokens(self.image_token_id)

    def image_config(self, aspect_mode: str | None = None) -> ImageProcessingConfig:
        """The preprocessing settings (read once per aspect mode)."""
        cache = self.__dict__.setdefault("_image_configs", {})
        if aspect_mode not in cache:
            cache[aspect_mode] = ImageProcessingConfig.from_hf_dict(
                self.ctx.get_hf_image_processor_config(),
                image_size=self.get_hf_config().vision_config.image_size,
                aspect_mode=aspect_mode,
            )
        return cache[aspect_mode]

    @property
    def model_dtype(self) -> torch.dtype:
        return self.ctx.model_config.dtype

    def preprocess_backend(self) -> str:
        """The normalisation kernel from ``LLAVA_KERNELS``; raises if it cannot run."""
        from vllm.platforms import current_platform

        device = torch.device(current_platform.device_type or "cpu")
        return resolve_backends(device, self.model_dtype)["preprocess"]


class LlavaDummyInputsBuilder(BaseDummyInputsBuilder[LlavaProcessingInfo]):
    """Inputs with the most image tokens, for vLLM's memory profiling."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        side = self.info.get_hf_config().vision_config.image_size
        return {
            "image": self._get_dummy_images(
                width=side,
                height=side,
                num_images=mm_counts.get("image", 0),
                overrides=(mm_options or {}).get("image"),
            )
        }


def processor_options(kwargs: Mapping[str, object], supported: set[str] = PROCESSOR_KWARGS) -> dict[str, object]:
    """The per-request options among ``kwargs``; an option not in ``supported`` raises."""
    flat = {k: v for k, v in kwargs.items() if k != "images_kwargs"}
    flat.update(kwargs.get("images_kwargs") or {})
    unknown = set(flat) - supported - _IGNORED_KWARGS
    if unknown:
        raise ValueError(
            f"unknown image processing option(s) {sorted(unknown)}; supported: {sorted(supported) or 'none'}"
        )
    return {k: v for k, v in flat.items() if k in supported}


class LlavaMultiModalProcessor(BaseMultiModalProcessor[LlavaProcessingInfo]):
    def __init__(self, info: LlavaProcessingInfo, dummy_inputs: LlavaDummyInputsBuilder) -> None:
        super().__init__(info, dummy_inputs)
        # Resolved once, when vLLM sets the processor up at start-up, never per request.
        self.preprocess_backend = info.preprocess_backend()

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        options = processor_options(self.info.ctx.get_merged_mm_kwargs(hf_kwargs))
        images = hf_data.get("images") or []
        if not images:
            return BatchFeature()
        cfg = self.info.image_config(options.get("image_aspect_ratio"))
        pixel_values = preprocess_images(images, cfg, dtype=self.info.model_dtype, backend=self.preprocess_backend)
        return BatchFeature({"pixel_values": pixel_values})

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        return {
            "pixel_values": MultiModalFieldConfig.batched("image"),
            "image_embeds": MultiModalFieldConfig.batched("image"),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        token_id = self.info.image_token_id

        def replacement(item_idx: int) -> list[int]:
            images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
            if isinstance(images, ImageEmbeddingItems):
                return [token_id] * images.get_feature_size(item_idx)
            return [token_id] * self._image_tokens(images, item_idx, out_mm_kwargs)

        return [PromptReplacement(modality="image", target=[token_id], replacement=replacement)]

    def _image_tokens(self, images: ImageProcessorItems, item_idx: int, out_mm_kwargs: MultiModalKwargsItems) -> int:
        """Image tokens for image ``item_idx`` (LLaVA-1.5: the same for every image)."""
        return self.info.num_image_tokens

    def _maybe_apply_prompt_updates(self, mm_items, mm_res):
        placeholders = mm_res.prompt_ids.count(self.info.image_token_id)
        images = mm_items.get_all_counts().get("image", 0)
        if placeholders != images:
            raise ValueError(
                f"the prompt has {placeholders} {self.info.image_token} placeholder(s) "
                f"but {images} image(s) were given; they must match"
            )
        return super()._maybe_apply_prompt_updates(mm_items, mm_res)
