"""Quantised LLaVA checkpoints built in code: the LLM's linear layers in a compressed-tensors format.

``quantize_llava_state`` takes a LLaVA state dict (any layout ``llava_model.weights`` knows)
and quantises the weight of every linear layer inside the LLM's decoder layers
(``q/k/v/o_proj``, ``gate/up/down_proj``), round-to-nearest, writing the tensor names and
the ``quantization_config`` that vLLM's compressed-tensors loader reads. The vision tower,
the projector, the embeddings, the norms and ``lm_head`` stay in floating point, as
llm-compressor's usual recipe for LLaVA leaves them (its ``ignore`` list).
``build_quantized_tiny_llava`` does that to the tiny random model of ``llava_model.tiny``.

Schemes (``SCHEMES``), with what each writes per quantised layer ``L``:

- ``w8a8-int8``: ``L.weight`` int8, symmetric, one scale per output channel
  (``L.weight_scale``, shape ``(out, 1)``); activations quantised to int8 at run time, one
  scale per token (llm-compressor's ``W8A8`` preset, ``int-quantized`` format).
- ``w8a8-int8-static``: as above, plus one calibrated activation scale per layer
  (``L.input_scale``), measured on a few prompts by running the model itself.
- ``w4a16``: 4-bit weights, symmetric, one scale per group of ``group_size`` inputs,
  eight values packed into each int32 along the input dimension (``L.weight_packed``,
  ``L.weight_scale``, ``L.weight_shape``; ``pack-quantized`` format); activations stay float.
- ``w8a16``: 8-bit weights, per output channel, packed four to an int32 (``pack-quantized``).
- ``fp8-dynamic``: ``L.weight`` float8_e4m3fn per output channel, activations fp8 per token
  (``float-quantized``; llm-compressor's ``FP8_DYNAMIC``).

Not every scheme runs on every vLLM backend: ``server.engine.QUANTIZATION`` says which
this server accepts where.
"""

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

# The LLM's decoder linear layers, in the llava-hf Hub naming (``llava_model.weights``).
LLM_LINEAR = re.compile(
    r"^language_model\.model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$"
)
# What stays in floating point (compressed-tensors' syntax: a module name, or ``re:`` + a regex).
IGNORE = ["language_model.lm_head", "re:vision_tower.*", "re:multi_modal_projector.*"]


@dataclass(frozen=True)
class Scheme:
    """One compressed-tensors quantisation of the linear layers (see the module docstring)."""

    format: str  # compressed-tensors' format name
    kind: str  # "int" or "float" weights
    bits: int
    group_size: int | None = None  # None: one scale per output channel
    activations: str | None = None  # None (weight-only), "dynamic" (per token) or "static" (per tensor)

    def weights_args(self) -> dict:
        return _args(self.kind, self.bits, "group" if self.group_size else "channel", False, self.group_size)

    def activation_args(self) -> dict | None:
        if self.activations is None:
            return None
        dynamic = self.activations == "dynamic"
        return _args(self.kind, 8, "token" if dynamic else "tensor", dynamic, None)


def _args(kind: str, bits: int, strategy: str, dynamic: bool, group_size: int | None) -> dict:
    return {
        "num_bits": bits,
        "type": kind,
        "symmetric": True,
        "strategy": strategy,
        "dynamic": dynamic,
        "group_size": group_size,
        "block_structure": None,
        "actorder": None,
        "observer": None if dynamic else "minmax",
        "observer_kwargs": {},
    }


SCHEMES = {
    "w8a8-int8": Scheme("int-quantized", "int", 8, activations="dynamic"),
    "w8a8-int8-static": Scheme("int-quantized", "int", 8, activations="static"),
    "w4a16": Scheme("pack-quantized", "int", 4, group_size=32),
    "w8a16": Scheme("pack-quantized", "int", 8),
    "fp8-dynamic": Scheme("float-quantized", "float", 8, activations="dynamic"),
}


def quantization_config(scheme: Scheme, ignore: Iterable[str] = IGNORE) -> dict:
    """The ``quantization_config`` entry of config.json for ``scheme``."""
    return {
        "quant_method": "compressed-tensors",
        "format": scheme.format,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": scheme.weights_args(),
                "input_activations": scheme.activation_args(),
                "output_activations": None,
                "format": scheme.format,
            }
        },
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "sparsity_config": {},
    }


# ---- quantising one weight ------------------------------------------------------------------

def quantize_int(weight: torch.Tensor, bits: int, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric round-to-nearest: ``weight ≈ q * scale``.

    ``weight`` (out, in) -> ``q`` int32 in ``[-2^(bits-1), 2^(bits-1) - 1]`` (out, in) and
    ``scale`` float32, (out, 1) per channel or (out, in / group_size) per group. The scale
    maps the largest magnitude of its channel (group) to ``2^(bits-1) - 1``.
    """
    out_features, in_features = weight.shape
    w = weight.detach().float()
    groups = w.reshape(out_features, -1, group_size) if group_size else w.reshape(out_features, 1, in_features)
    qmax = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / qmax
    q = torch.clamp(torch.round(groups / scale), -qmax - 1, qmax).to(torch.int32)
    return q.reshape(out_features, in_features), scale.squeeze(-1)


def pack_int32(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed ``bits``-bit values (out, in) -> int32 (out, in * bits / 32), compressed-tensors'
    ``pack-quantized`` layout: each value offset by ``2^(bits-1)`` to be unsigned, the first
    of each run of ``32 / bits`` in the lowest bits."""
    per_word = 32 // bits
    out_features, in_features = q.shape
    if in_features % per_word:
        raise ValueError(f"{in_features} inputs do not pack {per_word} to an int32")
    unsigned = (q + 2 ** (bits - 1)).to(torch.int64).reshape(out_features, -1, per_word)
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    words = (unsigned << shifts).sum(dim=-1)  # < 2^32
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel float8_e4m3fn: the channel's largest magnitude maps to 448."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / torch.finfo(torch.float8_e4m3fn).max
    return (w / scale).to(torch.float8_e4m3fn), scale


def quantize_linear(name: str, weight: torch.Tensor, scheme: Scheme, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint tensors of one quantised linear layer (``name`` ends in ``.weight``)."""
    layer = name.removesuffix(".weight")
    if scheme.kind == "float":
        q, scale = quantize_fp8(weight)
        return {f"{layer}.weight": q, f"{layer}.weight_scale": scale.to(dtype)}
    q, scale = quantize_int(weight, scheme.bits, scheme.group_size)
    if scheme.format == "pack-quantized":
        return {
            f"{layer}.weight_packed": pack_int32(q, scheme.bits),
            f"{layer}.weight_scale": scale.to(dtype),
            f"{layer}.weight_shape": torch.tensor(list(weight.shape), dtype=torch.int32),
        }
    return {f"{layer}.weight": q.to(torch.int8), f"{layer}.weight_scale": scale.to(dtype)}


def dequantize(tensors: dict[str, torch.Tensor], layer: str, scheme: Scheme) -> torch.Tensor:
    """The float weight a quantised layer stands for (what vLLM multiplies by, up to activations)."""
    scale = tensors[f"{layer}.weight_scale"].float()
    if scheme.format == "pack-quantized":
        words = tensors[f"{layer}.weight_packed"].to(torch.int64) & 0xFFFFFFFF
        per_word = 32 // scheme.bits
        shifts = torch.arange(per_word, dtype=torch.int64) * scheme.bits
        values = (words.unsqueeze(-1) >> shifts) & (2**scheme.bits - 1)
        q = (values - 2 ** (scheme.bits - 1)).reshape(words.shape[0], -1).float()
    else:
        q = tensors[f"{layer}.weight"].float()
    if scheme.group_size:
        return (q.reshape(q.shape[0], -1, scheme.group_size) * scale.unsqueeze(-1)).reshape(q.shape)
    return q * scale


# ---- static activation scales -----------------------------------------------------------------

def calibrate_input_scales(model, batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """Per-tensor int8 input scales (``absmax / 127``) of the LLM's decoder linear layers,
    from running the transformers ``model`` on ``batches`` (its forward's keyword arguments).
    Keys are Hub names of the layers (``language_model.model.layers.0.self_attn.q_proj``)."""
    from llava_model.weights import hub_name

    peaks: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        hub = hub_name(name)
        if isinstance(module, torch.nn.Linear) and LLM_LINEAR.match(f"{hub}.weight"):
            def record(_module, args, _out, hub=hub):
                peak = args[0].detach().abs().amax().float()
                peaks[hub] = torch.maximum(peaks.get(hub, peak), peak)

            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {hub: (peak / 127).clamp(min=1e-8).reshape(1) for hub, peak in peaks.items()}


# ---- whole checkpoints -----------------------------------------------------------------------

def quantize_llava_state(
    state_dict: dict[str, torch.Tensor],
    scheme: Scheme,
    *,
    dtype: torch.dtype = torch.float32,
    input_scales: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """A LLaVA state dict in the Hub layout with the LLM's decoder linear layers quantised by
    ``scheme``; everything else (and the scales) cast to ``dtype``. A static-activation
    scheme needs ``input_scales`` (``calibrate_input_scales``)."""
    from llava_model.weights import hub_name

    if scheme.activations == "static" and not input_scales:
        raise ValueError("a static-activation scheme needs calibrated input_scales")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in state_dict.items():
        key = hub_name(name)
        if tensor.data_ptr() in seen and tensor.numel() > 0:  # tied tensors: the first name only
            continue
        seen.add(tensor.data_ptr())
        if LLM_LINEAR.match(key):
            out.update(quantize_linear(key, tensor, scheme, dtype))
            if scheme.activations == "static":
                layer = key.removesuffix(".weight")
                out[f"{layer}.input_scale"] = input_scales[layer].to(dtype)
        else:
            t = tensor.detach()
            out[key] = t.to(dtype) if t.is_floating_point() else t
    return {k: v.contiguous() for k, v in out.items()}


def write_quantized_checkpoint(
    out_dir: str | Path, state: dict[str, torch.Tensor], config, scheme: Scheme, ignore: Iterable[str] = IGNORE
) -> None:
    """Save a quantised state (``quantize_llava_state``) and the LLaVA ``config`` with its
    ``quantization_config`` (config.json's top level, where llm-compressor writes it)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["LlavaForConditionalGeneration"]
    config.save_pretrained(out)
    path = out / "config.json"
    written = json.loads(path.read_text())
    written["quantization_config"] = quantization_config(scheme, ignore)
    path.write_text(json.dumps(written, indent=2))


def _calibration_batches(model, tokenizer, spec) -> list[dict]:
    """A text prompt and an image prompt (random pixels), with the image tokens expanded."""
    from llava_model.vision import num_image_tokens

    generator = torch.Generator().manual_seed(spec.seed)
    per_image = num_image_tokens(model.config)
    batches = []
    for prompt, image in (("USER: Describe a red circle. ASSISTANT: A red circle.", False),
                          ("USER: <image>\nWhat is in the image? ASSISTANT: A square.", True)):
        ids: list[int] = []
        for token in tokenizer(prompt)["input_ids"]:
            ids.extend([token] * per_image if token == model.config.image_token_index else [token])
        batch = {"input_ids": torch.tensor([ids])}
        if image:
            side = spec.image_size
            batch["pixel_values"] = torch.randn(1, 3, side, side, generator=generator)
        batches.append(batch)
    return batches


def build_quantized_tiny_llava(
    out_dir: str | Path,
    spec=None,
    scheme: str | Scheme = "w8a8-int8",
    *,
    dtype: torch.dtype = torch.float32,
    calibrate: Callable | None = None,
):
    """Write the tiny random LLaVA of ``llava_model.tiny`` (same ``spec``, so the same
    weights as ``build_tiny_llava``) with its LLM quantised by ``scheme``; returns the
    unquantised transformers model. ``calibrate(model, tokenizer, spec)`` gives the
    batches a static scheme is calibrated on (default: one text and one image prompt)."""
    from llava_model.tiny import TinyLlavaSpec, build_tiny_hf_model, write_processor_files

    spec = spec or TinyLlavaSpec()
    scheme = SCHEMES[scheme] if isinstance(scheme, str) else scheme
    model, tokenizer = build_tiny_hf_model(spec)
    scales = None
    if scheme.activations == "static":
        scales = calibrate_input_scales(model, (calibrate or _calibration_batches)(model, tokenizer, spec))
    state = quantize_llava_state(model.state_dict(), scheme, dtype=dtype, input_scales=scales)
    out = Path(out_dir)
    write_quantized_checkpoint(out, state, model.config, scheme)
    tokenizer.save_pretrained(out)
    write_processor_files(out, spec)
    return model
