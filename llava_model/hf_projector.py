"""Projector types for transformers' LLaVA, which itself only builds ``mlp2x_gelu``.

The original LLaVA repo also trains a single ``linear`` projector (v1) and an
``identity`` one. ``replace_hf_projector`` swaps the module of a transformers
``LlavaForConditionalGeneration`` so those checkpoints can be trained and used as
references with the same parameter names (``linear_1``) the Hub layout uses.
"""

import torch
from torch import nn

PROJECTOR_TYPES = ("mlp2x_gelu", "linear", "identity")


class LinearProjector(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_1(image_features)


class IdentityProjector(nn.Module):
    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return image_features


def projector_type_of(config) -> str:
    """The projector type a LLaVA config asks for (``mlp2x_gelu`` when unset)."""
    kind = getattr(config, "projector_type", None) or "mlp2x_gelu"
    if kind not in PROJECTOR_TYPES:
        raise ValueError(f"projector_type {kind!r} is not one of {PROJECTOR_TYPES}")
    return kind


def replace_hf_projector(model, projector_type: str) -> None:
    """Give a transformers LLaVA model the projector ``projector_type`` names."""
    config = model.config
    config.projector_type = projector_type
    if projector_type == "mlp2x_gelu":
        return
    inner = model.model
    old = inner.multi_modal_projector
    in_features = old.linear_1.in_features
    out_features = config.text_config.hidden_size
    if projector_type == "linear":
        new = LinearProjector(in_features, out_features, bias=config.multimodal_projector_bias)
        new.to(dtype=old.linear_1.weight.dtype)
        with torch.no_grad():
            new.linear_1.weight.copy_(old.linear_1.weight)
            if new.linear_1.bias is not None:
                new.linear_1.bias.copy_(old.linear_1.bias)
    elif projector_type == "identity":
        if in_features != out_features:
            raise ValueError(
                f"identity projector needs equal sizes, got vision {in_features} and text {out_features}"
            )
        new = IdentityProjector()
    else:
        raise ValueError(f"projector_type {projector_type!r} is not one of {PROJECTOR_TYPES}")
    inner.multi_modal_projector = new
