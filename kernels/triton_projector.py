"""Triton GEMM with bias and GELU fused into the epilogue, for the projector on GPUs.

``y = act(x @ w.T + b)`` with ``x`` (M, K), ``w`` (N, K) as nn.Linear stores it,
``y`` (M, N) in ``x``'s dtype. Accumulation is fp32; fp32 inputs use IEEE fp32
products (no tf32) so fp32 models keep exact parity. Every dimension is masked,
so any token count works. Under ``TRITON_INTERPRET=1`` (CPU tests) one small
configuration replaces autotuning, and bf16 tiles are widened to fp32 before the
dot because the interpreter's bf16 dot is wrong (Triton 3.9).
"""

import os

import torch
import triton
import triton.language as tl

ACT_NONE, ACT_GELU_ERF, ACT_GELU_TANH = 0, 1, 2
_ACT_CODES = {"none": ACT_GELU_ERF, "tanh": ACT_GELU_TANH}

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# LLAVA_TRITON_AUTOTUNE=0 uses one configuration (fast start-up, e.g. for tests).
_AUTOTUNE = os.environ.get("LLAVA_TRITON_AUTOTUNE", "1") != "0"


def _configs() -> list[triton.Config]:
    if _INTERPRET:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4})]
    if not _AUTOTUNE:
        return [triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_stages=3, num_warps=8)]
    shapes = [
        # (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps): large tiles for Hopper's wgmma,
        # mid tiles that also suit Ampere, and thin-M tiles for few tokens.
        (128, 256, 64, 3, 8),
        (128, 256, 64, 4, 8),
        (256, 128, 64, 3, 8),
        (256, 128, 64, 4, 8),
        (128, 128, 64, 4, 4),
        (128, 128, 64, 3, 8),
        (64, 256, 64, 4, 4),
        (128, 64, 64, 4, 4),
        (64, 128, 64, 4, 4),
        (64, 64, 64, 5, 4),
        (32, 128, 128, 4, 4),
        (16, 128, 128, 4, 4),
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for m, n, k, s, w in shapes
    ]


@triton.autotune(configs=_configs(), key=["M_BUCKET", "N", "K", "ACT", "HAS_BIAS"])
@triton.jit
def _linear_act_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    M_BUCKET,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Grouped tile order: neighbouring programs share rows of x and columns of w in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_rows
    pid_n = (pid % group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk  # (BM, BK)
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk  # (BK, BN) = w.T tile

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - k * BLOCK_K
        a = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & (offs_k[None, :] < k_left), other=0.0)
        b = tl.load(w_ptrs, mask=(offs_k[:, None] < k_left) & (offs_n[None, :] < N), other=0.0)
        if UPCAST:  # the CPU interpreter's bf16 dot is wrong; GPUs never take this branch
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
        acc += bias[None, :]
    if ACT == 1:  # exact GELU
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACT == 2:  # tanh GELU: 0.5 x (1 + tanh(z)) = x * sigmoid(2z)
        inner = 0.7978845608028654 * (acc + 0.044715 * acc * acc * acc)
        acc = acc * tl.sigmoid(2.0 * inner)

    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def _m_bucket(m: int) -> int:
    """Autotune once per power-of-two token count, not per exact count."""
    return 1 << max(m - 1, 0).bit_length()


def linear_act(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, gelu: str | None) -> torch.Tensor:
    """``gelu`` None: plain linear; ``"none"``: exact GELU; ``"tanh"``: tanh GELU."""
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"shapes do not fit: x {tuple(x.shape)}, w {tuple(w.shape)}")
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    act = ACT_NONE if gelu is None else _ACT_CODES[gelu]

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    _linear_act_kernel[grid](
        x, w, b if b is not None else w, y,
        m, n, k,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), y.stride(0), y.stride(1),
        _m_bucket(m),
        HAS_BIAS=b is not None, ACT=act, IEEE=x.dtype == torch.float32,
        UPCAST=_INTERPRET and x.dtype == torch.bfloat16,
    )
    return y


def projector_triton(x, *, w1, b1, w2, b2, gelu: str, second: str = "cublas") -> torch.Tensor:
    """linear_1 (+ GELU in its epilogue) in Triton; linear_2, which has no epilogue
    to fuse, through cuBLAS by default (``second="triton"`` keeps it in Triton)."""
    h = linear_act(x, w1, b1, gelu if w2 is not None else None)
    if w2 is None:
        return h
    if second == "triton":
        return linear_act(h, w2, b2, None)
    return torch.nn.functional.linear(h, w2, b2)
