"""``datagen`` and ``merge`` subcommands (``python -m train.datagen`` or ``llava-train``).

    python -m train.datagen datagen --coco-captions captions.json --coco-instances instances.json \\
        --out gen.jsonl --base-url https://api.example.com/v1 --model gpt-4o
    python -m train.datagen datagen --world-scenes 1000 --teacher template --out world.jsonl
    python -m train.datagen merge gen.jsonl world.jsonl --out llava_instruct.json
"""

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from train.builtin.symbolic import KINDS


def _kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"response types must be from {', '.join(KINDS)}; got {value!r}")
    return kinds


def add_parsers(subparsers) -> None:
    from train.eval.endpoint_args import add_endpoint_args

    p = subparsers.add_parser("datagen", help="generate instruction data with a teacher (resumable)")
    src = p.add_argument_group("input (COCO and/or the synthetic world)")
    src.add_argument("--coco-captions", type=Path, help="COCO captions JSON")
    src.add_argument("--coco-instances", type=Path, help="COCO instances JSON (boxes and categories)")
    src.add_argument("--image-prefix", default="",
                     help="prefix for COCO file names in the output, e.g. train2014/")
    src.add_argument("--skip-bad-images", action="store_true", help="leave out images with bad annotations")
    src.add_argument("--world-scenes", type=int, default=0, help="number of synthetic-world scenes")
    src.add_argument("--world-first-seed", type=int, default=0)
    src.add_argument("--world-render-dir", type=Path, help="write the scenes' images here")
    src.add_argument("--limit", type=int, help="only the first N contexts")
    p.add_argument("--out", type=Path, required=True, help="JSONL output; rerunning resumes it")
    p.add_argument("--teacher", choices=("llm", "template"), default="llm")
    p.add_argument("--template-seed", type=int, default=0)
    p.add_argument("--kinds", type=_kinds, default=KINDS,
                   help="comma-separated response types (default: all)")
    p.add_argument("--retry-rejected", action="store_true", help="ask again where the reply was rejected")
    p.add_argument("--max-failures", type=int, default=20, help="stop after this many failed calls")
    p.add_argument("--price-in", type=float, default=0.0, help="price per million prompt tokens")
    p.add_argument("--price-out", type=float, default=0.0, help="price per million completion tokens")
    add_endpoint_args(p, who="teacher")
    p.set_defaults(func=run_datagen)

    m = subparsers.add_parser("merge", help="merge generator outputs into one LLaVA training JSON")
    m.add_argument("inputs", type=Path, nargs="+", help="generator JSONL files")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--kinds", type=_kinds, default=KINDS)
    m.add_argument("--shuffle-seed", type=int)
    m.add_argument("--exclude-images", type=Path,
                   help="file of image ids to leave out (one a line), e.g. the eval images")
    m.set_defaults(func=run_merge)


def _contexts(args) -> list:
    from train.datagen.coco import load_coco
    from train.datagen.world_source import world_contexts

    contexts = []
    if args.coco_captions:
        loaded = load_coco(args.coco_captions, args.coco_instances, image_prefix=args.image_prefix,
                           on_error="skip" if args.skip_bad_images else "raise")
        for problem in loaded.skipped:
            logging.getLogger("train.datagen").warning("skipped image %s: %s", problem.image_id,
                                                       problem.message)
        contexts += loaded.contexts
    elif args.coco_instances:
        raise SystemExit("datagen: --coco-instances needs --coco-captions")
    if args.world_scenes:
        contexts += world_contexts(args.world_scenes, args.world_first_seed, args.world_render_dir)
    if not contexts:
        raise SystemExit("datagen: no input; give --coco-captions and/or --world-scenes")
    return contexts[: args.limit] if args.limit is not None else contexts


async def _generate(args, contexts):
    from train.datagen.runner import RunConfig, generate
    from train.datagen.teacher import LLMTeacher, TemplateTeacher
    from train.eval.client import ChatClient
    from train.eval.endpoint_args import endpoint_from_args

    config = RunConfig(out=args.out, kinds=args.kinds, retry_rejected=args.retry_rejected,
                       max_failures=args.max_failures, price_in_per_mtok=args.price_in,
                       price_out_per_mtok=args.price_out)
    if args.teacher == "template":
        return await generate(contexts, TemplateTeacher(args.template_seed), config), None
    endpoint = endpoint_from_args(args)
    async with ChatClient(endpoint) as client:
        config = replace(config, workers=endpoint.concurrency)
        stats = await generate(contexts, LLMTeacher(client), config)
        return stats, client.stats


def run_datagen(args) -> int:
    from train.datagen.coco import AnnotationError

    try:
        contexts = _contexts(args)
    except (AnnotationError, ValueError) as exc:
        print(f"datagen: error: {exc}", file=sys.stderr)
        return 2
    stats, client_stats = asyncio.run(_generate(args, contexts))
    summary = stats.as_dict()
    if client_stats is not None:
        summary["http"] = client_stats.as_dict()
    print(json.dumps(summary, indent=1))
    if stats.aborted:
        print(f"datagen: stopped after {stats.failed} failed calls; rerun to resume", file=sys.stderr)
        return 1
    return 0 if stats.failed == 0 else 1


def run_merge(args) -> int:
    from train.datagen.merge import merge

    exclude = set()
    if args.exclude_images:
        exclude = {line.strip() for line in args.exclude_images.read_text().splitlines() if line.strip()}
    stats = merge(args.inputs, args.out, kinds=args.kinds, shuffle_seed=args.shuffle_seed,
                  exclude_images=exclude)
    print(json.dumps({"out": str(args.out), **stats.as_dict()}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is too much
    parser = argparse.ArgumentParser(prog="python -m train.datagen", description=__doc__.split("\n")[0])
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
