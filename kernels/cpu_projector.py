"""The projector on CPUs through oneDNN, with GELU fused as a post-op.

``linear_1`` runs as one oneDNN inner product whose GELU is applied while each
output tile is still in cache (``mkldnn._linear_pointwise`` with the ``gelu``
post-op), so the intermediate activation never takes a separate pass. In bf16
(when the CPU has avx512_bf16) the weights are reordered into oneDNN's blocked
layout once, when the projector is packed, instead of on every call.
"""

from dataclasses import dataclass

import torch


def cpu_fused_available(dtype: torch.dtype) -> bool:
    """Whether oneDNN can run the projector in ``dtype`` on this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


def cpu_fused_preferred(dtype: torch.dtype) -> bool:
    """Whether ``auto`` should pick it: bf16 only. In fp32 it measured no faster than
    eager at LLaVA shapes and slower at small ones (benchmarks/kernels/projector.py)."""
    return dtype == torch.bfloat16 and cpu_fused_available(dtype)


@dataclass
class PackedCpuProjector:
    """Weights in the form oneDNN wants, made once at load time."""

    w1: torch.Tensor
    b1: torch.Tensor | None
    w2: torch.Tensor | None
    b2: torch.Tensor | None
    gelu: str  # "none" (erf) or "tanh"
    dtype: torch.dtype

    @classmethod
    def pack(cls, w1, b1, w2, b2, gelu: str, batch_hint: int = 576) -> "PackedCpuProjector":
        dtype = w1.dtype

        def prepare(w: torch.Tensor | None) -> torch.Tensor | None:
            if w is None:
                return None
            w = w.detach().contiguous()
            if dtype == torch.bfloat16:
                return torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)
            return w

        def bias(b: torch.Tensor | None) -> torch.Tensor | None:
            return None if b is None else b.detach().contiguous()

        return cls(prepare(w1), bias(b1), prepare(w2), bias(b2), gelu, dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous()  # (T, D_vision)
        if self.w2 is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.w1, self.b1, "none", [], "")
        h = torch.ops.mkldnn._linear_pointwise(x, self.w1, self.b1, "gelu", [], self.gelu)  # (T, D_text)
        return torch.ops.mkldnn._linear_pointwise(h, self.w2, self.b2, "none", [], "")
