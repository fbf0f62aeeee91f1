"""``--dtype auto`` on a CPU: the precision this machine runs fastest, measured at startup.

vLLM's ``auto`` takes the checkpoint's dtype, a float32 one turned into bfloat16. On a
CPU without fast bf16 (AVX-512 BF16 but no AMX, say) that runs the model at about half
the speed float32 would, and less precisely; a float16 checkpoint (llava-hf's LLaVA-1.5)
runs float16 products, which CPUs without AVX-512 FP16 do in a scalar loop. So on CPUs,
``auto`` measures short matrix products (``kernels.ceiling``) and runs the fastest
candidate; another than vLLM's pick only wins by a clear margin, since float32 costs
twice the memory per weight and per cached token. The measurement and the choice are
logged.
"""

import json
from collections.abc import Callable, Mapping
from pathlib import Path

# another candidate must be this much faster than vLLM's pick to be chosen (timings are
# noisy, and float32 doubles the weights' and the KV cache's memory)
MARGIN = 1.2


def checkpoint_dtype(config: Mapping) -> str:
    """The dtype a checkpoint's ``config.json`` names (transformers 5 writes ``dtype``,
    earlier versions ``torch_dtype``; LLaVA configs may hold it in ``text_config``)."""
    for holder in (config, config.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            value = holder.get(key) if isinstance(holder, Mapping) else None
            if isinstance(value, str) and value:
                return value.removeprefix("torch.")
    return "float32"


def vllm_auto(checkpoint: str) -> str:
    """What vLLM 0.32's ``auto`` runs on an x86/ARM CPU for a checkpoint of this dtype."""
    return "float16" if checkpoint == "float16" else "bfloat16"


def choose(config: Mapping, rate: Callable[[str], float], allow_float32: bool = True) -> tuple[str, str]:
    """``(dtype for vLLM, a log line)``: ``"auto"`` where vLLM's pick runs about as fast as
    the fastest candidate, else the fastest. Candidates: vLLM's pick, bfloat16 for a
    float16 checkpoint (CPUs without AVX-512 FP16 run float16 products in a scalar loop),
    and float32 (left out when ``allow_float32`` is false: quantised checkpoints whose CPU
    kernels take 16-bit activations only). ``rate(dtype)`` gives the measured GFLOP/s."""
    checkpoint = checkpoint_dtype(config)
    pick = vllm_auto(checkpoint)
    candidates = [pick] + (["bfloat16"] if pick == "float16" else []) + (["float32"] if allow_float32 else [])
    rates = {name: rate(name) for name in candidates}
    best = max(rates, key=rates.get)
    keep = best == pick or rates[best] <= MARGIN * rates[pick]
    measured = ", ".join(f"{name} {value:.0f}" for name, value in rates.items())
    why = (
        f"--dtype auto on this CPU ({checkpoint} checkpoint; vLLM's auto: {pick}): matmuls measured at "
        f"{measured} GFLOP/s; running {pick if keep else best}"
    )
    return ("auto" if keep else best), why


def cpu_auto_dtype(
    model_dir: Path, rate: Callable[[str], float] | None = None, allow_float32: bool = True
) -> tuple[str, str]:
    """``choose`` for the checkpoint in ``model_dir``, with the real measurement by default."""
    from kernels.ceiling import matmul_gflops

    config = json.loads((Path(model_dir) / "config.json").read_text())
    return choose(config, rate or (lambda name: matmul_gflops(name, size=512, seconds=0.1)), allow_float32)
