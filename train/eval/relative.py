"""LLaVA-Bench-style relative score over an OpenAI-compatible candidate and judge.

Questions come from a bench file (``question_id``, ``question``/``text``, ``category``/
``kind``, ``context``, ``reference``/``answer``, optional ``image``; references and contexts
may also be joined from LLaVA-Bench's separate files) or straight from the generator's
JSONL (first question, its answer as the reference). Candidate answers come from a file or
from the candidate endpoint (with the image when there is one).
"""

import asyncio
from dataclasses import dataclass
from pathlib import Path

from llava_model.data_url import image_data_url
from train.eval.client import ChatClient, ChatError, user_message
from train.eval.judge import Judgement, JudgeParseError, judge_messages, parse_scores, relative_scores
from train.eval.report import Table, TaskReport
from train.eval.rows import InputError, read_rows

KIND_ALIASES = {"conv": "conversation", "conversation": "conversation", "detail": "detail",
                "complex": "complex"}


@dataclass(frozen=True)
class BenchQuestion:
    question_id: str
    kind: str
    context: str
    question: str
    reference: str
    image: str | None = None


def _strip_image(text: str) -> str:
    return text.replace("<image>", "").strip()


def _from_datagen(where: str, row: dict) -> BenchQuestion | None:
    if row.get("status") != "ok":
        return None
    turns = row.get("conversations") or []
    if len(turns) < 2 or not row.get("context"):
        raise InputError(f"{where}: generator record {row.get('key')} has no conversation or context")
    return BenchQuestion(row["key"], row["kind"], row["context"], _strip_image(turns[0]["value"]),
                         turns[1]["value"], row.get("image"))


def load_questions(path: Path, *, references: Path | None = None, contexts: Path | None = None,
                   limit: int | None = None) -> list[BenchQuestion]:
    refs, ctxs = {}, {}
    if references:
        refs = {str(r.get("question_id")): r.get("text") or r.get("answer") for _, r in read_rows(references)}
    if contexts:
        ctxs = {r.get("image"): r.get("context") or r.get("caption") for _, r in read_rows(contexts)}
    out: list[BenchQuestion] = []
    for where, row in read_rows(path):
        if "key" in row and "status" in row:  # a generator record
            q = _from_datagen(where, row)
            if q is not None:
                out.append(q)
            continue
        qid = str(row.get("question_id", row.get("id", "")))
        if not qid:
            raise InputError(f"{where}: no question_id")
        question = row.get("question") or row.get("text")
        reference = row.get("reference") or row.get("answer") or refs.get(qid)
        context = row.get("context") or row.get("caption") or ctxs.get(row.get("image"))
        kind = KIND_ALIASES.get(str(row.get("category") or row.get("kind") or ""))
        for name, value in (("question text", question), ("reference answer", reference),
                            ("context", context)):
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"{where}: question {qid}: no {name}")
        if kind is None:
            raise InputError(f"{where}: question {qid}: category must be one of {sorted(KIND_ALIASES)}")
        out.append(BenchQuestion(qid, kind, context, _strip_image(question), reference, row.get("image")))
    if not out:
        raise InputError(f"{path}: no questions")
    return out[:limit] if limit is not None else out


def load_answers(path: Path) -> dict[str, str]:
    answers = {}
    for where, row in read_rows(path):
        qid, text = row.get("question_id"), row.get("text", row.get("answer"))
        if qid is None or not isinstance(text, str):
            raise InputError(f"{where}: an answer needs question_id and text")
        answers[str(qid)] = text
    return answers


async def _answer(q: BenchQuestion, client: ChatClient, image_root: Path | None) -> str:
    url = None
    if q.image and image_root is not None:
        path = Path(image_root) / q.image
        if not path.is_file():
            raise InputError(f"question {q.question_id}: image {path} not found")
        url = image_data_url(path)
    result = await client.chat([user_message(q.question, url)])
    return result.text


async def _judge_one(q: BenchQuestion, answer: str | Exception, judge: ChatClient) -> dict:
    row = {"question_id": q.question_id, "kind": q.kind, "question": q.question, "reference": q.reference,
           "candidate": None, "judge_reply": None, "reference_score": None, "candidate_score": None,
           "error": None}
    if isinstance(answer, Exception):
        row["error"] = f"candidate failed: {answer}"
        return row
    row["candidate"] = answer
    try:
        reply = await judge.chat(judge_messages(q.context, q.question, q.reference, answer))
        row["judge_reply"] = reply.text
        row["reference_score"], row["candidate_score"] = parse_scores(reply.text)
    except ChatError as exc:
        row["error"] = f"judge failed: {exc}"
    except JudgeParseError as exc:
        row["error"] = f"judge reply unparsed: {exc}"
    return row


async def run_relative(questions: list[BenchQuestion], judge: ChatClient, *,
                       candidate: ChatClient | None = None, answers: dict[str, str] | None = None,
                       image_root: Path | None = None) -> TaskReport:
    if candidate is None and answers is None:
        raise ValueError("give candidate answers or a candidate endpoint")

    async def answer(q: BenchQuestion) -> str | Exception:
        if answers is not None:
            return answers.get(q.question_id, InputError(f"no candidate answer for question {q.question_id}"))
        try:
            return await _answer(q, candidate, image_root)
        except ChatError as exc:
            return exc

    async def one(q: BenchQuestion) -> dict:
        return await _judge_one(q, await answer(q), judge)

    rows = await asyncio.gather(*(one(q) for q in questions))
    judgements = [Judgement(r["question_id"], r["kind"], r["reference_score"], r["candidate_score"],
                            r["error"]) for r in rows]
    scores = relative_scores(judgements)
    table = [[kind, s["n"], s["failed"], s["reference_mean"], s["candidate_mean"], s["relative"]]
             for kind, s in [*scores["by_kind"].items(), ("overall", scores["overall"])]]
    failures = [[r["question_id"], r["error"]] for r in rows if r["error"]]
    tables = [Table("Relative score (candidate / reference, %)",
                    ["type", "questions", "failed", "reference", "candidate", "relative %"], table)]
    if failures:
        tables.append(Table("Failures (counted, not dropped)", ["question", "error"], failures))
    return TaskReport("relative", scores, list(rows), tables)
