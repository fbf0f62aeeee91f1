"""Generation -> training data -> evaluation against a real HTTP teacher and judge on loopback.

The teacher and judge are the deterministic stand-in (``tests/standin_openai.py``) run as a
subprocess; it injects 429/500 replies, malformed and cut-off replies, and slowness.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.standin_openai import running_standin
from tests.test_datagen_coco import coco_files
from train.datagen.merge import merge
from train.datagen.runner import RunConfig, generate
from train.datagen.store import read_records
from train.datagen.teacher import LLMTeacher
from train.datagen.world_source import world_contexts
from train.eval.client import ChatClient, EndpointConfig
from train.eval.relative import load_questions, run_relative
from train.eval.report import write_report
from train.llava.data import load_samples

ROOT = Path(__file__).resolve().parent.parent


def endpoint(standin, **kw) -> EndpointConfig:
    return EndpointConfig(base_url=standin.base_url, backoff_s=0.01, backoff_max_s=0.05, **kw)


def last_line(ctx) -> str:
    return ctx.text().splitlines()[-1]  # an object line: unique to its scene


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_generate_merge_and_evaluate_with_faults(tmp_path):
    images = tmp_path / "images"
    contexts = world_contexts(4, first_seed=0, render_dir=images)
    script = {"rules": [
        {"match": last_line(contexts[1]), "system": "complex reasoning", "status": 429, "retry_after": "0",
         "times": 2},
        {"match": last_line(contexts[2]), "system": "a conversation", "status": 500, "times": 1},
        {"match": last_line(contexts[3]), "system": "detailed description",
         "reply": "Judging by the captions, there is a shape on a plain background in this picture."},
        {"match": last_line(contexts[0]), "system": "complex reasoning", "finish_reason": "length"},
    ]}
    out = tmp_path / "gen.jsonl"
    with running_standin(tmp_path / "standin", script) as standin:

        async def run():
            async with ChatClient(endpoint(standin, concurrency=3)) as client:
                config = RunConfig(out=out, workers=3, price_in_per_mtok=2.0, price_out_per_mtok=8.0)
                stats = await generate(contexts, LLMTeacher(client), config)
                return stats, client.stats

        stats, http = asyncio.run(run())
        log = standin.requests()

        assert (stats.planned, stats.ok, stats.rejected, stats.failed, stats.retries) == (12, 10, 2, 0, 3)
        assert http.statuses == {200: 13, 429: 2, 500: 1}  # 12 answers + GET /models
        assert sorted(r["status"] for r in log) == [200] * 12 + [429, 429, 500]
        records = {r["key"]: r for r in read_records(out)}
        assert len(records) == 12
        assert "mentions the captions" in records["scene-3/detail"]["reason"]
        assert "cut off at the token limit" in records["scene-0/complex"]["reason"]
        assert records["scene-1/complex"]["retries"] == 2 and records["scene-1/complex"]["status"] == "ok"
        assert stats.prompt_tokens == sum(r["usage"]["prompt_tokens"] for r in records.values()) > 0
        assert stats.completion_tokens == http.completion_tokens > 0
        assert stats.cost == pytest.approx((2 * stats.prompt_tokens + 8 * stats.completion_tokens) / 1e6)
        ok = records["scene-2/conversation"]
        assert ok["conversations"][1]["value"].startswith("I can see a ") and "0." not in ok["reply"]

        merged = merge([out], tmp_path / "train.json")
        assert merged.as_dict()["by_kind"] == {"conversation": 4, "detail": 3, "complex": 3}
        samples = load_samples(tmp_path / "train.json", image_root=images)  # the training package accepts it
        assert len(samples) == 10
        assert all(s.image and s.turns[0].text.startswith("<image>\n") for s in samples)

        async def evaluate():
            async with ChatClient(endpoint(standin)) as model, ChatClient(endpoint(standin)) as judge:
                return await run_relative(load_questions(out), judge, candidate=model, image_root=images)

        n_before = len(standin.requests())
        report = asyncio.run(evaluate())
        asked = standin.requests()[n_before:]
    assert report.summary["overall"] == {"n": 10, "scored": 10, "failed": 0, "reference_mean": 8.0,
                                         "candidate_mean": 6.0, "relative": 75.0}
    assert sum(r["images"] for r in asked) == 10  # each candidate question carried its image
    json_path, md_path = write_report(report, tmp_path / "reports")
    assert json.loads(json_path.read_text())["summary"]["by_kind"]["detail"]["n"] == 3
    assert "| overall | 10 | 0 | 8.00 | 6.00 | 75.00 |" in md_path.read_text()


def test_failed_calls_are_not_written_and_a_rerun_fills_them(tmp_path):
    contexts = world_contexts(3, first_seed=10)
    out = tmp_path / "gen.jsonl"
    down = {"rules": [{"match": last_line(contexts[1]), "status": 503}]}

    async def run(standin):
        async with ChatClient(endpoint(standin, max_retries=1)) as client:
            return await generate(contexts, LLMTeacher(client), RunConfig(out=out))

    with running_standin(tmp_path / "a", down) as standin:
        first = asyncio.run(run(standin))
    assert (first.ok, first.failed) == (6, 3) and "gave up after 1 retries" in first.errors[0]
    assert {r["image_id"] for r in read_records(out)} == {"scene-10", "scene-12"}
    with running_standin(tmp_path / "b") as standin:
        second = asyncio.run(run(standin))
        posts = [r for r in standin.requests() if r["status"] == 200]
    assert (second.skipped, second.ok, second.failed) == (6, 3, 0)
    assert len(posts) == 3 and all(last_line(contexts[1]) in r["user"] for r in posts)
    assert len(read_records(out)) == 9


def test_killed_run_resumes_without_duplicates(tmp_path):
    cap, inst = coco_files(tmp_path)
    out = tmp_path / "gen.jsonl"
    args = ["train.datagen", "datagen", "--coco-captions", str(cap), "--coco-instances", str(inst),
            "--world-scenes", "8", "--out", str(out), "--backoff", "0.01", "--concurrency", "2"]
    total = (2 + 8) * 3
    with running_standin(tmp_path / "slow", {"delay_s": 0.15}) as standin:
        proc = cli(*args, "--base-url", standin.base_url)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text().count("\n") >= 6:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the generator finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    with out.open("a") as f:
        f.write('{"key": "scene-7/complex", "status": "o')  # what a kill in mid-write would leave
    kept = len(read_records(out))
    assert 6 <= kept < total

    with running_standin(tmp_path / "fast") as standin:
        proc = cli(*args, "--base-url", standin.base_url)
        stdout, stderr = proc.communicate(timeout=300)
        posts = [r for r in standin.requests() if r["status"] == 200]
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert summary["skipped"] == kept and summary["ok"] + summary["rejected"] == total - kept
    assert summary["repaired_bytes"] == len('{"key": "scene-7/complex", "status": "o')
    assert len(posts) == total - kept  # only the missing work was asked for
    lines = out.read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines]  # every line is whole JSON
    assert len(keys) == len(set(keys)) == total
    assert {"42/detail", "7/complex", "scene-0/conversation"} <= set(keys)


def test_template_teacher_and_merge_from_the_command_line(tmp_path):
    out, train = tmp_path / "world.jsonl", tmp_path / "train.json"
    proc = cli("train.datagen", "datagen", "--teacher", "template", "--world-scenes", "5", "--kinds",
               "conversation,complex", "--out", str(out), "--world-render-dir", str(tmp_path / "img"))
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["ok_by_kind"] == {"conversation": 5, "complex": 5}
    proc = cli("train.datagen", "merge", str(out), "--out", str(train), "--shuffle-seed", "1")
    stdout, _ = proc.communicate(timeout=120)
    assert json.loads(stdout)["samples"] == 10
    assert len(load_samples(train, image_root=tmp_path / "img")) == 10


def test_bad_annotations_fail_the_command_with_the_record_named(tmp_path):
    empty_box = {"id": 77, "image_id": 42, "category_id": 18, "bbox": [1, 1, 0, 0]}
    cap, inst = coco_files(tmp_path, instances=[empty_box])
    proc = cli("train.datagen", "datagen", "--coco-captions", str(cap), "--coco-instances", str(inst),
               "--out", str(tmp_path / "x.jsonl"), "--base-url", "http://127.0.0.1:9/v1")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "instances.json: annotation 77 (image 42): empty box [1, 1, 0, 0]" in stderr
    assert not (tmp_path / "x.jsonl").exists()
