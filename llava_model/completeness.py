"""Which checkpoint tensors a load left out, counted per shard of packed parameters.

vLLM fuses some checkpoint tensors into one parameter (``q_proj`` / ``k_proj`` /
``v_proj`` -> ``qkv_proj``, ``gate_proj`` / ``up_proj`` -> ``gate_up_proj``, in the LLM
and in the CLIP tower) and reports that parameter loaded once any ONE shard arrived.
So completeness is checked against the tensor names that actually arrived: each
``weight`` / ``bias`` of a packed parameter needs every shard's tensor, unless the
checkpoint stores the fused tensor itself. Other parameters need only vLLM's report.

Only built parameters are required: vision layers beyond the deepest feature layer and
the unused ``post_layernorm`` are never built, and a tied ``lm_head`` shares (and is
listed as) ``embed_tokens``.
"""

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

_SHARDED_LEAVES = ("weight", "bias")


def record_names(
    weights: Iterable[tuple[str, torch.Tensor]], seen: set[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass ``weights`` through, adding each tensor name to ``seen``."""
    for name, tensor in weights:
        seen.add(name)
        yield name, tensor


def shard_names(param: str, packed: Mapping[str, Sequence[str]]) -> list[str] | None:
    """Checkpoint names of a packed parameter's shards; ``None`` if it is not packed.

    ``a.qkv_proj.weight`` -> ``a.q_proj.weight``, ``a.k_proj.weight``, ``a.v_proj.weight``.
    """
    module, _, leaf = param.rpartition(".")
    parent, _, last = module.rpartition(".")
    if last not in packed or leaf not in _SHARDED_LEAVES:
        return None
    prefix = f"{parent}." if parent else ""
    return [f"{prefix}{shard}.{leaf}" for shard in packed[last]]


def missing_tensors(
    params: Iterable[str],
    loaded: set[str],
    seen: set[str],
    packed: Mapping[str, Sequence[str]],
) -> list[str]:
    """Checkpoint tensor names the model still needs, sorted.

    ``params``: the model's parameter names; ``loaded``: what vLLM's loader reported
    filled; ``seen``: the tensor names that arrived (in the model's naming).
    """
    missing: set[str] = set()
    for name in params:
        shards = shard_names(name, packed)
        if shards is None or name in seen:
            if name not in loaded:
                missing.add(name)
        else:
            missing.update(shard for shard in shards if shard not in seen)
    return sorted(missing)
