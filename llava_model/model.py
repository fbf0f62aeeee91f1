"""Our LLaVA model for vLLM's engine: CLIP vision tower -> projector -> any LLM.

Registered for the ``LlavaForConditionalGeneration`` architecture by the plugin in
``llava_model/__init__.py``. The module tree mirrors the llava-hf Hub layout
(``vision_tower.vision_model``, ``multi_modal_projector``, ``language_model``), so
loading is a rename (``llava_model.weights``) followed by a completeness check.
"""

from collections.abc import Iterable
from typing import Annotated, Literal

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsLoRA,
    SupportsMultiModal,
    SupportsPP,
)
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors
from vllm.utils.tensor_schema import TensorSchema, TensorShape

from kernels.dispatch import resolve_backends
from llava_model.completeness import missing_tensors, record_names, refuse_quantised_tower
from llava_model.processing import LlavaDummyInputsBuilder, LlavaMultiModalProcessor, LlavaProcessingInfo
from llava_model.projector import LlavaProjector
from llava_model.vision import build_vision_tower, extract_features, feature_layers
from llava_model.weights import to_hub_layout


class PixelInputs(TensorSchema):
    """Dimensions: bn = images in the batch, s = the vision tower's image size."""

    type: Literal["pixel_values"] = "pixel_values"
    pixel_values: Annotated[torch.Tensor, TensorShape("bn", 3, "s", "s")]


class EmbeddingInputs(TensorSchema):
    """Dimensions: bn = images, ifs = image tokens per image, hs = LLM hidden size."""

    type: Literal["image_embeds"] = "image_embeds"
    data: Annotated[torch.Tensor, TensorShape("bn", "ifs", "hs")]


class IncompleteCheckpointError(ValueError):
    """The checkpoint left model parameters unfilled."""


@MULTIMODAL_REGISTRY.register_processor(
    LlavaMultiModalProcessor,
    info=LlavaProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class LlavaForConditionalGeneration(nn.Module, SupportsMultiModal, SupportsPP, SupportsLoRA):
    # Names of LoRA adapters that PEFT saved for transformers 5's LlavaForConditionalGeneration
    # (``model.language_model.layers...``) -> this module tree; vLLM's LoRA loader applies it
    # (checkpoints are renamed by ``llava_model.weights`` instead).
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "model.vision_tower.": "vision_tower.",
            "model.multi_modal_projector.": "multi_modal_projector.",
            "lm_head.": "language_model.lm_head.",
        }
    )
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return "<image>"
        raise ValueError(f"modality {modality!r} is not supported; LLaVA takes images only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        self.feature_layers = feature_layers(config)
        self.configure_mm_token_handling(
            vocab_size=config.text_config.vocab_size,
            mm_token_ids=[config.image_token_index],
        )
        # LLAVA_KERNELS is checked here, at engine start, never per request.
        backends = resolve_backends(
            torch.device(vllm_config.device_config.device_type), vllm_config.model_config.dtype
        )
        with self._mark_tower_model(vllm_config, "image"):
            # Never quantised: a quantised checkpoint's method (``vllm_config.quant_config``)
            # applies to the LLM only, whatever its ignore list says (``refuse_quantised_tower``).
            self.vision_tower = build_vision_tower(config, None, prefix=maybe_prefix(prefix, "vision_tower"))
            in_features = config.vision_config.hidden_size * len(self.feature_layers)
            self.multi_modal_projector = LlavaProjector(config, in_features, backend=backends["projector"])
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    # ---- images -> embeddings ---------------------------------------------------------
    def _parse_image_input(self, **kwargs: object) -> PixelInputs | EmbeddingInputs | None:
        pixel_values = kwargs.pop("pixel_values", None)
        image_embeds = kwargs.pop("image_embeds", None)
        if pixel_values is not None:
            side = self.config.vision_config.image_size
            return PixelInputs(pixel_values=pixel_values, resolve_bindings={"s": side})
        if image_embeds is not None:
            return EmbeddingInputs(data=image_embeds)
        return None

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, image tokens, LLM hidden): all images in one batch."""
        features = extract_features(
            self.vision_tower,
            pixel_values,
            self.feature_layers,
            self.config.vision_feature_select_strategy,
            self.config.vision_config.num_hidden_layers,
        )
        return self.multi_modal_projector(features)

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        image_input = self._parse_image_input(**kwargs)
        if image_input is None:
            return []
        if image_input["type"] == "image_embeds":
            return image_input["data"]
        return self.encode_images(image_input["pixel_values"])

    # ---- language model -----------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    # ---- weights ------------------------------------------------------------------------
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load any known layout; raise if a parameter, or one shard of a packed
        parameter (``llava_model.completeness``), is left unfilled.

        Unknown tensor names raise inside vLLM's loader. Vision layers beyond the
        deepest feature layer and the unused ``post_layernorm`` are skipped on purpose.
        """
        seen: set[str] = set()
        stream = refuse_quantised_tower(record_names(to_hub_layout(weights), seen))
        loaded = AutoWeightsLoader(self).load_weights(stream)
        params = [name for name, _ in self.named_parameters()]
        missing = missing_tensors(params, loaded, seen, self.packed_modules_mapping)
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise IncompleteCheckpointError(
                f"checkpoint left {len(missing)} tensor(s) unfilled: {shown}"
            )
        self.multi_modal_projector.prepare()
        return loaded

    def get_mm_mapping(self) -> MultiModelKeys:
        return MultiModelKeys.from_string_field(
            language_model="language_model",
            connector="multi_modal_projector",
            tower_model="vision_tower",
        )
