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


def table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A Markdown table of ``rows`` restricted to ``columns``."""
    head = "| " + " | ".join(columns) + " |"
    rule = "| " + " | ".join("---" for _ in columns) + " |"
    body = ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])
