"""Checkpoint layouts: every common LLaVA naming -> the llava-hf Hub layout.

The Hub layout (the published llava-hf checkpoints) is the one our vLLM model's
module tree mirrors:

    vision_tower.vision_model.*      multi_modal_projector.linear_{1,2}.*
    language_model.model.*           language_model.lm_head.*
    image_newline                    (LLaVA-NeXT only)

Other layouts seen in the wild, all renamed by ``hub_name``:
- transformers 5 ``save_pretrained``: ``vision_tower.{embeddings,encoder,...}.*``
- transformers 5 in memory / newer saves: ``model.vision_tower.*``,
  ``model.language_model.*``, ``model.multi_modal_projector.*``, ``lm_head.*``
"""

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^model\.vision_tower\."), "vision_tower."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
    (re.compile(r"^model\.language_model\."), "language_model.model."),
    (re.compile(r"^lm_head\."), "language_model.lm_head."),
    (re.compile(r"^model\.image_newline$"), "image_newline"),  # LLaVA-NeXT's
    # A bare CLIP or SigLIP vision transformer under vision_tower (no vision_model level).
    (
        re.compile(r"^vision_tower\.(embeddings|encoder|pre_layrnorm|post_layernorm|head)\."),
        r"vision_tower.vision_model.\1.",
    ),
]


def hub_name(name: str) -> str:
    """The llava-hf Hub name of a tensor saved under any known layout."""
    for pattern, replacement in _RULES:
        name = pattern.sub(replacement, name)
    return name


def to_hub_layout(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in weights:
        yield hub_name(name), tensor


def save_hub_layout(model, out_dir: str | Path, *, dtype: torch.dtype | None = None) -> None:
    """Save a transformers LLaVA model's config and weights in the Hub layout."""
    save_hub_state(model.state_dict(), model.config, out_dir, dtype=dtype)


def save_hub_state(
    state_dict: dict[str, torch.Tensor], config, out_dir: str | Path, *, dtype: torch.dtype | None = None
) -> None:
    """Save a LLaVA state dict (any known layout) and its config in the Hub layout."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for name, tensor in state_dict.items():
        key = hub_name(name)
        # Tied tensors share storage; keep the first name only, as HF does.
        ptr = tensor.data_ptr()
        if ptr in seen and tensor.numel() > 0:
            continue
        seen[ptr] = key
        t = tensor.detach()
        state[key] = (t.to(dtype) if dtype is not None and t.is_floating_point() else t).contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    from llava_model import ARCHITECTURE, NEXT_ARCHITECTURE
    from llava_model.anyres import is_anyres

    config.architectures = [NEXT_ARCHITECTURE if is_anyres(config) else ARCHITECTURE]
    config.save_pretrained(out)
