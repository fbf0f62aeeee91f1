"""Judge-scored relative score: parsing the judge, counting failures, the task over HTTP and its CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.standin_openai import running_standin
from train.eval.judge import Judgement, JudgeParseError, parse_scores, relative_scores
from train.eval.relative import load_questions
from train.eval.rows import InputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("reply, scores", [
    ("8 7", (8, 7)),
    ("8 7\nAssistant 1 was more detailed.", (8, 7)),
    ("8, 7.5", (8, 7.5)),
    ("**9 6**", (9, 6)),
    ("Scores: 8 and 7", (8, 7)),
    ("Scores: 8/10 and 7/10", (8, 7)),
    ("Assistant 1 gets 9/10 since it is precise; Assistant 2 gets 4/10.", (9, 4)),
    ("Assistant 1: 8\nAssistant 2: 7\nBoth were fine.", (8, 7)),
    ("Here is my review.\nAssistant 1 receives a score of 9, while Assistant 2 earns 6.", (9, 6)),
    ("Assistant 2: 5\nAssistant 1: 10", (10, 5)),
])
def test_judge_replies_parse(reply, scores):
    assert parse_scores(reply) == scores


@pytest.mark.parametrize("reply", [
    "", "I cannot judge this.", "7", "9 10 11", "12 3", "0 5",
    "Assistant 1 is better than Assistant 2.",  # "1" and "2" are not scores
    "Assistant 1 mentions 3 dogs, Assistant 2 is vague.",
])
def test_unparseable_judge_replies_raise(reply):
    with pytest.raises(JudgeParseError):
        parse_scores(reply)


def test_relative_score_counts_failures_per_type():
    judgements = [Judgement("1", "conversation", 8, 6), Judgement("2", "conversation", 8, 8),
                  Judgement("3", "detail", 10, 5),
                  Judgement("4", "detail", None, None, "judge reply unparsed")]
    scores = relative_scores(judgements)
    assert scores["overall"] == {"n": 4, "scored": 3, "failed": 1,
                                 "reference_mean": pytest.approx(26 / 3, abs=1e-4),
                                 "candidate_mean": pytest.approx(19 / 3, abs=1e-4), "relative": 73.08}
    assert scores["by_kind"]["conversation"]["relative"] == 87.5
    assert scores["by_kind"]["detail"] == {"n": 2, "scored": 1, "failed": 1, "reference_mean": 10.0,
                                           "candidate_mean": 5.0, "relative": 50.0}
    assert relative_scores([Judgement("9", "complex", None, None, "x")])["overall"]["relative"] is None


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def llava_bench_layout(tmp_path: Path) -> dict[str, Path]:
    """LLaVA-Bench's files: questions, GPT-4 references and contexts kept apart."""
    questions = [{"question_id": i, "image": f"{i}.jpg", "text": f"Question number {i}?", "category": cat}
                 for i, cat in enumerate(["conv", "conv", "detail", "complex", "complex", "detail"], start=1)]
    return {
        "questions": write_jsonl(tmp_path / "questions.jsonl", questions),
        "references": write_jsonl(tmp_path / "refs.jsonl",
                                  [{"question_id": i, "text": f"Reference {i}."} for i in range(1, 7)]),
        "contexts": write_jsonl(tmp_path / "ctx.jsonl", [
            {"image": f"{i}.jpg", "caption": f"A dog.\n\ndog: [0.1, 0.1, 0.{i}, 0.9]"} for i in range(1, 7)]),
        "answers": write_jsonl(tmp_path / "answers.jsonl", [
            {"question_id": 1, "text": "Reference 1."}, {"question_id": 2, "text": "Something else."},
            {"question_id": 3, "text": "A long answer."}, {"question_id": 4, "text": "Maybe."},
            {"question_id": 6, "text": "Six."}]),  # none for 5
    }


def test_relative_cli_over_http_counts_judge_failures(tmp_path):
    files = llava_bench_layout(tmp_path)
    script = {"rules": [
        {"match": "Question number 3?", "reply": "Scores: 9/10 and 7/10. Both fine."},
        {"match": "Question number 4?", "reply": "I would rather not say."},
        {"match": "Question number 6?", "status": 500},
    ]}
    with running_standin(tmp_path / "judge", script) as judge:
        proc = subprocess.run(
            [sys.executable, "-m", "train.eval", "eval", "relative", "--questions", str(files["questions"]),
             "--references", str(files["references"]), "--contexts", str(files["contexts"]),
             "--answers", str(files["answers"]), "--judge-base-url", judge.base_url, "--judge-retries", "1",
             "--judge-backoff", "0.01", "--out", str(tmp_path / "out")],
            check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
        judged = judge.requests()
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "relative.json").read_text())
    overall = report["summary"]["overall"]
    # scored: 1 (8, 8), 2 (8, 6), 3 (9, 7); failed: 4 unparsed, 5 no answer, 6 judge down
    assert (overall["n"], overall["scored"], overall["failed"]) == (6, 3, 3)
    assert overall["relative"] == round(100 * 21 / 25, 2)
    errors = {r["question_id"]: r["error"] for r in report["rows"] if r["error"]}
    assert "judge reply unparsed" in errors["4"] and "no candidate answer" in errors["5"]
    assert "judge failed" in errors["6"] and "HTTP 500" in errors["6"]
    assert report["summary"]["by_kind"]["conversation"]["relative"] == 87.5
    assert report["meta"]["judge"]["http"]["retries"] == 1
    assert len([r for r in judged if r["status"] == 500]) == 2  # first try + one retry
    first = next(r for r in judged if "Question number 1?" in r["user"])
    assert "dog: [0.1, 0.1, 0.1, 0.9]" in first["user"] and "Reference 1." in first["user"]
    md = (tmp_path / "out" / "relative.md").read_text()
    assert "Failures (counted, not dropped)" in md and "| overall | 6 | 3 |" in md


def test_bad_bench_input_names_the_record(tmp_path):
    files = llava_bench_layout(tmp_path)
    with pytest.raises(InputError, match=r"questions.jsonl:2: question 2: no reference answer"):
        load_questions(files["questions"], contexts=files["contexts"], references=write_jsonl(
            tmp_path / "few.jsonl", [{"question_id": 1, "text": "Only one."}]))
    with pytest.raises(InputError, match=r"questions.jsonl:1: question 1: no context"):
        load_questions(files["questions"], references=files["references"])
    (tmp_path / "broken.jsonl").write_text('{"question_id": 1}\n{"question_id": \n')
    with pytest.raises(InputError, match=r"broken.jsonl:2: not valid JSON"):
        load_questions(tmp_path / "broken.jsonl")
