"""ScienceQA-style multiple choice over an OpenAI-compatible endpoint.

Accuracy overall and by subject, context type (IMG/TXT/NO) and grade band; an unparsed
reply counts as wrong (and is counted). With a second model's predictions, the judge is
asked again wherever the two disagree, given both answers, and its letter is final - the
paper's ensemble with GPT-4 as the judge.
"""

import asyncio
from collections import defaultdict
from pathlib import Path

from llava_model.data_url import image_data_url
from train.eval.client import ChatClient, ChatError, user_message
from train.eval.report import Table, TaskReport
from train.eval.rows import InputError, read_rows
from train.eval.scienceqa_format import SUBJECTS, Problem, build_prompt, image_path, parse_choice

JUDGE_SYSTEM = "You are an expert teacher who answers multiple-choice science questions carefully."


def load_predictions(path: Path) -> dict[str, dict]:
    """A previous run's rows (``scienceqa.json`` or a predictions JSONL): pid -> {reply, prediction}."""
    rows = read_rows(path)
    if len(rows) == 1 and "rows" in rows[0][1]:  # a whole report
        rows = [(f"{path.name}:rows[{i}]", r) for i, r in enumerate(rows[0][1]["rows"])]
    out = {}
    for where, row in rows:
        if "pid" not in row:
            raise InputError(f"{where}: a prediction needs a pid")
        out[str(row["pid"])] = {"reply": row.get("reply", ""), "prediction": row.get("prediction")}
    return out


def ensemble_messages(problem: Problem, reply_1: str, reply_2: str) -> list[dict]:
    prompt = build_prompt(problem, "QCM-LEA").rsplit("\n", 1)[0]  # without the answer instruction
    user = (f"{prompt}\n\nTwo students answered this question.\n[Answer 1]\n{reply_1}\n[End of Answer 1]\n"
            f"[Answer 2]\n{reply_2}\n[End of Answer 2]\n\nThey disagree. Weigh both, decide which option is "
            "correct, and finish with 'The answer is X.', where X is the letter of the correct option.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def _accuracy(rows: list[dict], key: str) -> dict:
    def acc(items):
        n = len(items)
        correct = sum(r[key] == r["answer"] for r in items)
        return {"n": n, "correct": correct, "accuracy": round(100 * correct / n, 2) if n else None}

    groups = {"subject": defaultdict(list), "context": defaultdict(list), "grade": defaultdict(list)}
    for r in rows:
        for name in groups:
            if r[name]:
                groups[name][r[name]].append(r)
    return {**acc(rows), "unparsed": sum(r[key] is None for r in rows),
            **{f"by_{name}": {k: acc(v) for k, v in sorted(g.items())} for name, g in groups.items()}}


async def _ask(problem: Problem, client: ChatClient, fmt: str, image_root: Path | None) -> dict:
    url = image_data_url(image_path(problem, image_root)) if problem.image and image_root else None
    row = {"pid": problem.pid, "answer": problem.letter,
           "subject": SUBJECTS.get(problem.subject, problem.subject), "context": problem.context_type,
           "grade": problem.grade_band, "reply": None, "prediction": None, "error": None}
    try:
        result = await client.chat([user_message(build_prompt(problem, fmt), url)])
    except ChatError as exc:
        row["error"] = str(exc)
        return row
    row["reply"] = result.text
    row["prediction"] = parse_choice(result.text, len(problem.choices), problem.choices)
    return row


async def _reconcile(problem: Problem, row: dict, second: dict | None, judge: ChatClient | None) -> None:
    if second is None:
        row.update(second_prediction=None, final=row["prediction"], judged=False)
        return
    other = second.get("prediction") or parse_choice(second.get("reply", ""), len(problem.choices),
                                                     problem.choices)
    row.update(second_prediction=other, final=row["prediction"], judged=False, judge_reply=None)
    if other == row["prediction"] or judge is None:
        return
    row["judged"] = True
    try:
        reply = await judge.chat(ensemble_messages(problem, row["reply"] or "", second.get("reply") or ""))
    except ChatError as exc:
        row["judge_error"] = str(exc)
        return
    row["judge_reply"] = reply.text
    choice = parse_choice(reply.text, len(problem.choices), problem.choices)
    if choice is None:
        row["judge_error"] = "judge named no option"
    else:
        row["final"] = choice


async def run_scienceqa(problems: list[Problem], client: ChatClient, *, fmt: str = "CQM-A",
                        image_root: Path | None = None, second: dict[str, dict] | None = None,
                        judge: ChatClient | None = None) -> TaskReport:
    async def one(problem: Problem) -> dict:
        row = await _ask(problem, client, fmt, image_root)
        await _reconcile(problem, row, None if second is None else second.get(problem.pid), judge)
        return row

    if second is not None:
        missing = [p.pid for p in problems if p.pid not in second]
        if missing:
            raise InputError(f"the second model has no prediction for problem(s) {', '.join(missing[:10])}")
    rows = list(await asyncio.gather(*(one(p) for p in problems)))
    summary = {"format": fmt, "model": _accuracy(rows, "prediction"),
               "failed_calls": sum(bool(r["error"]) for r in rows)}
    if second is not None:
        summary["second"] = _accuracy(rows, "second_prediction")
        summary["ensemble"] = _accuracy(rows, "final")
        summary["disagreements"] = sum(r["judged"] for r in rows)
        summary["judge_failures"] = sum("judge_error" in r for r in rows)
    return TaskReport("scienceqa", summary, rows, _tables(summary))


def _tables(summary: dict) -> list[Table]:
    runs = [name for name in ("model", "second", "ensemble") if name in summary]
    headers = ["split", *runs]
    lines = [["overall", *(summary[r]["accuracy"] for r in runs)],
             ["unparsed", *(summary[r]["unparsed"] for r in runs)]]
    for group in ("subject", "context", "grade"):
        for key in summary["model"][f"by_{group}"]:
            lines.append([f"{group}: {key}", *(summary[r][f"by_{group}"][key]["accuracy"] for r in runs)])
    title = f"Accuracy (%), {summary['model']['n']} problems, format {summary['format']}"
    tables = [Table(title, headers, lines)]
    if "ensemble" in summary:
        tables.append(Table("Ensemble", ["disagreements sent to the judge", "judge failures"],
                            [[summary["disagreements"], summary["judge_failures"]]]))
    return tables

