"""Stage 2 under torchrun: 2 processes (gloo on CPU) against 1 with the same global batch.

Both ranks must end with the same weights, and loss and weights must match the
single-process run, whose global batch of 8 comes from 2 accumulated micro-batches.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from server.child_process import free_port
from train.builtin.world_data import WorldDataConfig, write_world_data


def _torchrun(procs: int, root, out) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
           f"--master_port={free_port()}", "-m", "train", "stage2",
           "--model", str(root / "model"), "--data", str(root / "world" / "instruct.json"),
           "--image-root", str(root / "world"), "--output-dir", str(out), "--global-batch", "8",
           "--per-device-batch", "4", "--max-steps", "3", "--lr", "1e-3", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    build_tiny_llava(root / "model", TinyLlavaSpec())
    write_world_data(root / "world", WorldDataConfig(scenes=40))
    return root, _torchrun(1, root, root / "one"), _torchrun(2, root, root / "two")


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_both_ranks_end_with_the_same_weights(runs):
    _, _, two = runs
    assert two["processes"] == 2
    digests = two["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_two_processes_match_one_with_the_same_global_batch(runs):
    root, one, two = runs
    assert one["processes"] == 1
    assert _losses(root / "two") == pytest.approx(_losses(root / "one"), rel=1e-5)
    a, b = load_file(str(root / "one" / "final" / "model.safetensors")), load_file(str(root / "two" / "final" / "model.safetensors"))
    base = load_file(str(root / "model" / "model.safetensors"))
    moved = [k for k in a if not torch.equal(a[k], base[k])]
    assert moved  # training really changed the weights
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
