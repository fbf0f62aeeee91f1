"""``eval relative|scienceqa|shapes`` (``python -m train.eval`` or ``llava-train``).

    python -m train.eval eval relative --questions bench.jsonl --image-root images/ \\
        --model llava --judge-base-url https://api.example.com/v1 --judge-model gpt-4o --out reports/
    python -m train.eval eval scienceqa --problems problems.json --split test --image-root sqa/images \\
        --format CQM-A [--second-predictions gpt4.jsonl --judge-model gpt-4o] --out reports/
    python -m train.eval eval shapes --scenes 100 --out reports/

The evaluated model's endpoint defaults to our server (``OPENAI_*`` in the environment
override it); the judge's reads ``JUDGE_*`` first, then ``OPENAI_*``.
"""

import argparse
import asyncio
import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from train.eval.endpoint_args import add_endpoint_args, endpoint_from_args
from train.eval.report import TaskReport


def add_parsers(subparsers) -> None:
    from train.eval.scienceqa_format import FORMATS

    p = subparsers.add_parser("eval", help="evaluate a model over an OpenAI-compatible endpoint")
    tasks = p.add_subparsers(dest="task", required=True)

    r = tasks.add_parser("relative", help="LLaVA-Bench-style judge-scored relative score")
    r.add_argument("--questions", type=Path, required=True, help="bench JSON/JSONL, or generator JSONL")
    r.add_argument("--references", type=Path, help="reference answers by question_id (LLaVA-Bench layout)")
    r.add_argument("--contexts", type=Path, help="symbolic contexts by image (LLaVA-Bench layout)")
    r.add_argument("--answers", type=Path, help="candidate answers by question_id (skip asking the model)")
    r.add_argument("--image-root", type=Path, help="directory the questions' image paths are relative to")
    r.add_argument("--limit", type=int)
    add_endpoint_args(r, who="evaluated model")
    add_endpoint_args(r, prefix="judge", who="judge")

    s = tasks.add_parser("scienceqa", help="ScienceQA-style multiple choice")
    s.add_argument("--problems", type=Path, required=True, help="ScienceQA problems.json (or JSONL)")
    s.add_argument("--split", help="keep problems of this split (e.g. test)")
    s.add_argument("--image-root", type=Path, help="ScienceQA image folder; without it, text only")
    s.add_argument("--format", choices=FORMATS, default="CQM-A")
    s.add_argument("--limit", type=int)
    s.add_argument("--second-predictions", type=Path, help="another model's report/predictions: ensemble")
    add_endpoint_args(s, who="evaluated model")
    add_endpoint_args(s, prefix="judge", who="judge (ensemble only)")

    h = tasks.add_parser("shapes", help="shapes-bench on held-out synthetic scenes")
    h.add_argument("--scenes", type=int, default=100)
    h.add_argument("--first-seed", type=int)
    add_endpoint_args(h, who="evaluated model")

    for sub in (r, s, h):
        sub.add_argument("--out", type=Path, required=True, help="directory for <task>.json and <task>.md")
    p.set_defaults(func=run_eval)


async def _run(args) -> TaskReport:
    from train.eval.client import ChatClient

    async with AsyncExitStack() as stack:
        defaults = {"max_tokens": 16 if args.task == "shapes" else 512}  # unless --max-tokens says otherwise
        model = await stack.enter_async_context(ChatClient(endpoint_from_args(args, **defaults)))
        judge = None
        if args.task == "relative" or (args.task == "scienceqa" and args.second_predictions):
            judge = await stack.enter_async_context(ChatClient(
                endpoint_from_args(args, "judge", env_prefix="JUDGE", env_fallback="OPENAI", max_tokens=512)))
        report = await _task(args, model, judge)
        report.meta = {"endpoint": _describe(model), **({"judge": _describe(judge)} if judge else {})}
        return report


def _describe(client) -> dict:
    return {"base_url": client.config.base_url, "model": client.resolved_model,
            "http": client.stats.as_dict()}


async def _task(args, model, judge):
    if args.task == "relative":
        from train.eval.relative import load_answers, load_questions, run_relative

        questions = load_questions(args.questions, references=args.references, contexts=args.contexts,
                                   limit=args.limit)
        answers = load_answers(args.answers) if args.answers else None
        return await run_relative(questions, judge, candidate=None if answers else model, answers=answers,
                                  image_root=args.image_root)
    if args.task == "scienceqa":
        from train.eval.scienceqa import load_predictions, run_scienceqa
        from train.eval.scienceqa_format import load_problems

        problems = load_problems(args.problems, args.split, args.limit)
        second = load_predictions(args.second_predictions) if args.second_predictions else None
        return await run_scienceqa(problems, model, fmt=args.format, image_root=args.image_root,
                                   second=second, judge=judge)
    from train.builtin.shapes_bench import run_eval_task

    return await run_eval_task(model, args.scenes, args.first_seed)


def run_eval(args) -> int:
    from train.eval.report import write_report
    from train.eval.rows import InputError

    try:
        report = asyncio.run(_run(args))
    except (InputError, ValueError) as exc:
        print(f"eval: error: {exc}", file=sys.stderr)
        return 2
    json_path, md_path = write_report(report, args.out)
    summary = {"report": str(json_path), "markdown": str(md_path), "summary": report.summary}
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.eval", description=__doc__.split("\n")[0])
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
