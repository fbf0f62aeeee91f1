"""Serving benchmark report: JSON with every number, a Markdown table, a PNG plot."""

import json
from pathlib import Path

COLUMNS = ["contender", "mode", "level", "completed", "errors", "req/s", "out tok/s", "TTFT mean", "TTFT p50",
           "TTFT p99", "TPOT mean", "TPOT p99", "ITL p99", "E2E p50", "E2E p99", "share of ceiling"]
VLLM_CONFIGS = ("vllm", "vllm-tuned")


def _row(run: dict) -> dict:
    ms = lambda s: f"{s * 1e3:.0f} ms"  # noqa: E731
    return {
        "contender": run["contender"], "mode": run["mode"], "level": run["level"], "completed": run["completed"],
        "errors": run["errors"], "req/s": f"{run['requests_per_s']:.2f}",
        "out tok/s": f"{run['output_tokens_per_s']:.1f}", "TTFT mean": ms(run["ttft_s"]["mean"]),
        "TTFT p50": ms(run["ttft_s"]["p50"]), "TTFT p99": ms(run["ttft_s"]["p99"]),
        "TPOT mean": ms(run["tpot_s"]["mean"]), "TPOT p99": ms(run["tpot_s"]["p99"]),
        "ITL p99": ms(run["itl_s"]["p99"]), "E2E p50": ms(run["e2e_s"]["p50"]), "E2E p99": ms(run["e2e_s"]["p99"]),
        "share of ceiling": f"{run['ceiling_share']:.1%}" if "ceiling_share" in run else "",
    }


def ratios(runs: list[dict], level: int = 16) -> dict[str, float]:
    """The goal ratios at one concurrency: ours vs each other contender, and vs the stronger
    vLLM configuration (the one with more req/s), which the goals are judged against."""
    at = {r["contender"]: r for r in runs if r["mode"] == "concurrency" and r["level"] == level}
    out = {}
    if "ours" not in at:
        return out
    ours = at["ours"]
    vllms = [name for name in VLLM_CONFIGS if name in at]
    if vllms:
        strongest = max(vllms, key=lambda name: at[name]["requests_per_s"])
        at = {**at, "stronger vllm": at[strongest]}
        out["stronger vllm is vllm-tuned"] = float(strongest == "vllm-tuned")
    for name, run in at.items():
        if name == "ours" or not run["requests_per_s"]:
            continue
        out[f"req/s ours / {name}"] = ours["requests_per_s"] / run["requests_per_s"]
        if name != "hf":
            out[f"p99 TTFT ours / {name}"] = ours["ttft_s"]["p99"] / max(run["ttft_s"]["p99"], 1e-9)
    return out


def goodput(runs: list[dict]) -> dict[str, float]:
    """Per contender: the highest swept rate (req/s offered) whose run met the SLO; 0 if none."""
    best: dict[str, float] = {}
    for run in runs:
        if run["mode"] == "goodput":
            best.setdefault(run["contender"], 0.0)
            if run.get("meets_slo"):
                best[run["contender"]] = max(best[run["contender"]], run["level"])
    return best


def markdown(runs: list[dict], cross_check: dict | None, settings: dict, multiturn: dict | None = None) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    for run in runs:
        row = _row(run)
        lines.append("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |")
    text = [f"config `{settings.get('config')}`, images {settings.get('image_size')}, "
            f"{settings.get('input_words')} words in / {settings.get('output_tokens')} tokens out", "", *lines]
    if settings.get("ceilings_gflops"):
        measured = ", ".join(f"{k} {v:g}" for k, v in settings["ceilings_gflops"].items())
        text += ["", (f"This machine's measured matmul ceilings (GFLOP/s, 1024-cubed products; the higher of the "
                      f"measurements before and after the servers ran): {measured}")]
    found = ratios(runs)
    if found:
        text += ["", "At concurrency 16: " + ", ".join(f"{k} = {v:.2f}" for k, v in found.items())]
    found_goodput = goodput(runs)
    if found_goodput:
        rates = ", ".join(f"{k} {v:g} req/s" for k, v in found_goodput.items())
        text += ["", ("Goodput (the highest offered rate, Poisson arrivals, at which every request completed with "
                      f"p99 TTFT <= 2 s and p99 TPOT <= 200 ms; 0: none of the swept rates): {rates}")]
    if cross_check:
        text += ["", "vLLM's own benchmark client (`vllm bench serve`, random-mm, concurrency 16):", "",
                 "| contender | completed | req/s | out tok/s | TTFT mean | TTFT p99 | TPOT mean |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, got in cross_check.items():
            if "error" in got:
                text.append(f"| {name} | failed: {got['error'][-200:]!r} | | | | | |")
                continue
            text.append(f"| {name} | {got['completed']} | {got['request_throughput']:.2f} | {got['output_throughput']:.1f} "
                        f"| {got['mean_ttft_ms']:.0f} ms | {got['p99_ttft_ms']:.0f} ms | {got['mean_tpot_ms']:.0f} ms |")
    if multiturn:
        text += ["", "Multi-turn, one image per conversation, the whole history re-sent each turn (concurrency 1):",
                 "", "| contender | conversations | prompt tokens turn 1..N | TTFT turn 1..N (s) | turn 2 / turn 1 "
                 "| turns 2..N / turn 1 |", "| --- | --- | --- | --- | --- | --- |"]
        for name, m in multiturn.items():
            by_turn = " / ".join(f"{t:.3f}" for t in m["ttft_s_by_turn"])
            tokens = " / ".join(f"{t:.0f}" for t in m.get("prompt_tokens_by_turn", []))
            text.append(f"| {name} | {m['config']['conversations']} | {tokens} | {by_turn} | "
                        f"{m['turn2_over_turn1']:.2f} | {m['later_over_turn1']:.2f} |")
    return "\n".join(text) + "\n"


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({r["contender"] for r in runs}):
        points = sorted((r["level"], r) for r in runs if r["contender"] == name and r["mode"] == "concurrency")
        if not points:
            continue
        xs = [x for x, _ in points]
        left.plot(xs, [r["requests_per_s"] for _, r in points], marker="o", label=name)
        right.plot(xs, [r["ttft_s"]["p99"] for _, r in points], marker="o", label=name)
    for axis, title in ((left, "requests / s"), (right, "p99 TTFT (s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out: Path, runs: list[dict], cross_check: dict | None, settings: dict, multiturn: dict | None = None
) -> None:
    payload = {"settings": settings, "runs": runs, "ratios_at_16": ratios(runs), "goodput": goodput(runs),
               "vllm_client": cross_check, "multiturn": multiturn or {}}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    out.with_suffix(".md").write_text(markdown(runs, cross_check, settings, multiturn))
    plot(runs, out.with_suffix(".png"))
