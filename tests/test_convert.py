"""The original-LLaVA converter, on a synthetic original checkpoint built in code."""

import json

import pytest
import torch
from vllm import SamplingParams

from llava_model.convert import ConversionError, ConvertOptions, convert, rename_original
from llava_model.image_processing import ImageProcessingConfig
from llava_model.tiny import TinyLlavaSpec, build_tokenizer
from tests.images import photo_like
from tests.reference import hf_greedy

SPEC = TinyLlavaSpec(image_size=32, patch_size=8, aspect_mode="pad", resampler="torch")
ORIGINAL_SPECIALS = ["<unk>", "<s>", "</s>"]  # no <image>, no <pad>: as Vicuna ships


def make_original(root, *, projector="mlp2x_gelu", newline=False, **mm_overrides):
    """An original-repo LLaVA checkpoint (torch .bin) plus a separate CLIP directory;
    ``newline``: with LLaVA-NeXT's ``model.image_newline``."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    src, clip = root / "original", root / "clip"
    tokenizer = build_tokenizer(src, special_tokens=ORIGINAL_SPECIALS)
    text = LlamaConfig(
        hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64, intermediate_size=256,
        num_hidden_layers=2, vocab_size=len(tokenizer), initializer_range=0.08,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    lm = LlamaForCausalLM(text)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                              image_size=SPEC.image_size, patch_size=SPEC.patch_size, initializer_range=0.08)
    CLIPVisionModel(vision).save_pretrained(clip)
    state = dict(lm.state_dict())
    if projector == "mlp2x_gelu":
        state.update({
            "model.mm_projector.0.weight": torch.randn(128, 64) * 0.1, "model.mm_projector.0.bias": torch.randn(128) * 0.1,
            "model.mm_projector.2.weight": torch.randn(128, 128) * 0.1, "model.mm_projector.2.bias": torch.randn(128) * 0.1,
        })
    else:
        state.update({"model.mm_projector.weight": torch.randn(128, 64) * 0.1, "model.mm_projector.bias": torch.randn(128) * 0.1})
    if newline:
        state["model.image_newline"] = torch.randn(128)
    torch.save(state, src / "pytorch_model.bin")
    cfg = text.to_dict() | {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 64,
        "mm_projector_type": projector, "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    } | mm_overrides
    (src / "config.json").write_text(json.dumps(cfg))
    return src, clip, state


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    src, clip, state = make_original(root)
    out = convert(ConvertOptions(src, clip, root / "hf"))
    return out, state


def test_converted_loads_in_transformers_with_every_tensor(converted):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    out, state = converted
    model, info = LlavaForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    sd = model.state_dict()
    torch.testing.assert_close(sd["model.multi_modal_projector.linear_2.weight"], state["model.mm_projector.2.weight"])
    torch.testing.assert_close(
        sd["model.language_model.layers.1.mlp.up_proj.weight"], state["model.layers.1.mlp.up_proj.weight"]
    )
    old = state["model.embed_tokens.weight"]
    emb = sd["model.language_model.embed_tokens.weight"]
    tok = AutoTokenizer.from_pretrained(out)
    assert emb.shape[0] % 64 == 0 and emb.shape[0] >= len(tok) > old.shape[0]
    torch.testing.assert_close(emb[: old.shape[0]], old)
    torch.testing.assert_close(emb[old.shape[0]], old.mean(dim=0))
    config = json.loads((out / "config.json").read_text())
    assert config["image_token_index"] == tok.convert_tokens_to_ids("<image>")
    assert tok.pad_token == "<pad>"
    assert config["vision_feature_select_strategy"] == "default" and config["projector_type"] == "mlp2x_gelu"
    assert json.loads((out / "preprocessor_config.json").read_text())["image_aspect_ratio"] == "pad"


def test_converted_runs_in_vllm_like_transformers(converted, engine_factory):
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    out, _ = converted
    model = LlavaForConditionalGeneration.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    prompt = "USER: <image>\nWhat is in the image? ASSISTANT:"
    image = photo_like(45, 30, seed=3)
    llm = engine_factory(out)
    params = SamplingParams(max_tokens=32, min_tokens=32, temperature=0.0)
    ours = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}], params, use_tqdm=False)
    assert list(ours[0].outputs[0].token_ids) == hf_greedy(model, tok, prompt, [image], SPEC, 32)


def test_rename_table():
    assert rename_original("model.mm_projector.weight", "linear") == "multi_modal_projector.linear_1.weight"
    assert rename_original("model.mm_projector.2.bias", "mlp2x_gelu") == "multi_modal_projector.linear_2.bias"
    assert rename_original("model.layers.0.self_attn.q_proj.weight", "linear") == (
        "language_model.model.layers.0.self_attn.q_proj.weight"
    )
    assert rename_original("model.vision_tower.vision_tower.vision_model.pre_layrnorm.bias", "linear") == (
        "vision_tower.vision_model.pre_layrnorm.bias"
    )
    assert rename_original("model.layers.0.self_attn.rotary_emb.inv_freq", "linear") is None
    with pytest.raises(ConversionError, match="does not fit"):
        rename_original("model.mm_projector.weight", "mlp2x_gelu")
    with pytest.raises(ConversionError, match="unexpected tensor"):
        rename_original("something.else", "linear")


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"mm_use_im_start_end": True}, "mm_use_im_start_end"),
        ({"mm_projector_type": "mlp3x_gelu"}, "mlp3x_gelu"),
        ({"mm_vision_select_feature": "cls"}, "mm_vision_select_feature"),
        ({"image_aspect_ratio": "anyres_max_9", "mm_patch_merge_type": "spatial_unpad"}, "anyres_max_9"),
        ({"image_aspect_ratio": "anyres", "image_grid_pinpoints": [[64, 32]]}, "mm_patch_merge_type 'flat'"),
        ({"image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad", "image_grid_pinpoints": "(1x1),(2x2)"},
         "image_grid_pinpoints"),
        ({"image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad", "image_grid_pinpoints": [[64, 32]]},
         "model.image_newline"),
    ],
)
def test_unsupported_sources_fail_clearly_and_write_nothing(tmp_path, overrides, message):
    src, clip, _ = make_original(tmp_path, **overrides)
    with pytest.raises(ConversionError, match=message):
        convert(ConvertOptions(src, clip, tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()


def test_missing_vision_tower_is_named(tmp_path):
    src, _, _ = make_original(tmp_path, projector="linear")
    with pytest.raises(ConversionError, match="--vision-tower"):
        convert(ConvertOptions(src, None, tmp_path / "hf"))


@pytest.mark.parametrize("original,expected", [("pad", "pad"), ("square", "crop"), (None, "crop")])
def test_aspect_ratio_means_the_same_to_converter_and_loader(tmp_path, original, expected):
    """The converter's written mode, and the loader reading either that file or the
    original value, agree: ``square`` (and no value) is CLIP's resize + centre crop."""
    src, clip, _ = make_original(tmp_path, projector="linear")
    cfg = json.loads((src / "config.json").read_text())
    cfg.pop("image_aspect_ratio")
    if original is not None:
        cfg["image_aspect_ratio"] = original
    (src / "config.json").write_text(json.dumps(cfg))
    out = convert(ConvertOptions(src, clip, tmp_path / "hf"))
    written = json.loads((out / "preprocessor_config.json").read_text())
    from_file = ImageProcessingConfig.from_hf_dict(written, SPEC.image_size).aspect_mode
    raw = {} if original is None else {"image_aspect_ratio": original}
    from_original = ImageProcessingConfig.from_hf_dict(raw, SPEC.image_size).aspect_mode
    assert written["image_aspect_ratio"] == from_file == from_original == expected
    assert written["do_pad"] == (expected == "pad")


# Original pinpoints are (width, height): one wide 2x1 grid and one tall 1x3 grid.
ORIGINAL_NEXT = {"image_aspect_ratio": "anyres", "mm_patch_merge_type": "spatial_unpad",
                 "image_grid_pinpoints": [[64, 32], [32, 96]]}


def test_original_anyres_becomes_llava_next(tmp_path, engine_factory):
    """An original LLaVA-NeXT checkpoint converts to the NeXT layout: every tensor and the
    newline carried over, pinpoints as (height, width), and served like transformers."""
    from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

    from llava_model.anyres import AnyresLayout
    from tests.reference import hf_next_greedy

    src, clip, state = make_original(tmp_path, newline=True, **ORIGINAL_NEXT)
    out = convert(ConvertOptions(src, clip, tmp_path / "hf"))
    model, info = LlavaNextForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(model.model.image_newline.data, state["model.image_newline"])
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlavaNextForConditionalGeneration"]
    assert config["image_grid_pinpoints"] == [[32, 64], [96, 32]]
    written = json.loads((out / "preprocessor_config.json").read_text())
    assert written["image_grid_pinpoints"] == [[32, 64], [96, 32]]
    # The original tiles a wide image 1 row x 2 columns, a tall one 3 rows x 1 column; so does the result.
    layout = AnyresLayout.from_config(model.config)
    assert layout.grid(30, 70) == (1, 2) and layout.grid(90, 25) == (3, 1)

    tok = AutoTokenizer.from_pretrained(out)
    llm = engine_factory(out)
    prompt = "USER: <image>\nWhat is in the image? ASSISTANT:"
    params = SamplingParams(max_tokens=16, min_tokens=16, temperature=0.0)
    for image in (photo_like(70, 30, seed=1), photo_like(25, 90, seed=2)):
        ours = llm.generate([{"prompt": prompt, "multi_modal_data": {"image": image}}], params, use_tqdm=False)
        want, length = hf_next_greedy(model.eval(), tok(prompt)["input_ids"], [image], tok.pad_token_id, 16)
        assert len(ours[0].prompt_token_ids) == length
        assert list(ours[0].outputs[0].token_ids) == want
