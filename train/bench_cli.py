"""``llava-train bench``: shapes-bench against running servers or ones it starts itself."""

import argparse
import json
from pathlib import Path

from train.builtin import shapes_bench


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--serve", action="append", default=[], metavar="NAME=MODEL_DIR",
                   help="start our server on this model, score it, stop it (repeat to compare side by side)")
    p.add_argument("--base-url", action="append", default=[], metavar="NAME=URL",
                   help="score an already running OpenAI-compatible server (URL ends in /v1)")
    p.add_argument("--model-name", default="default", help="model name sent to --base-url servers")
    p.add_argument("--chat-template", default="vicuna_v1", help="template for --serve servers")
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument("--first-seed", type=int, default=shapes_bench.FIRST_SEED)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--split", default="main", choices=sorted(shapes_bench.SPLITS),
                   help="main: the canonical world; varied: scenes drawn another way (robustness)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/shapes_bench"),
                   help="report path without suffix (.json and .md are written)")


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, target = v.partition("=")
        if not sep or not name or not target:
            raise ValueError(f"{flag} expects NAME=VALUE, got {v!r}")
        out.append((name, target))
    return out


def run_bench(args: argparse.Namespace) -> dict:
    from server.child_process import running_server

    reports: dict[str, dict] = {}
    for name, model_dir in _pairs(args.serve, "--serve"):
        if not (Path(model_dir) / "config.json").is_file():
            raise ValueError(f"--serve {name}: {model_dir} is not a model directory")
        with running_server(model_dir, "--served-model-name", name, "--chat-template", args.chat_template) as (base, _):
            reports[name] = shapes_bench.run(f"{base}/v1", name, args.scenes, args.first_seed, args.concurrency,
                                             split=args.split)
    for name, url in _pairs(args.base_url, "--base-url"):
        reports[name] = shapes_bench.run(url, args.model_name, args.scenes, args.first_seed, args.concurrency,
                                         split=args.split)
    if not reports:
        raise ValueError("nothing to score: give --serve NAME=DIR or --base-url NAME=URL")
    shapes_bench.write_report(args.out, reports)
    print(shapes_bench.markdown(reports))
    print(json.dumps({k: round(v["accuracy"], 4) for k, v in reports.items()}))
    return reports
