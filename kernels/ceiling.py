"""How fast this machine multiplies matrices, per dtype: measured, never assumed.

CPUs differ more than their names say: one 2-core machine of ours ran bf16 matmuls at
~800 GFLOP/s (AMX), another (AVX-512 BF16, no AMX) at 163 while fp32 ran at 318. The
server's ``--dtype auto`` on a CPU (``server.cpu_dtype``) and every benchmark report use
these numbers.
"""

import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_gflops(dtype: str, size: int = 1024, seconds: float = 0.1, device: str = "cpu") -> float:
    """GFLOP/s of ``size``-cubed matrix products in ``dtype``: the best of the products that
    fit in about ``seconds`` (at least one of each kind, after a small warm-up), on the
    current torch threads. Two kinds, since a CPU may run them by different paths: ``torch.mm``
    and ``F.linear`` (what a model's layers call). An AVX2-only CPU of ours ran bf16 ``mm``
    at 1 GFLOP/s and bf16 ``linear`` at 16, and a bf16 server there outran the ``mm`` figure,
    so a ceiling from ``mm`` alone was no ceiling. A dtype this machine runs in a slow scalar
    path costs one product of each kind, not more."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=gen, device=device).to(DTYPES[dtype])
    b = torch.randn(size, size, generator=gen, device=device).to(DTYPES[dtype])
    ops = (torch.mm, torch.nn.functional.linear)  # a @ b and a @ b.T: the same FLOPs
    for op in ops:
        op(a[:64, :64], b[:64, :64])  # libraries loaded, kernels picked
    best, deadline = float("inf"), time.perf_counter() + seconds
    for _ in range(100):
        for op in ops:
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            op(a, b)
            if device != "cpu":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2 * size**3 / best / 1e9


def bf16_and_fp32(rate=None) -> tuple[float, float]:
    """Measured GFLOP/s of bf16 and of fp32 products (512-cubed, about 0.2 s each): what the
    training code asks before autocasting to bf16 on a CPU. ``rate(dtype)`` replaces the
    measurement (tests)."""
    rate = rate or (lambda dtype: matmul_gflops(dtype, size=512, seconds=0.2))
    return rate("bfloat16"), rate("float32")


def ceilings(device: str = "cpu", size: int = 1024) -> dict[str, float]:
    """Measured matmul GFLOP/s per dtype, for benchmark reports (float16 at a quarter of the
    size on CPUs, which may run it in a scalar loop at a few GFLOP/s)."""
    return {
        name: round(matmul_gflops(name, size // 4 if name == "float16" and device == "cpu" else size, 0.3, device), 1)
        for name in DTYPES
    }


def ceilings_line(device: str = "cpu") -> str:
    rates = ceilings(device)
    shown = ", ".join(f"{name} {rate:g}" for name, rate in rates.items())
    return f"measured matmul ceilings ({device}, {torch.get_num_threads()} threads), GFLOP/s: {shown}"
