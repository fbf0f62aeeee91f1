"""shapes-bench as a harness task: every question asked over HTTP with its image, scored per kind."""

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.standin_openai import running_standin
from train.builtin.shapes_bench import FIRST_SEED, bench_items, is_correct, run_eval_task
from train.eval.client import ChatClient, EndpointConfig

ROOT = Path(__file__).resolve().parent.parent


def test_shapes_task_scores_replies_per_kind(tmp_path):
    items = bench_items(4, FIRST_SEED)
    first = items[0]
    script = {"rules": [{"match": first.question, "reply": f"It is {first.answer}.", "times": 1}]}

    async def run(standin):
        async with ChatClient(EndpointConfig(base_url=standin.base_url, backoff_s=0.01)) as client:
            return await run_eval_task(client, 4)

    with running_standin(tmp_path, script) as standin:
        report = asyncio.run(run(standin))
        asked = standin.requests()
    # the stand-in says "yes" to everything else
    replies = {(r["seed"], r["question"]): r["reply"] for r in report.rows}
    expected = [is_correct(replies[(i.seed, i.question)], i.answer) for i in items]
    assert report.summary["n"] == len(items) == len(asked) and all(r["images"] == 1 for r in asked)
    assert report.summary["correct"] == sum(expected)
    assert is_correct(replies[(first.seed, first.question)], first.answer)  # the scripted right answer
    for kind, s in report.summary["by_kind"].items():
        kind_items = [(i, e) for i, e in zip(items, expected, strict=True) if i.kind == kind]
        assert s["n"] == len(kind_items) and s["correct"] == sum(e for _, e in kind_items)
    assert first.kind == "count"  # so every "exists" question got "yes": right exactly when the answer is yes
    yes = sum(i.answer == "yes" for i in items if i.kind == "exists")
    assert report.summary["by_kind"]["exists"]["correct"] == yes


def test_shapes_cli_writes_reports(tmp_path):
    with running_standin(tmp_path) as standin:
        proc = subprocess.run(
            [sys.executable, "-m", "train.eval", "eval", "shapes", "--scenes", "1",
             "--base-url", standin.base_url, "--out", str(tmp_path / "out")],
            check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
        asked = standin.requests()
    assert proc.returncode == 0, proc.stderr
    assert asked and all(r["max_tokens"] == 16 for r in asked)  # the task's default: short answers
    report = json.loads((tmp_path / "out" / "shapes.json").read_text())
    assert report["summary"]["first_seed"] == FIRST_SEED and report["meta"]["endpoint"]["model"] == "standin"
    assert "shapes-bench accuracy" in (tmp_path / "out" / "shapes.md").read_text()


def test_data_url_round_trips_the_image():
    from llava_model.data_url import image_data_url

    image = bench_items(1, FIRST_SEED)[0].image
    url = image_data_url(image)
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.tobytes() == image.tobytes() and decoded.size == image.size


def test_bench_runner_and_harness_task_agree_and_splits_differ(tmp_path):
    from train.builtin.shapes_bench import run

    items = bench_items(3, FIRST_SEED)
    script = {"rules": [{"match": items[0].question, "reply": f"{items[0].answer}"}]}
    with running_standin(tmp_path, script) as standin:
        main = run(standin.base_url, "standin", 3, concurrency=2)
        varied = run(standin.base_url, "standin", 3, concurrency=2, split="varied")

        async def task():
            async with ChatClient(EndpointConfig(base_url=standin.base_url, backoff_s=0.01)) as client:
                return await run_eval_task(client, 3)

        harness = asyncio.run(task())
        asked = standin.requests()
    assert main["questions"] == len(items) and main["failed_calls"] == 0 and main["split"] == "main"
    assert round(100 * main["accuracy"], 2) == harness.summary["accuracy"]  # one transport, one scorer
    assert all(r["max_tokens"] == 12 for r in asked[:len(items)])
    from train.builtin.shapes_bench import SPLITS

    held_out = bench_items(3, FIRST_SEED, SPLITS["varied"])
    assert varied["split"] == "varied"
    assert [(r["question"], r["answer"]) for r in varied["rows"]] == [(i.question, i.answer) for i in held_out]
    assert held_out[0].image.tobytes() != items[0].image.tobytes()  # the same seed drawn the other way
