"""The offline generation CLI the README shows, run as a user would."""

import os
import subprocess
import sys
from pathlib import Path

from llava_model.generate import vicuna_prompt
from llava_model.tiny import main as build_tiny

DEMO_IMAGE = Path(__file__).parent / "data" / "demo.png"


def test_vicuna_prompt_places_images_before_question():
    prompt = vicuna_prompt("What is it?", 2)
    assert prompt.endswith("USER: <image>\n<image>\nWhat is it? ASSISTANT:")
    assert prompt.startswith("A chat between a curious user")


def test_generate_cli_prints_text(tmp_path):
    build_tiny(["--out", str(tmp_path / "m")])
    cmd = [
        sys.executable, "-m", "llava_model.generate", "--model", str(tmp_path / "m"), "--eager",
        "--max-model-len", "512", "--image", str(DEMO_IMAGE), "--prompt", "What is in the image?",
        "--max-tokens", "8", "--temperature", "0",
    ]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()  # 8 tokens of a random model: some text


def test_generate_cli_bad_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"definitely not a jpeg")
    cmd = [sys.executable, "-m", "llava_model.generate", "--model", str(tmp_path), "--image", str(bad), "--prompt", "x"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "cannot decode image" in result.stderr
