"""``llava-train``: every step of LLaVA's training, one subcommand each.

    llava-train world --out data/world                      synthetic scenes -> LLaVA JSON
    llava-train assemble --vision CLIP --llm LLM --out DIR  CLIP + LLM + projector
    llava-train stage1 --preset llava15-stage1 --model DIR --data JSON --image-root DIR --output-dir OUT
    llava-train stage2 --preset llava15-stage2 ...           (--lora-r 128 for LoRA)
    llava-train default-model [--check models/default]      rebuild the built-in model from nothing
    llava-train bench --serve stage2=models/default         shapes-bench through our server
    llava-train probe --model models/default                what its vision tokens carry (probes)
    llava-train probe --lookup --model models/default       does the LLM find a named object and its place
    llava-train presets                                     what each preset sets

Stages run under ``torchrun`` unchanged (``torchrun --nproc_per_node 8 -m train stage2 ...``).
Every ``StageConfig`` field is a flag (``--global-batch``, ``--lr``, ``--fsdp``, ...) that
overrides the preset.
"""

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from train.llava.config import PRESETS, StageConfig, with_overrides

_FLAGS_SKIP = {"stage"}


def _add_stage_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), help="start from this preset (flags override it)")
    for f in dataclasses.fields(StageConfig):
        if f.name in _FLAGS_SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float, "str": str}.get(str(f.type), f.type)
            parser.add_argument(flag, type=kind, default=None, help=f"(default {f.default!r})")
    parser.add_argument("--export-dir", help="where the trained model is exported (default OUTPUT_DIR/final)")


def _stage(args: argparse.Namespace, stage: int) -> None:
    from train.llava.trainer import train_stage

    base = PRESETS[args.preset] if args.preset else StageConfig(
        stage=stage, chat_format="plain" if stage == 1 else "vicuna_v1")
    if base.stage != stage:
        raise SystemExit(f"preset {args.preset} is a stage-{base.stage} preset")
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(StageConfig) if f.name not in _FLAGS_SKIP}
    cfg = with_overrides(base, **overrides)
    for required in ("model", "data", "output_dir"):
        if not getattr(cfg, required):
            raise SystemExit(f"--{required.replace('_', '-')} is required")
    result = train_stage(cfg, export_dir=args.export_dir)
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(result))


def _world(args: argparse.Namespace) -> None:
    from train.builtin.world_data import WorldDataConfig, write_world_data

    paths = write_world_data(args.out, WorldDataConfig(scenes=args.scenes, first_seed=args.first_seed))
    print(json.dumps({k: str(v) for k, v in paths.items()}))


def _assemble(args: argparse.Namespace) -> None:
    from train.llava.assemble import AssembleConfig, assemble
    from train.llava.export import export

    cfg = AssembleConfig(vision=args.vision, llm=args.llm, projector_type=args.projector_type,
                         vision_feature_layer=args.vision_feature_layer, aspect_mode=args.aspect_mode)
    model, tokenizer, processor = assemble(cfg)
    export(model, tokenizer, processor, args.out, "plain", {"stage": 0, "assemble": dataclasses.asdict(cfg)})
    print(f"wrote {args.out}")


def _default_model(args: argparse.Namespace) -> None:
    from train.builtin.recipe import PRESETS as RECIPES
    from train.builtin.recipe import build, compare_records, read_record

    if args.check and Path(args.check).resolve() == Path(args.out).resolve():
        raise ValueError("--check compares a rebuild with the shipped model: give --out another folder")
    if not args.record_only:
        cfg = dataclasses.replace(RECIPES[args.preset], threads=args.threads, progress=not args.no_progress,
                                  device=args.device, precision=args.precision)
        build(args.out, cfg, args.work_dir)
        print(f"built {args.out}")
    if args.bench:
        _bench_into_record(args.out, args.bench_scenes)
    if args.check:
        problems = compare_records(read_record(args.out), read_record(args.check))
        for line in problems:
            print(f"differs from {args.check}: {line}")
        if problems:
            raise SystemExit(1)
        print(f"{args.out} reproduces {args.check}")


def _bench_into_record(model_dir: str, scenes: int) -> None:
    """shapes-bench (both splits) through our server on the built model, kept in its record."""
    from server.child_process import running_server
    from train.builtin import shapes_bench
    from train.builtin.recipe import add_bench

    with running_server(model_dir, "--served-model-name", "default") as (base, _):
        for split in sorted(shapes_bench.SPLITS):
            report = shapes_bench.run(f"{base}/v1", "default", scenes, split=split)
            add_bench(model_dir, split, report)
            print(f"shapes-bench {split}: {report['accuracy']:.1%} "
                  + ", ".join(f"{k} {v['accuracy']:.0%}" for k, v in report["by_kind"].items()))


def _bench(args: argparse.Namespace) -> None:
    from train.bench_cli import run_bench

    run_bench(args)


def _probe(args: argparse.Namespace) -> None:
    if args.lookup:
        from train.builtin.lookup_probe import LookupConfig, markdown, run_lookup

        report = run_lookup(LookupConfig(args.model, args.train_scenes, args.test_scenes, args.split))
    else:
        from train.builtin.probe import ProbeConfig, markdown, run_probe

        report = run_probe(ProbeConfig(args.model, args.train_scenes, args.test_scenes, args.split, args.after_projector))
    print(markdown(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


def _presets(_: argparse.Namespace) -> None:
    from train.builtin.recipe import PRESETS as RECIPES

    for name, cfg in PRESETS.items():
        print(f"{name}: {json.dumps(dataclasses.asdict(cfg))}")
    for name in RECIPES:
        print(f"default-model --preset {name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-train", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("world", help="render synthetic scenes and write LLaVA JSON for both stages")
    p.add_argument("--out", required=True)
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--first-seed", type=int, default=0)
    p.set_defaults(func=_world)
    p = sub.add_parser("assemble", help="assemble a LLaVA from a local CLIP and a local LLM")
    p.add_argument("--vision", required=True, help="CLIP checkpoint directory")
    p.add_argument("--llm", required=True, help="causal LM checkpoint directory (with tokenizer)")
    p.add_argument("--projector-type", default="mlp2x_gelu", choices=["mlp2x_gelu", "linear", "identity"])
    p.add_argument("--vision-feature-layer", type=int, default=-2)
    p.add_argument("--aspect-mode", default="pad", choices=["pad", "crop", "resize"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=_assemble)
    for stage in (1, 2):
        p = sub.add_parser(f"stage{stage}", help="feature alignment (projector only)" if stage == 1
                           else "visual instruction tuning (projector + LLM, or LoRA)")
        _add_stage_flags(p)
        p.set_defaults(func=lambda a, s=stage: _stage(a, s))
    p = sub.add_parser("default-model", help="build the built-in default model from nothing")
    p.add_argument("--out", default="models/default-rebuild",
                   help="where the model goes (not models/default: a rebuild never replaces the shipped model)")
    p.add_argument("--preset", default="default", choices=["default", "ci"])
    p.add_argument("--check", metavar="SHIPPED", help="compare the build's record with this model's (exit 1 if differ)")
    p.add_argument("--no-bench", dest="bench", action="store_false",
                   help="skip shapes-bench through our server after the build (its result goes in the record)")
    p.add_argument("--bench-scenes", type=int, default=100)
    p.add_argument("--record-only", action="store_true", help="do not build: bench and/or check OUT as it is")
    p.add_argument("--work-dir", help="intermediate outputs (default OUT.work); reruns resume from it")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda: the same recipe on a GPU (weights differ in the "
                   "last bits from a CPU build; --check compares the recipe and the scores, not the bits)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: the recipe's bf16 where this machine's bf16 products run at least as fast as fp32 "
                   "(measured at the start; always on a GPU), else fp32")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_default_model)
    p = sub.add_parser("bench", help="shapes-bench through an OpenAI-compatible server (ours by default)")
    from train.bench_cli import add_bench_args

    add_bench_args(p)
    p.set_defaults(func=_bench)
    from train.builtin.shapes_bench import SPLITS as BENCH_SPLITS

    p = sub.add_parser("probe", help="what a model's vision tokens carry: linear/MLP probes on the world's objects")
    p.add_argument("--model", required=True, help="a LLaVA model directory (e.g. models/default)")
    p.add_argument("--train-scenes", type=int, default=2000)
    p.add_argument("--test-scenes", type=int, default=200)
    p.add_argument("--split", default="main", choices=sorted(BENCH_SPLITS))
    p.add_argument("--after-projector", action="store_true", help="probe the projector's output, not the tower's")
    p.add_argument("--lookup", action="store_true",
                   help="probe the LLM instead: does a question's object name find the object, and does its place come across")
    p.add_argument("--out", help="also write the report as JSON here")
    p.set_defaults(func=_probe)
    sub.add_parser("presets", help="print the presets").set_defaults(func=_presets)
    from train.datagen.cli import add_parsers as add_datagen
    from train.eval.cli import add_parsers as add_eval

    add_datagen(sub)  # datagen, merge: instruction data from a teacher (template or LLM)
    add_eval(sub)  # eval relative | scienceqa | shapes
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"llava-train {args.command}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
