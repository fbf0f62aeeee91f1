"""shapes-bench (``train.builtin.shapes_bench``) as one more task of the harness: exact answers about
held-out synthetic scenes, asked with the image over any OpenAI-compatible endpoint."""

import asyncio
from collections import defaultdict

from llava_model.data_url import image_data_url
from train.eval.client import ChatClient, ChatError, user_message
from train.eval.report import Table, TaskReport


async def run_shapes(client: ChatClient, n_scenes: int, first_seed: int | None = None) -> TaskReport:
    """Short answers are expected: give ``client`` a small ``max_tokens`` (the CLI's default is 16)."""
    from train.builtin import shapes_bench

    first = shapes_bench.FIRST_SEED if first_seed is None else first_seed
    if first < shapes_bench.FIRST_SEED:
        raise ValueError(f"shapes-bench seeds start at {shapes_bench.FIRST_SEED}; "
                         "lower seeds are training seeds")
    items = shapes_bench.bench_items(n_scenes, first)

    async def one(item) -> dict:
        row = {"seed": item.seed, "kind": item.kind, "question": item.question, "answer": item.answer,
               "reply": None, "correct": False, "error": None}
        try:
            result = await client.chat([user_message(item.question, image_data_url(item.image))],
                                       temperature=0.0)
        except ChatError as exc:
            row["error"] = str(exc)
            return row
        row["reply"] = result.text
        row["correct"] = shapes_bench.is_correct(result.text, item.answer)
        return row

    rows = list(await asyncio.gather(*(one(item) for item in items)))
    by_kind = defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    chance = getattr(shapes_bench, "CHANCE", {})

    def acc(items: list[dict]) -> dict:
        n = len(items)
        correct = sum(r["correct"] for r in items)
        return {"n": n, "correct": correct, "accuracy": round(100 * correct / n, 2) if n else None,
                "failed_calls": sum(bool(r["error"]) for r in items)}

    summary = {"scenes": n_scenes, "first_seed": first, **acc(rows),
               "by_kind": {k: acc(v) for k, v in sorted(by_kind.items())}}
    table = [[k, s["n"], s["failed_calls"], 100 * chance[k] if k in chance else None, s["accuracy"]]
             for k, s in summary["by_kind"].items()]
    table.append(["all", summary["n"], summary["failed_calls"], None, summary["accuracy"]])
    headers = ["kind", "questions", "failed", "chance %", "accuracy %"]
    return TaskReport("shapes", summary, rows, [Table("shapes-bench accuracy (%)", headers, table)])
