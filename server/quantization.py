"""Quantised checkpoints: which ones this server loads, decided from config.json at start-up.

Only the LLM may be quantised (``llava_model.completeness.refuse_quantised_tower``). What vLLM
0.32's CPU build runs was found by loading tiny checkpoints of each format
(``llava_model.quantize``, tests/test_quantized.py) on an AVX-512 CPU without AMX:

- compressed-tensors W8A8 int8 (per-channel or per-tensor int8 weights; int8 activations,
  dynamic per token or static per tensor): oneDNN int8 kernels, float32 / bfloat16 / float16.
  On CPUs without VNNI those saturate; ``kernels.cpu_int8`` makes the layers exact there.
- compressed-tensors W8A8 fp8 with dynamic per-token activations (per-channel or per-tensor
  fp8 weights): ``torch._scaled_mm`` on the CPU, any dtype.
- 4-bit weight-only: compressed-tensors W4A16 (``pack-quantized``), GPTQ and AWQ 4-bit:
  vLLM's CPU WNA16 kernel, bfloat16 / float16 only (float32 fails inside the kernel).

GPU only (no CPU kernel in this vLLM build, or only for CPUs with AMX): 8-bit weight-only
ints (compressed-tensors W8A16, GPTQ 8-bit), fp8 weight-only and block-quantised fp8, static
fp8 activations (its quantisation op is an empty stub in the CPU build), the ``fp8`` method
(per-tensor: the same stub; its CPU kernels need AMX), NVFP4 / MXFP4 formats.
"""

from collections.abc import Mapping
from dataclasses import dataclass

HALF = ("bfloat16", "float16")
ANY = ("float32", *HALF)

# What a CPU engine runs, by quant_method: one line each, as the error messages say it.
CPU_SUPPORTED = {
    "compressed-tensors": "W8A8 int8 (dynamic or static activations), W8A8 fp8 (dynamic activations), "
    "W4A16 (bfloat16/float16)",
    "gptq": "4-bit (bfloat16/float16)",
    "awq": "4-bit (bfloat16/float16)",
}
# Methods (or variants) vLLM runs on GPUs but not on this CPU build; a GPU engine gets them unchecked.
GPU_ONLY = {
    "fp8": "its CPU kernels need AMX (Sapphire Rapids or newer) and the fallback's fp8 quantisation op is a stub",
    "fbgemm_fp8": "no CPU kernel",
    "modelopt": "fp8, see 'fp8'",
    "modelopt_fp4": "no CPU kernel",
    "mxfp4": "no CPU kernel",
    "gptq_marlin": "Marlin kernels are CUDA only",
    "awq_marlin": "Marlin kernels are CUDA only",
}


@dataclass(frozen=True)
class QuantSupport:
    """A quantised checkpoint this server accepts."""

    method: str
    variant: str  # e.g. "W8A8 int8"
    dtypes: tuple[str, ...]  # what vLLM's kernels run it in on a CPU engine
    cpu_op: str = ""  # the op of vLLM's CPU build it needs, where only some builds have it


# vLLM's CPU wheel holds one kernel library per ISA and loads the one this CPU runs; the AVX2
# one (CPUs without AVX-512, e.g. AMD Zen 3) has no 4-bit weight-only GEMM, and a 4-bit
# checkpoint failed there at the first request, inside the engine.
WNA16_OP = "cpu_gemm_wna16"


def has_cpu_op(op: str) -> bool:
    """Whether the vLLM CPU kernel library this machine loads registers ``op``."""
    import torch
    from vllm.platforms import current_platform

    current_platform.import_kernels()
    return hasattr(torch.ops._C, op)


class UnsupportedQuantization(ValueError):
    """The message names the method and what is supported."""


def _supported_line() -> str:
    return "; ".join(f"{method}: {what}" for method, what in CPU_SUPPORTED.items())


def _gpu_only(method: str, why: str) -> UnsupportedQuantization:
    return UnsupportedQuantization(
        f"quantisation method {method!r} runs on GPUs only ({why}); a CPU engine supports {_supported_line()}"
    )


def _compressed_tensors(config: Mapping) -> QuantSupport:
    """One variant for every config group (``config_groups``), else refused."""
    groups = config.get("config_groups") or {}
    if not isinstance(groups, Mapping) or not groups:
        raise UnsupportedQuantization("compressed-tensors config has no config_groups; cannot tell its scheme")
    found = {_ct_group(group, config.get("format")) for group in groups.values()}
    if len(found) > 1:
        raise UnsupportedQuantization(
            f"compressed-tensors checkpoint mixes schemes ({', '.join(sorted(v.variant for v in found))}); "
            "one scheme for every layer is supported"
        )
    return found.pop()


def _ct_group(group, default_format) -> QuantSupport:
    if not isinstance(group, Mapping):
        raise UnsupportedQuantization(f"compressed-tensors config group {group!r} is not an object")
    weights = group.get("weights") or {}
    inputs = group.get("input_activations")
    fmt = group.get("format") or default_format
    kind, bits = weights.get("type"), weights.get("num_bits")
    strategy = weights.get("strategy")
    described = f"{kind} {bits}-bit weights ({strategy}), " + (
        "float activations" if not inputs else
        f"{inputs.get('type')} {inputs.get('num_bits')}-bit {'dynamic' if inputs.get('dynamic') else 'static'} activations"
    )
    int8_inputs = bool(inputs) and inputs.get("type") == "int" and inputs.get("num_bits") == 8
    if int8_inputs and kind == "int" and bits == 8 and strategy in ("channel", "tensor") and weights.get(
        "symmetric", True
    ):
        return QuantSupport("compressed-tensors", "W8A8 int8", ANY)
    if inputs and kind == "float" and bits == 8 and inputs.get("type") == "float":
        if strategy == "block":
            raise _gpu_only("compressed-tensors", f"{described}: block-quantised fp8 needs AMX or a GPU")
        if not inputs.get("dynamic"):
            raise _gpu_only("compressed-tensors", f"{described}: static fp8 activations")
        if strategy in ("channel", "tensor"):
            return QuantSupport("compressed-tensors", "W8A8 fp8", ANY)
    if not inputs and kind == "int" and strategy in ("channel", "group"):
        if bits == 4 and fmt == "pack-quantized":
            return QuantSupport("compressed-tensors", "W4A16", HALF, WNA16_OP)
        if bits == 8:
            raise _gpu_only("compressed-tensors", f"{described}: no CPU kernel for 8-bit weight-only")
    if not inputs and kind == "float":
        raise _gpu_only("compressed-tensors", f"{described}: no CPU kernel for fp8 weight-only")
    raise UnsupportedQuantization(
        f"compressed-tensors scheme with {described} (format {fmt!r}) is not supported; "
        f"supported: {CPU_SUPPORTED['compressed-tensors']}"
    )


def check_quantization(quant: object, *, cpu: bool) -> QuantSupport | None:
    """What a ``quantization_config`` asks for, if this server (on a CPU engine when ``cpu``)
    runs it; else ``UnsupportedQuantization`` naming the method and what is supported.
    On a GPU engine the GPU-only methods pass (unchecked here: vLLM decides)."""
    if not isinstance(quant, Mapping):
        raise UnsupportedQuantization(f"quantization_config must be an object, got {quant!r}")
    method = str(quant.get("quant_method", "")).lower().replace("compressed_tensors", "compressed-tensors")
    try:
        if method == "compressed-tensors":
            return _compressed_tensors(quant)
        if method in ("gptq", "awq"):
            bits = quant.get("bits", quant.get("w_bit"))
            if bits == 4:
                return QuantSupport(method, "4-bit", HALF, WNA16_OP)
            raise _gpu_only(method, f"{bits}-bit: the CPU kernel takes 4-bit weights only")
        if method in GPU_ONLY:
            raise _gpu_only(method, GPU_ONLY[method])
    except UnsupportedQuantization:
        if cpu:
            raise
        return QuantSupport(method, "GPU", ANY)
    raise UnsupportedQuantization(
        f"quantisation method {method or '(none given)'!r} is not supported; supported: {_supported_line()}"
        + ("" if cpu else f"; on GPUs also {', '.join(GPU_ONLY)}")
    )


def find_quantization(config: Mapping) -> tuple[str, object] | None:
    """``(where, quantization_config)`` of a config.json, at the top level or in ``text_config``
    (where vLLM looks too); ``compression_config`` is compressed-tensors' older name."""
    text = config.get("text_config")
    for where, holder in (("", config), ("text_config.", text)):
        if not isinstance(holder, Mapping):
            continue
        for key in ("quantization_config", "compression_config"):
            if holder.get(key) is not None:
                return f"{where}{key}", holder[key]
    return None
