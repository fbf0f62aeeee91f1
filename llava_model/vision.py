"""The vision tower (CLIP or SigLIP), built only up to the deepest layer LLaVA reads.

``vision_feature_layer`` follows the transformers convention: hidden state 0 is the
embedding output (after CLIP's ``pre_layrnorm``; SigLIP has none) and hidden state
``i`` is the output of encoder layer ``i``; negative indices count from the full
tower's end, so ``-2`` is the penultimate layer and ``-1`` the last (never the
post-layernorm output, nor SigLIP's pooling head).

CLIP's tokens are a class token then the patches; SigLIP's are the patches only.
``vision_feature_select_strategy`` ``default`` drops the first token whichever tower
it is (as transformers does), ``full`` keeps them all.
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


# ``vision_config.model_type`` of the towers we build -> whether its tokens start with a class token
TOWERS = {"clip_vision_model": True, "siglip_vision_model": False}


def tower_kind(vision_config) -> str:
    kind = getattr(vision_config, "model_type", "")
    if kind not in TOWERS:
        raise NotImplementedError(
            f"vision tower {kind or type(vision_config).__name__!r} is not supported; "
            f"supported: {', '.join(TOWERS)} (unset VLLM_PLUGINS' llava_model to use vLLM's own class)"
        )
    return kind


def num_image_tokens(config) -> int:
    """Image tokens per image, from the vision config (never ``image_seq_length``)."""
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + TOWERS[tower_kind(vision)]
    strategy = config.vision_feature_select_strategy
    if strategy == "default":
        return tokens - 1
    if strategy == "full":
        return tokens
    raise ValueError(f"vision_feature_select_strategy {strategy!r} is not 'default' or 'full'")


def build_vision_tower(config, quant_config=None, prefix: str = "") -> nn.Module:
    kind = tower_kind(config.vision_config)
    common = {
        "quant_config": quant_config,
        "num_hidden_layers_override": layers_to_build(config),
        "require_post_norm": False,
        "prefix": prefix,
    }
    if kind == "siglip_vision_model":
        from vllm.model_executor.models.siglip import SiglipVisionModel

        # the pooling head is never read by LLaVA: not built, its weights skipped
        return SiglipVisionModel(config.vision_config, use_head=False, **common)
    from vllm.model_executor.models.clip import CLIPVisionModel

    return CLIPVisionModel(config.vision_config, **common)


def extract_features(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    layers: Sequence[int],
    strategy: str,
    total_layers: int,
) -> torch.Tensor:
    """(B, 3, S, S) pixels -> (B, tokens, vision_hidden * len(layers)) features.

    Only ``layers`` (signed, see ``absolute_layer``) are kept; ``strategy`` ``default``
    drops the first token (CLIP's class token)."""
    vit = tower.vision_model
    wanted = [absolute_layer(i, total_layers) for i in layers]
    hidden = vit.embeddings(pixel_values.to(tower.dtype))  # (B, [1 +] P, D)
    pre_norm = getattr(vit, "pre_layrnorm", None)  # CLIP's; SigLIP has none
    if pre_norm is not None:
        hidden = pre_norm(hidden)
    states = {0: hidden}
    for depth, layer in enumerate(vit.encoder.layers, start=1):
        hidden = layer(hidden)
        if isinstance(hidden, tuple):  # SigLIP's layers return (hidden, None)
            hidden = hidden[0]
        states[depth] = hidden
    features = torch.cat([states[i] for i in wanted], dim=-1)  # (B, tokens, D * L)
    if strategy == "default":
        features = features[:, 1:]
    return features
