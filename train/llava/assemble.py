"""Assemble a LLaVA from a local CLIP vision checkpoint, a local LLM and a projector type.

As LLaVA does before stage 1: the vision tower and the language model keep their
pretrained weights, the projector starts from a seeded random init, and the tokenizer
gains ``<image>`` (and ``<pad>`` when it has no padding token) with the embedding
matrix resized to match (new rows start at the mean embedding).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llava_model.chat_format import IMAGE


@dataclass(frozen=True)
class AssembleConfig:
    vision: str  # CLIP checkpoint dir (CLIPModel or CLIPVisionModel)
    llm: str  # causal LM checkpoint dir with its tokenizer
    projector_type: str = "mlp2x_gelu"  # mlp2x_gelu | linear | identity
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"  # default drops CLS, full keeps it
    aspect_mode: str = "pad"  # pad | crop | resize (image preprocessing, as the server does it)
    pad_vocab_to_multiple_of: int = 64
    seed: int = 0


def _add_tokens(tokenizer) -> None:
    if IMAGE not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})


def image_processor_config(vision_dir: str, image_size: int, aspect_mode: str) -> dict:
    """The CLIP checkpoint's preprocessor config (or CLIP's defaults) with LLaVA's aspect mode."""
    from llava_model.image_processing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    path = Path(vision_dir) / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size}, "do_resize": True, "do_center_crop": True,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": 3,
    }
    cfg["image_aspect_ratio"] = aspect_mode
    cfg["do_pad"] = aspect_mode == "pad"
    if aspect_mode == "pad":
        cfg["image_processor_type"] = "LlavaImageProcessor"
    return cfg


def assemble(cfg: AssembleConfig):
    """(model, tokenizer, processor config dict): a transformers LLaVA in fp32."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPVisionModel,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    from llava_model.hf_projector import replace_hf_projector

    vision = CLIPVisionModel.from_pretrained(cfg.vision, dtype=torch.float32)
    llm = AutoModelForCausalLM.from_pretrained(cfg.llm, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(cfg.llm)
    _add_tokens(tokenizer)
    if len(tokenizer) > llm.get_input_embeddings().num_embeddings:
        llm.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=cfg.pad_vocab_to_multiple_of)
    text_config = llm.config
    text_config.pad_token_id = tokenizer.pad_token_id
    config = LlavaConfig(
        vision_config=vision.config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = llm.model
    model.lm_head = llm.lm_head
    torch.manual_seed(cfg.seed)
    model.model.multi_modal_projector = LlavaMultiModalProjector(config)
    replace_hf_projector(model, cfg.projector_type)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.language_model.get_input_embeddings().weight
    model.config.pad_token_id = tokenizer.pad_token_id
    processor = image_processor_config(cfg.vision, vision.config.image_size, cfg.aspect_mode)
    return model, tokenizer, processor
