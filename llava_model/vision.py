"""The CLIP vision tower, built only up to the deepest layer LLaVA reads.

``vision_feature_layer`` follows the transformers convention: hidden state 0 is the
embedding output (after ``pre_layrnorm``) and hidden state ``i`` is the output of
encoder layer ``i``; negative indices count from the full tower's end, so ``-2`` is
the penultimate layer and ``-1`` the last (never the post-layernorm output).
"""

from collections.abc import Sequence

import torch
from torch import nn


def feature_layers(config) -> list[int]:
    layer = config.vision_feature_layer
    layers = [layer] if isinstance(layer, int) else list(layer)
    if not layers or not all(isinstance(i, int) for i in layers):
        raise ValueError(f"vision_feature_layer must be an int or a list of ints, got {layer!r}")
    return layers


def absolute_layer(index: int, num_layers: int) -> int:
    """Hidden-state index in ``0..num_layers`` for a signed feature layer."""
    absolute = num_layers + 1 + index if index < 0 else index
    if not 0 <= absolute <= num_layers:
        raise ValueError(f"vision feature layer {index} is outside a {num_layers}-layer tower")
    return absolute


def layers_to_build(config) -> int:
    total = config.vision_config.num_hidden_layers
    return max(absolute_layer(i, total) for i in feature_layers(config))


def num_image_tokens(config) -> int:
    """Image tokens per image, from the vision config (never ``image_seq_length``)."""
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    strategy = config.vision_feature_select_strategy
    if strategy == "default":
        return patches
    if strategy == "full":
        return patches + 1
    raise ValueError(f"vision_feature_select_strategy {strategy!r} is not 'default' or 'full'")


def build_vision_tower(config, quant_config=None, prefix: str = "") -> nn.Module:
    from transformers import CLIPVisionConfig
    from vllm.model_executor.models.clip import CLIPVisionModel

    if not isinstance(config.vision_config, CLIPVisionConfig):
        raise NotImplementedError(
            f"vision tower {type(config.vision_config).__name__} is not supported; "
            "only CLIP vision towers are (unset VLLM_PLUGINS' llava_model to use vLLM's own class)"
        )
    return CLIPVisionModel(
        config.vision_config,
        quant_config=quant_config,
        num_hidden_layers_override=layers_to_build(config),
        require_post_norm=False,
        prefix=prefix,
    )


def extract_features(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    layers: Sequence[int],
    strategy: str,
    total_layers: int,
) -> torch.Tensor:
    """(B, 3, S, S) pixels -> (B, tokens, vision_hidden * len(layers)) features."""
    vit = tower.vision_model
    wanted = [absolute_layer(i, total_layers) for i in layers]
    hidden = vit.pre_layrnorm(vit.embeddings(pixel_values.to(tower.dtype)))  # (B, 1 + P, D)
    states = {0: hidden}
    for depth, layer in enumerate(vit.encoder.layers, start=1):
        hidden = layer(hidden)
        states[depth] = hidden
    features = torch.cat([states[i] for i in wanted], dim=-1)  # (B, 1 + P, D * L)
    if strategy == "default":
        features = features[:, 1:]
    return features
