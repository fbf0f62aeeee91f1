"""Projector: fused kernel vs unfused eager vs torch.compile, side by side in one run.

    python -m benchmarks.kernels.projector                 # this CPU, bf16 and fp32
    python -m benchmarks.kernels.projector --device cuda   # Triton vs cuBLAS + GELU

Shapes: LLaVA-1.5-7B (1024 -> 4096 -> 4096) at 576 x {1, 4, 16} tokens, plus the
tiny (64 -> 128) and small (768 -> 1024) configurations. Prints times, ratios
against unfused eager, and achieved TFLOP/s; ``--json`` writes all numbers. On CUDA
each case is timed twice: wall clock per call (launch overhead included, as the
engine sees it) and CUDA-graph replays (the kernels' own time).
"""

import argparse
import json
import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from benchmarks.kernels.timing import graph_medians, interleaved_medians, table
from kernels.ceiling import ceilings_line
from kernels.projector import prepare_projector

SHAPES = {"tiny": (64, 128), "small": (768, 1024), "llava-1.5-7b": (1024, 4096)}


@contextmanager
def forced_kernels(backend: str):
    """Measure our fused path even where ``auto`` would not pick it (fp32 on CPU)."""
    old = os.environ.get("LLAVA_KERNELS")
    os.environ["LLAVA_KERNELS"] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LLAVA_KERNELS")
        else:
            os.environ["LLAVA_KERNELS"] = old


def unfused(x, w1, b1, w2, b2):
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def bf16_ceiling(device: str) -> float:
    """Measured TFLOP/s of a large bf16 matrix product on this device."""
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = interleaved_medians({"mm": lambda: a @ a}, device=device, rounds=5)["mm"]
    return 2 * n**3 / t / 1e12


def run(
    device: str, dtypes: list[torch.dtype], token_counts: dict[str, list[int]], rounds: int, graphs: bool = True
) -> list[dict]:
    rows = []
    for shape_name, (d_in, d_out) in SHAPES.items():
        if shape_name not in token_counts:
            continue
        for dtype in dtypes:
            g = torch.Generator().manual_seed(0)
            w1 = (torch.randn(d_out, d_in, generator=g) / d_in**0.5).to(device, dtype)
            b1 = (torch.randn(d_out, generator=g) * 0.1).to(device, dtype)
            w2 = (torch.randn(d_out, d_out, generator=g) / d_out**0.5).to(device, dtype)
            b2 = (torch.randn(d_out, generator=g) * 0.1).to(device, dtype)
            with forced_kernels("fused" if device == "cpu" else "triton"):
                fused = prepare_projector(w1, b1, w2, b2, "gelu")
            compiled = torch.compile(unfused, dynamic=False)
            for tokens in token_counts[shape_name]:
                x = torch.randn(tokens, d_in, generator=g).to(device, dtype)
                variants = {
                    "unfused eager": lambda: unfused(x, w1, b1, w2, b2),
                    "torch.compile": lambda: compiled(x, w1, b1, w2, b2),
                    "fused (ours)": lambda: fused(x),
                }
                if device == "cuda":
                    from kernels.triton_projector import projector_triton

                    variants["all-Triton (2 GEMMs)"] = lambda: projector_triton(
                        x, w1=w1, b1=b1, w2=w2, b2=b2, gelu="none", second="triton"
                    )
                timings = {"wall": interleaved_medians(variants, device=device, rounds=rounds)}
                if device == "cuda" and graphs:
                    timings["graph"] = graph_medians(variants)
                flops = 2 * tokens * (d_in * d_out + d_out * d_out)
                for timing, times in timings.items():
                    base = times["unfused eager"]
                    for name, t in times.items():
                        rows.append({
                            "shape": shape_name, "dtype": str(dtype).removeprefix("torch."), "tokens": tokens,
                            "timing": timing, "variant": name, "ms": f"{t * 1e3:.3f}",
                            "x vs eager": f"{base / t:.2f}", "TFLOP/s": f"{flops / t / 1e12:.2f}",
                        })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", help="write all rows here")
    parser.add_argument("--dtype", action="append", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--shape", action="append", choices=list(SHAPES))
    args = parser.parse_args(argv)
    big = [576, 4 * 576, 16 * 576]
    counts = {"tiny": [1, 83, 576], "small": [196, 576], "llava-1.5-7b": big}
    if args.device == "cpu":
        dtypes = [torch.bfloat16, torch.float32]
    else:
        dtypes = [torch.bfloat16, torch.float16]
        counts["llava-1.5-7b"] = [1, 83, *big]
    if args.dtype:
        dtypes = [getattr(torch, d) for d in args.dtype]
    if args.shape:
        counts = {k: v for k, v in counts.items() if k in args.shape}
    ceiling = bf16_ceiling(args.device)
    rows = run(args.device, dtypes, counts, args.rounds)
    print(f"device: {args.device}; measured bf16 matmul ceiling: {ceiling:.1f} TFLOP/s")
    print(ceilings_line(args.device))
    print(table(rows, ["shape", "dtype", "tokens", "timing", "variant", "ms", "x vs eager", "TFLOP/s"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "bf16_ceiling_tflops": ceiling, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
