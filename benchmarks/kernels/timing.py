"""Side-by-side timing: variants run interleaved, so machine noise hits all alike."""

import time
from collections.abc import Callable, Mapping

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_medians(
    variants: Mapping[str, Callable[[], object]],
    *,
    device: str = "cpu",
    warmup: int = 2,
    rounds: int = 7,
) -> dict[str, float]:
    """Median seconds per call of each variant, measured round-robin."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in samples.items()}


def graph_medians(variants: Mapping[str, Callable[[], object]], *, replays: int = 20, rounds: int = 7) -> dict[str, float]:
    """CUDA only: each variant captured in a CUDA graph, timed over ``replays`` replays.

    Launch overhead drops out, leaving the kernels' own time. Variants are warmed
    up (and autotuned) before capture; one that cannot be captured maps to NaN.
    """
    graphs = {}
    for name, fn in variants.items():
        fn(), fn()
        torch.cuda.synchronize()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            graphs[name] = graph
        except Exception:  # some variants (a compiled function's guards) refuse capture
            graphs[name] = None
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, graph in graphs.items():
            if graph is None:
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(replays):
                graph.replay()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / 1e3 / replays)
    return {name: (sorted(ts)[len(ts) // 2] if ts else float("nan")) for name, ts in samples.items()}


def table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""
    head = "| " + " | ".join(columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
