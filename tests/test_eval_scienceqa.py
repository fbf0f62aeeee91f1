"""ScienceQA-style multiple choice: prompt formats, answer parsing, accuracy splits, judge ensemble."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.standin_openai import running_standin
from train.eval.rows import InputError
from train.eval.scienceqa_format import Problem, build_prompt, load_problems, parse_choice

ROOT = Path(__file__).resolve().parent.parent

# The stand-in answers with the longest option (the first on ties).
PROBLEMS = {
    "p1": {"question": "Which animal is bigger?", "choices": ["cat", "elephant"], "answer": 1,
           "hint": "Think of size.", "image": None, "subject": "natural science", "grade": "grade3",
           "split": "test"},  # right
    "p2": {"question": "Which city is shown?", "choices": ["Paris", "Rome"], "answer": 1, "hint": "",
           "image": "image.png", "subject": "social science", "grade": "grade5", "split": "test"},  # wrong
    "p3": {"question": "Which word is longest?", "choices": ["a", "bb", "ccc"], "answer": 2, "hint": "",
           "image": None, "subject": "language science", "grade": "grade2", "split": "test"},      # right
    "p4": {"question": "Which label fits the picture?", "choices": ["short", "a longer option"], "answer": 0,
           "hint": "", "image": "image.png", "subject": "natural science", "grade": "grade9",
           "split": "test"},  # wrong
    "p5": {"question": "A training problem?", "choices": ["x", "y"], "answer": 0, "hint": "", "image": None,
           "subject": "natural science", "grade": "grade1", "split": "train"},
}


@pytest.mark.parametrize("reply, letter", [
    ("The answer is B.", "B"), ("Because of size, the answer is (C).", "C"), ("B", "B"), ("(A)", "A"),
    ("C.", "C"), ("B. elephant", "B"), ("Answer: A", "A"), ("elephant", "B"), ("Elephant.", "B"),
    ("The answer is A. On reflection, the answer is C.", "C"),
    ("The answer is D.", None), ("I am not sure.", None), ("The answer is a cat.", None), ("", None),
    ("A cat is smaller.", None),
])
def test_answer_parsing(reply, letter):
    assert parse_choice(reply, 3, ("cat", "elephant", "mouse")) == letter


def test_prompt_formats():
    p = Problem("x", "Which is hot?", ("ice", "fire"), 1, hint="")
    cqm = build_prompt(p, "CQM-A")
    assert cqm.startswith("Context: N/A\nQuestion: Which is hot?\nOptions: (A) ice (B) fire\n")
    assert "'The answer is X.'" in cqm
    lea = build_prompt(Problem("x", "Q?", ("a", "b"), 0, hint="Some text."), "QCM-LEA")
    assert lea.index("Question: Q?") < lea.index("Context: Some text.") and "step by step" in lea
    assert build_prompt(p, "letter") == ("Which is hot?\nA. ice\nB. fire\n"
                                         "Answer with the option's letter from the given choices directly.")
    with pytest.raises(ValueError, match="unknown prompt format"):
        build_prompt(p, "XYZ")


def test_problem_categories(tmp_path):
    path = tmp_path / "problems.json"
    path.write_text(json.dumps(PROBLEMS))
    problems = {p.pid: p for p in load_problems(path, split="test")}
    assert sorted(problems) == ["p1", "p2", "p3", "p4"]
    assert [problems[k].context_type for k in ("p1", "p2", "p3")] == ["TXT", "IMG", "NO"]
    assert problems["p4"].grade_band == "G7-12" and problems["p1"].letter == "B"


@pytest.mark.parametrize("change, message", [
    ({"answer": 5}, r"problems.json\[p1\]: problem p1: answer must be an option index"),
    ({"choices": ["only"]}, r"problem p1: choices must be a list of 2-10 options"),
    ({"question": ""}, r"problem p1: no question"),
])
def test_bad_problems_are_named(tmp_path, change, message):
    path = tmp_path / "problems.json"
    path.write_text(json.dumps({"p1": {**PROBLEMS["p1"], **change}}))
    with pytest.raises(InputError, match=message):
        load_problems(path)


def setup_files(tmp_path: Path) -> tuple[Path, Path]:
    problems = tmp_path / "problems.json"
    problems.write_text(json.dumps(PROBLEMS))
    images = tmp_path / "images"
    for pid in ("p2", "p4"):
        (images / "test" / pid).mkdir(parents=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(images / "test" / pid / "image.png")
    return problems, images


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.eval", "eval", "scienceqa", *args], check=False,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fmt", ["CQM-A", "letter"])
def test_accuracy_by_subject_context_and_grade(tmp_path, fmt):
    problems, images = setup_files(tmp_path)
    with running_standin(tmp_path / "model") as model:
        proc = run_cli("--problems", str(problems), "--split", "test", "--image-root", str(images),
                       "--format", fmt, "--base-url", model.base_url, "--out", str(tmp_path / "out"))
        asked = model.requests()
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "scienceqa.json").read_text())
    m = report["summary"]["model"]
    assert (m["n"], m["correct"], m["accuracy"], m["unparsed"]) == (4, 2, 50.0, 0)
    assert {k: v["accuracy"] for k, v in m["by_subject"].items()} == {"LAN": 100.0, "NAT": 50.0, "SOC": 0.0}
    assert {k: v["accuracy"] for k, v in m["by_context"].items()} == {"IMG": 0.0, "NO": 100.0, "TXT": 100.0}
    assert {k: v["accuracy"] for k, v in m["by_grade"].items()} == {"G1-6": 66.67, "G7-12": 0.0}
    assert sorted(r["images"] for r in asked) == [0, 0, 1, 1]  # IMG problems carry their image
    replies = [r["reply"] for r in report["rows"]]
    if fmt == "letter":
        assert all(len(r) == 1 for r in replies)
    else:
        assert all("The answer is" in r for r in replies)
    md = (tmp_path / "out" / "scienceqa.md").read_text()
    assert "| context: IMG | 0.00 |" in md and "| overall | 50.00 |" in md


def test_unparsed_reply_counts_as_wrong(tmp_path):
    problems, _ = setup_files(tmp_path)
    script = {"rules": [{"match": "longest", "reply": "No idea, sorry."}]}
    with running_standin(tmp_path / "model", script) as model:
        proc = run_cli("--problems", str(problems), "--split", "test", "--base-url", model.base_url,
                       "--max-tokens", "64", "--out", str(tmp_path / "out"))
        asked = model.requests()
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "out" / "scienceqa.json").read_text())["summary"]["model"]
    assert (m["n"], m["correct"], m["unparsed"]) == (4, 1, 1)
    assert all(r["images"] == 0 for r in asked)  # no --image-root: text only
    assert all(r["max_tokens"] == 64 for r in asked)


def test_judge_ensemble_on_disagreements(tmp_path):
    problems, images = setup_files(tmp_path)
    second = tmp_path / "second.jsonl"
    second.write_text("".join(json.dumps(r) + "\n" for r in [
        {"pid": "p1", "reply": "The answer is B."},   # agrees with the model: no judge
        {"pid": "p2", "reply": "The answer is B."},   # judge sides with answer 2: right
        {"pid": "p3", "reply": "The answer is A."},   # judge reply unparseable: the model's C stands (right)
        {"pid": "p4", "reply": "A"},                  # judge sides with answer 2: right
    ]))
    script = {"rules": [{"match": "Which word is longest?", "system": "expert teacher",
                         "reply": "Hard to say."}]}
    with running_standin(tmp_path / "model") as model, running_standin(tmp_path / "judge", script) as judge:
        proc = run_cli("--problems", str(problems), "--split", "test", "--image-root", str(images),
                       "--base-url", model.base_url, "--judge-base-url", judge.base_url,
                       "--second-predictions", str(second), "--out", str(tmp_path / "out"))
        judged = judge.requests()
        # a report of one run is a valid --second-predictions for another: the same model agrees with itself
        again = run_cli("--problems", str(problems), "--split", "test", "--image-root", str(images),
                        "--base-url", model.base_url, "--judge-base-url", judge.base_url,
                        "--second-predictions", str(tmp_path / "out" / "scienceqa.json"),
                        "--out", str(tmp_path / "o2"))
        assert len(judge.requests()) == len(judged)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "scienceqa.json").read_text())["summary"]
    assert summary["model"]["accuracy"] == 50.0 and summary["second"]["accuracy"] == 75.0
    assert summary["ensemble"]["accuracy"] == 100.0
    assert (summary["disagreements"], summary["judge_failures"]) == (3, 1)
    assert len(judged) == 3 and all("[Answer 1]" in r["user"] and "[Answer 2]" in r["user"] for r in judged)
    assert again.returncode == 0, again.stderr
    summary = json.loads((tmp_path / "o2" / "scienceqa.json").read_text())["summary"]
    assert summary["disagreements"] == 0
    assert summary["ensemble"]["accuracy"] == summary["model"]["accuracy"] == 50.0


def test_missing_second_predictions_fail_clearly(tmp_path):
    problems, _ = setup_files(tmp_path)
    proc = run_cli("--problems", str(problems), "--base-url", "http://127.0.0.1:9/v1",
                   "--second-predictions", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "missing.json: cannot read" in proc.stderr
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"pid": "p1", "reply": "B"}) + "\n")
    proc = run_cli("--problems", str(problems), "--split", "test", "--base-url", "http://127.0.0.1:9/v1",
                   "--second-predictions", str(partial), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "no prediction for problem(s) p2, p3, p4" in proc.stderr
