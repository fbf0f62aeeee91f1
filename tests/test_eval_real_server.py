"""Datagen and evaluation against OUR server (a subprocess) serving a tiny random model.

The model's text is noise, so replies are rejected or unparsed: what this proves is the
wire - real requests, model discovery, token counts, images, 429 back-pressure with
Retry-After, a too-long prompt failing clearly - and that failures are counted, not lost.
"""

import asyncio

import pytest

from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from tests.server_proc import running_server
from train.builtin.shapes_bench import run_eval_task
from train.builtin.symbolic import KINDS
from train.datagen.runner import RunConfig, generate
from train.datagen.store import read_records
from train.datagen.teacher import LLMTeacher
from train.datagen.world_source import world_contexts
from train.eval.client import ChatClient, EndpointConfig
from train.eval.relative import load_questions, run_relative


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ours")
    build_tiny_llava(root / "model", TinyLlavaSpec())
    with running_server(root / "model", "--served-model-name", "tiny", "--max-inflight", "1",
                        log_path=root / "server.log") as (base, _):
        yield base + "/v1"


def short_prompts(root):
    """The prompt layout with one short example, so a prompt fits the tiny model's 1024 tokens."""
    for kind in KINDS:
        (root / kind).mkdir(parents=True)
        (root / kind / "system.txt").write_text(f"Write a {kind} about the image.")
        (root / kind / "example_1.context.txt").write_text("A dog.\n\ndog: [0.1, 0.1, 0.5, 0.5]")
        (root / kind / "example_1.response.txt").write_text("Question:\nWhat is it?\n===\nAnswer:\nA dog.")
    (root / "detail" / "instructions.txt").write_text("Describe the image.\n")
    return root


def endpoint(base: str, **kw) -> EndpointConfig:
    # --max-inflight 1: concurrent calls meet 429s (Retry-After: 1), so leave room for many retries
    return EndpointConfig(**{"base_url": base, "backoff_s": 0.05, "backoff_max_s": 1.0, "max_retries": 60,
                             "max_tokens": 16, **kw})


def test_datagen_then_relative_eval_against_our_server(server, tmp_path):
    contexts = world_contexts(1, first_seed=3)
    out = tmp_path / "gen.jsonl"

    async def run():
        async with ChatClient(endpoint(server, concurrency=1)) as client:
            stats = await generate(contexts, LLMTeacher(client, prompts_dir=short_prompts(tmp_path / "p")),
                                   RunConfig(out=out, workers=1))
            too_long = await generate(contexts, LLMTeacher(client), RunConfig(out=tmp_path / "long.jsonl"))
            return stats, too_long, client

    stats, too_long, client = asyncio.run(run())
    assert client.resolved_model == "tiny"  # discovered at GET /models
    assert stats.ok + stats.rejected == 3 and stats.failed == 0
    assert stats.prompt_tokens > 0 and stats.completion_tokens > 0
    records = read_records(out)
    assert len(records) == 3 and all(r["teacher"] == "llm:tiny" for r in records)
    assert all(r["reason"] for r in records if r["status"] == "rejected")
    # the real teacher prompt is longer than the tiny model's context: a clear 400, not retried
    assert too_long.failed == 3 and too_long.retries == 0
    assert "HTTP 400" in too_long.errors[0] and "the model's limit is 1024" in too_long.errors[0]

    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(
        f'{{"question_id": "{i}", "category": "conv", "question": "What is here?", "reference": "Shapes.", '
        f'"context": {contexts[0].text()!r}}}\n'.replace("'", '"') for i in range(2)))

    async def evaluate():
        async with ChatClient(endpoint(server)) as model, ChatClient(endpoint(server)) as judge:
            return await run_relative(load_questions(bench), judge, candidate=model)

    report = asyncio.run(evaluate())
    overall = report.summary["overall"]
    assert overall["n"] == 2 and overall["scored"] + overall["failed"] == 2, report.rows
    for row in report.rows:
        assert row["candidate"] is not None and row["judge_reply"] is not None, row["error"]
        assert (row["error"] is None) == (row["candidate_score"] is not None)


def test_shapes_with_images_and_back_pressure(server):
    async def run():
        async with ChatClient(endpoint(server, concurrency=4)) as client:
            return await run_eval_task(client, 2), client.stats

    report, stats = asyncio.run(run())
    assert report.summary["n"] >= 2 and report.summary["failed_calls"] == 0
    assert all(isinstance(r["reply"], str) for r in report.rows)
    # --max-inflight 1 answers extra requests with 429 + Retry-After; each one was retried
    assert set(stats.statuses) <= {200, 429} and stats.retries == stats.statuses.get(429, 0)
    assert stats.succeeded == report.summary["n"]
