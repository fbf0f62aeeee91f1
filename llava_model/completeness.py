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

Quantised checkpoints (``llava_model.quantize``): a quantised linear layer has more
tensors than ``weight`` / ``bias`` (``weight_scale``, ``input_scale``, ``weight_packed``,
...), and each shard of a packed layer brings its own, so those leaves are counted per
shard too. A quantisation method also gives every attention layer KV-cache scales
(``attn.k_scale`` ...) that vLLM sets to 1 when the checkpoint has none (no
``kv_cache_scheme``): those are optional.
"""

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch

_SHARDED_LEAVES = (
    "weight",
    "bias",
    # compressed-tensors
    "weight_scale",
    "weight_zero_point",
    "weight_packed",
    "weight_shape",
    "weight_g_idx",
    "input_scale",
    "input_zero_point",
    # GPTQ / AWQ
    "qweight",
    "qzeros",
    "scales",
    "g_idx",
)
# vLLM defaults these to 1 when the checkpoint has none
_OPTIONAL = re.compile(r"\.attn\.(q|k|v|prob)_(scale|zero_point)$")


def record_names(
    weights: Iterable[tuple[str, torch.Tensor]], seen: set[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass ``weights`` through, adding each tensor name to ``seen``."""
    for name, tensor in weights:
        seen.add(name)
        yield name, tensor


# Leaves only quantised linear layers have (a float layer has weight / bias only).
_QUANTISED_LEAVES = frozenset(_SHARDED_LEAVES) - {"weight", "bias"} | {"weight_scale_inv"}
# Modules our model always builds in floating point (``llava_model.model``).
_FLOAT_MODULES = ("vision_tower.", "multi_modal_projector.")


class QuantisedTowerError(ValueError):
    """The checkpoint quantised the vision tower or the projector, which are built unquantised."""


def refuse_quantised_tower(
    weights: Iterable[tuple[str, torch.Tensor]],
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass ``weights`` (Hub names) through; raise on a quantised tensor of the vision tower
    or the projector (a scale, packed weights, or an int8 / fp8 weight; integer buffers
    such as CLIP's ``position_ids`` are not weights and pass)."""
    for name, tensor in weights:
        if name.startswith(_FLOAT_MODULES):
            leaf = name.rpartition(".")[2]
            if leaf in _QUANTISED_LEAVES or (leaf == "weight" and tensor.element_size() == 1):
                raise QuantisedTowerError(
                    f"checkpoint tensor {name} ({tensor.dtype}) is quantised: only the language model "
                    "may be quantised; keep the vision tower and the projector in floating point "
                    "(llm-compressor: ignore 're:vision_tower.*', 're:multi_modal_projector.*')"
                )
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
        if _OPTIONAL.search(name) and name not in loaded:
            continue
        shards = shard_names(name, packed)
        if shards is None or name in seen:
            if name not in loaded:
                missing.add(name)
        else:
            missing.update(shard for shard in shards if shard not in seen)
    return sorted(missing)
