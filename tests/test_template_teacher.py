"""The template teacher (symbolic context only) agrees with the world's exact ground truth."""

import json
import re
import subprocess
import sys

import pytest

from train.builtin import shapes_bench
from train.builtin.symbolic import KINDS, scene_context
from train.builtin.template_teacher import template_conversation
from train.builtin.world import make_scene, questions
from train.builtin.world_data import WorldDataConfig, write_world_data


@pytest.mark.parametrize("seed", range(30))
def test_short_answers_match_the_world(seed):
    scene = make_scene(seed)
    truth = {q.text: q.answer for s in range(20) for q in questions(scene, seed=s)}
    conv = template_conversation(scene_context(scene), "conversation", seed)
    assert conv[0]["from"] == "human" and len(conv) % 2 == 0 and "<image>" not in json.dumps(conv)
    for q, a in zip(conv[::2], conv[1::2]):
        if q["value"] in truth:  # a shapes-bench-style question: the exact same answer
            assert a["value"] == truth[q["value"]], q["value"]


@pytest.mark.parametrize("kind", KINDS)
def test_never_mentions_captions_or_coordinates(kind):
    for seed in range(20):
        text = json.dumps(template_conversation(scene_context(make_scene(seed)), kind, seed)).lower()
        assert "caption" not in text and "coordinate" not in text and not re.search(r"\d\.\d{2}", text)


def test_deterministic_and_unknown_kind():
    ctx = scene_context(make_scene(4))
    assert template_conversation(ctx, "detail") == template_conversation(ctx, "detail")
    with pytest.raises(ValueError, match="unknown response type"):
        template_conversation(ctx, "poem")


def test_training_data_never_uses_bench_seeds(tmp_path):
    with pytest.raises(ValueError, match="below"):
        WorldDataConfig(scenes=10, first_seed=shapes_bench.FIRST_SEED - 5)
    paths = write_world_data(tmp_path, WorldDataConfig(scenes=5))
    ids = [s["id"] for s in json.loads(paths["instruct"].read_text())]
    assert all(int(i.split("-")[1]) < shapes_bench.FIRST_SEED for i in ids)
    assert all(item.seed >= shapes_bench.FIRST_SEED for item in shapes_bench.bench_items(3))


@pytest.mark.parametrize(("reply", "answer", "ok"), [
    ("3", "3", True), ("There are three shapes.", "3", True), ("4", "3", False), ("", "3", False),
    ("left of", "left of", True), ("Left.", "left of", True), ("right of, then left of", "left of", False),
    ("Red.", "red", True), ("blue", "red", False), ("circles", "circle", True),
    ("yes", "yes", True), ("No, there is none.", "no", True), ("nothing", "no", False),
])
def test_bench_scoring(reply, answer, ok):
    assert shapes_bench.is_correct(reply, answer) is ok


def test_cli_errors_are_clear(tmp_path):
    run = [sys.executable, "-m", "train"]
    bad = subprocess.run([*run, "stage2", "--model", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode != 0 and "--data is required" in bad.stderr
    bad = subprocess.run([*run, "stage1", "--preset", "llava15-stage2", "--model", "m", "--data", "d",
                          "--output-dir", "o"], capture_output=True, text=True)
    assert bad.returncode != 0 and "stage-2 preset" in bad.stderr
    bad = subprocess.run([*run, "stage1", "--model", str(tmp_path), "--data", str(tmp_path / "none.json"),
                          "--output-dir", str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 2 and "llava-train stage1: error:" in bad.stderr
