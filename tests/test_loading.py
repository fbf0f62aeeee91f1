"""Loading refuses incomplete or unknown checkpoints; bad requests get clear errors."""

import re
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file, save_file
from vllm import SamplingParams

from llava_model.completeness import missing_tensors
from llava_model.model import IncompleteCheckpointError
from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from llava_model.weights import hub_name
from tests.images import noise


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    build_tiny_llava(out, TinyLlavaSpec())
    return out


def _edit_weights(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_tensor_is_refused(tiny_dir, tmp_path, engine_factory):
    broken = _edit_weights(tiny_dir, tmp_path / "m", lambda s: s.pop("multi_modal_projector.linear_2.bias"))
    with pytest.raises(Exception, match=r"unfilled.*multi_modal_projector\.linear_2\.bias"):
        engine_factory(broken)


@pytest.mark.parametrize(
    "tensor",
    [
        "language_model.model.layers.0.self_attn.k_proj.weight",
        "language_model.model.layers.1.mlp.up_proj.weight",
        "vision_tower.vision_model.encoder.layers.1.self_attn.v_proj.bias",
    ],
)
def test_missing_shard_of_packed_parameter_is_refused(tiny_dir, tmp_path, engine_factory, tensor):
    """vLLM marks a fused parameter (qkv_proj, gate_up_proj) loaded once any one of its
    shards is: a checkpoint lacking one shard must still be refused, naming it."""
    broken = _edit_weights(tiny_dir, tmp_path / "m", lambda s: s.pop(tensor))
    # Only that tensor: the vision layer past the feature layer is skipped on purpose.
    with pytest.raises(IncompleteCheckpointError, match=rf"left 1 tensor\(s\) unfilled: {re.escape(tensor)}$"):
        engine_factory(broken)


def test_missing_qkv_bias_shard_is_refused(tmp_path, engine_factory):
    """Qwen2's fused qkv_proj has a bias: each of its three bias shards is required too."""
    src = tmp_path / "qwen2"
    build_tiny_llava(src, TinyLlavaSpec(text_arch="qwen2", tie_word_embeddings=True))
    tensor = "language_model.model.layers.0.self_attn.k_proj.bias"
    broken = _edit_weights(src, tmp_path / "m", lambda s: s.pop(tensor))
    # Only that tensor: the tied lm_head (no tensor of its own) is not reported.
    with pytest.raises(IncompleteCheckpointError, match=rf"left 1 tensor\(s\) unfilled: {re.escape(tensor)}$"):
        engine_factory(broken)


def test_missing_tensors_rule():
    """Per shard for packed weights and biases; a fused tensor in the checkpoint counts whole."""
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    params = ["m.qkv_proj.weight", "m.qkv_proj.bias", "m.o_proj.weight", "m.qkv_proj.weight_scale"]
    seen = {"m.q_proj.weight", "m.k_proj.weight", "m.v_proj.weight", "m.q_proj.bias", "m.o_proj.weight"}
    loaded = {"m.qkv_proj.weight", "m.qkv_proj.bias", "m.o_proj.weight"}
    # a quantised packed layer's scales are needed per shard too (llava_model.completeness)
    assert missing_tensors(params, loaded, seen, packed) == [
        "m.k_proj.bias", "m.k_proj.weight_scale", "m.q_proj.weight_scale", "m.v_proj.bias", "m.v_proj.weight_scale"
    ]
    fused = {"m.qkv_proj.weight"}
    assert missing_tensors(["m.qkv_proj.weight"], fused, fused, packed) == []
    assert missing_tensors(["m.qkv_proj.weight"], set(), set(), packed) == [
        "m.k_proj.weight", "m.q_proj.weight", "m.v_proj.weight"
    ]


def test_unknown_tensor_is_refused(tiny_dir, tmp_path, engine_factory):
    def add(state):
        state["multi_modal_projector.linear_3.weight"] = state["multi_modal_projector.linear_2.weight"].clone()

    broken = _edit_weights(tiny_dir, tmp_path / "m", add)
    with pytest.raises(Exception, match="linear_3"):
        engine_factory(broken)


def test_hub_name_table():
    table = {
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight": "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "vision_tower.embeddings.patch_embedding.weight": "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.pre_layrnorm.bias": "vision_tower.vision_model.pre_layrnorm.bias",
        "model.language_model.norm.weight": "language_model.model.norm.weight",
        "language_model.model.norm.weight": "language_model.model.norm.weight",
        "lm_head.weight": "language_model.lm_head.weight",
        "language_model.lm_head.weight": "language_model.lm_head.weight",
        "model.multi_modal_projector.linear_1.bias": "multi_modal_projector.linear_1.bias",
    }
    for name, expected in table.items():
        assert hub_name(name) == expected


@pytest.fixture(scope="module")
def llm(tiny_dir):
    from tests.conftest import close_llm, make_llm

    engine = make_llm(tiny_dir)
    yield engine
    close_llm(engine)


class TestRequests:
    @pytest.mark.parametrize("prompt,count", [("<image> <image> two?", 1), ("<image> one?", 2), ("none?", 1)])
    def test_placeholder_count_mismatch_names_both(self, llm, prompt, count):
        placeholders = prompt.count("<image>")
        images = [noise(20, 20, seed=i) for i in range(count)]
        with pytest.raises(ValueError, match=rf"{placeholders} <image> placeholder.*{count} image"):
            llm.generate([{"prompt": prompt, "multi_modal_data": {"image": images}}], SamplingParams(max_tokens=2), use_tqdm=False)

    def test_zero_size_image(self, llm):
        with pytest.raises(ValueError, match="unusable shape|zero size"):
            llm.generate(
                [{"prompt": "<image> ?", "multi_modal_data": {"image": np.zeros((0, 4, 3), np.uint8)}}],
                SamplingParams(max_tokens=2),
                use_tqdm=False,
            )

    def test_engine_still_serves_after_bad_requests(self, llm):
        out = llm.generate([{"prompt": "<image> ok?", "multi_modal_data": {"image": noise(9, 9)}}],
                           SamplingParams(max_tokens=3, min_tokens=3), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 3


PROBE = """
from vllm import ModelRegistry
from vllm.plugins import load_general_plugins
load_general_plugins()
print(ModelRegistry.models["LlavaForConditionalGeneration"].module_name)
"""


@pytest.mark.parametrize("plugins,expected", [(None, "llava_model.model"), ("", "vllm.model_executor.models.llava")])
def test_plugin_registration_and_fallback(plugins, expected):
    import os

    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    if plugins is not None:
        env["VLLM_PLUGINS"] = plugins
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == expected


def _record_encoder_batches(model):
    calls = []
    original = model.encode_images

    def recording(pixel_values):
        calls.append(int(pixel_values.shape[0]))
        return original(pixel_values)

    model.encode_images = recording
    model._encoder_batches = calls
    return True


def test_images_of_different_requests_share_one_vision_batch(llm):
    llm.apply_model(_record_encoder_batches)
    prompts = [
        {"prompt": "<image> a?", "multi_modal_data": {"image": noise(30, 20, seed=1)}},
        {"prompt": "<image> <image> b?", "multi_modal_data": {"image": [noise(8, 40, seed=2), noise(64, 64, seed=3)]}},
        {"prompt": "<image> c?", "multi_modal_data": {"image": noise(33, 31, seed=4)}},
    ]
    llm.generate(prompts, SamplingParams(max_tokens=2), use_tqdm=False)
    batches = llm.apply_model(lambda model: list(model._encoder_batches))[0]
    assert sum(batches) == 4
    assert max(batches) > 2  # more images than any single request holds: batched across requests
