"""shapes-bench: exact-answer questions about held-out synthetic scenes, asked over HTTP.

Scenes come from seeds at or above ``FIRST_SEED``, which training never uses (the
training configs refuse seeds that reach it). Each scene yields up to four questions
(count, colour or shape, existence, relative position); a reply is scored by the
first answer word it contains from the question's answer set, so "2", "two" and
"There are 2 shapes." all count, and "left of ... right of" counts as its first.
"""

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from llava_model.data_url import image_data_url as data_url
from train.builtin.template_teacher import NUMBER_WORDS
from train.builtin.world import COLOURS, HELD_OUT_STYLE, SHAPES, WorldConfig, make_scene, questions

FIRST_SEED = 1_000_000
RELATIONS = ("left of", "right of", "above", "below")
# main: the canonical world; varied: the same questions on scenes drawn another way (held-out
# backgrounds, a wider range of sizes, off-centre, smooth edges, colours jittered).
SPLITS = {"main": WorldConfig(), "varied": HELD_OUT_STYLE}
CHANCE = {"count": 1 / 4, "colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "exists": 1 / 2, "relation": 1 / 4}


@dataclass(frozen=True)
class BenchItem:
    seed: int
    kind: str
    question: str
    answer: str
    image: Image.Image


def bench_items(n_scenes: int, first_seed: int = FIRST_SEED, world: WorldConfig = WorldConfig()) -> list[BenchItem]:
    items = []
    for seed in range(first_seed, first_seed + n_scenes):
        scene = make_scene(seed, world)
        image = scene.render()
        items += [BenchItem(seed, q.kind, q.text, q.answer, image) for q in questions(scene)]
    return items


def _candidates(answer: str) -> dict[str, str]:
    """Phrase in a reply -> the answer it means, for the answer set ``answer`` is in."""
    if answer.isdigit():
        out = {str(i): str(i) for i in range(10)}
        out.update({w: str(i) for i, w in enumerate(NUMBER_WORDS)})
        return out
    if answer in ("yes", "no"):
        return {"yes": "yes", "no": "no"}
    if answer in RELATIONS:
        return {r: r for r in RELATIONS} | {"left": "left of", "right": "right of"}
    if answer in COLOURS:
        return {c: c for c in COLOURS}
    return {s: s for s in SHAPES} | {f"{s}s": s for s in SHAPES}


def is_correct(reply: str, answer: str) -> bool:
    text = " " + re.sub(r"[^a-z0-9 ]+", " ", reply.lower()) + " "
    found = []
    for phrase, meaning in _candidates(answer).items():
        i = text.find(f" {phrase} ")
        if i >= 0:
            found.append((i, -len(phrase), meaning))
    return bool(found) and min(found)[2] == answer


async def ask_all(client, items: list[BenchItem]) -> list[tuple[str | None, str | None]]:
    """(reply, error) per item, one of the two None: every question through ``client`` (a
    ``train.eval.client.ChatClient``: its retries, backoff and concurrency apply), greedy."""
    import asyncio

    from train.eval.client import ChatError, user_message

    async def one(item: BenchItem) -> tuple[str | None, str | None]:
        try:
            result = await client.chat([user_message(item.question, data_url(item.image))], temperature=0.0)
        except ChatError as exc:
            return None, str(exc)
        return result.text, None

    return list(await asyncio.gather(*(one(item) for item in items)))


def summarise(items: list[BenchItem], replies: list[str]) -> dict:
    per_kind: dict[str, list[int]] = {}
    rows = []
    for item, reply in zip(items, replies, strict=True):
        ok = is_correct(reply, item.answer)
        per_kind.setdefault(item.kind, []).append(int(ok))
        rows.append({"seed": item.seed, "kind": item.kind, "question": item.question,
                     "answer": item.answer, "reply": reply, "correct": ok})
    total = sum(sum(v) for v in per_kind.values())
    chance = sum(CHANCE[i.kind] for i in items) / max(len(items), 1)
    return {
        "questions": len(items),
        "accuracy": total / max(len(items), 1),
        "chance": chance,
        "by_kind": {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(per_kind.items())},
        "rows": rows,
    }


def run(base_url: str, model: str, n_scenes: int = 100, first_seed: int = FIRST_SEED,
        concurrency: int = 8, api_key: str = "none", split: str = "main", max_tokens: int = 12) -> dict:
    """Ask every question of ``n_scenes`` held-out scenes through an OpenAI-compatible server
    (``llava-train bench``); a call that fails for good scores as wrong and is counted."""
    import asyncio

    from train.eval.client import ChatClient, EndpointConfig

    if first_seed < FIRST_SEED:
        raise ValueError(f"shapes-bench seeds start at {FIRST_SEED}; lower seeds are training seeds")
    if split not in SPLITS:
        raise ValueError(f"unknown shapes-bench split {split!r}; known: {sorted(SPLITS)}")
    items = bench_items(n_scenes, first_seed, SPLITS[split])
    endpoint = EndpointConfig(base_url=base_url, model=model, api_key=api_key, concurrency=concurrency,
                              max_tokens=max_tokens, max_retries=2)

    async def go():
        async with ChatClient(endpoint) as client:
            return await ask_all(client, items)

    answers = asyncio.run(go())
    report = summarise(items, [reply or "" for reply, _ in answers])
    report.update(model=model, base_url=base_url, scenes=n_scenes, first_seed=first_seed, split=split,
                  failed_calls=sum(error is not None for _, error in answers))
    return report


def markdown(reports: dict[str, dict]) -> str:
    """One table, a column per named report (e.g. stage 1 and stage 2 side by side)."""
    names = list(reports)
    kinds = sorted({k for r in reports.values() for k in r["by_kind"]})
    lines = ["| question kind | chance | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for kind in kinds:
        cells = [f"{reports[n]['by_kind'].get(kind, {}).get('accuracy', float('nan')):.1%}" for n in names]
        lines.append(f"| {kind} | {CHANCE[kind]:.1%} | " + " | ".join(cells) + " |")
    first = reports[names[0]]
    lines.append(f"| **all ({first['questions']})** | {first['chance']:.1%} | "
                 + " | ".join(f"**{reports[n]['accuracy']:.1%}**" for n in names) + " |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, reports: dict[str, dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(reports, indent=1))
    tmp.replace(out.with_suffix(".json"))
    out.with_suffix(".md").write_text(markdown(reports))


def item_dict(item: BenchItem) -> dict:
    d = asdict(item)
    d.pop("image")
    return d


async def run_eval_task(client, n_scenes: int, first_seed: int | None = None):
    """shapes-bench as a task of the eval harness (``llava-train eval shapes``): a ``TaskReport``,
    from the same questions, transport (``ask_all``) and scorer (``summarise``) as ``run``.

    ``client`` is a ``train.eval.client.ChatClient`` (its retries and concurrency apply); give
    it a small ``max_tokens``, short answers are expected (the CLI's default is 16). Replies
    are scored by ``summarise``, as ``run``'s are; a call that fails for good scores as wrong
    and is counted in ``failed_calls``.
    """
    from train.eval.report import Table, TaskReport

    first = FIRST_SEED if first_seed is None else first_seed
    if first < FIRST_SEED:
        raise ValueError(f"shapes-bench seeds start at {FIRST_SEED}; lower seeds are training seeds")
    items = bench_items(n_scenes, first)
    answers = await ask_all(client, items)
    scored = summarise(items, [reply or "" for reply, _ in answers])
    rows = [{**row, "reply": reply, "error": error}
            for row, (reply, error) in zip(scored["rows"], answers, strict=True)]
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)

    def tally(kind_rows: list[dict]) -> dict:
        n = len(kind_rows)
        correct = sum(r["correct"] for r in kind_rows)
        return {"n": n, "correct": correct, "accuracy": round(100 * correct / n, 2) if n else None,
                "failed_calls": sum(bool(r["error"]) for r in kind_rows)}

    summary = {"scenes": n_scenes, "first_seed": first, **tally(rows),
               "by_kind": {k: tally(v) for k, v in sorted(by_kind.items())}}
    table = [[k, s["n"], s["failed_calls"], 100 * CHANCE[k], s["accuracy"]] for k, s in summary["by_kind"].items()]
    table.append(["all", summary["n"], summary["failed_calls"], None, summary["accuracy"]])
    headers = ["kind", "questions", "failed", "chance %", "accuracy %"]
    return TaskReport("shapes", summary, rows, [Table("shapes-bench accuracy (%)", headers, table)])
