"""Our model inside vLLM produces exactly transformers' greedy tokens.

Each case is one tiny random checkpoint (fp32), saved in one of the checkpoint
layouts, and exercises a projector / feature-layer / strategy / LLM combination.
"""

import os

import pytest
from vllm import SamplingParams

from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from llava_model.weights import hub_name
from tests.conftest import close_llm, make_llm
from tests.images import noise, photo_like
from tests.reference import hf_greedy

NEW_TOKENS = 32
PROMPT_1 = "USER: <image>\nWhat is in the image? ASSISTANT:"
PROMPT_2 = "USER: <image>\n<image>\nHow many objects are there in both? ASSISTANT:"
PROMPT_TEXT = "USER: Describe a red circle. ASSISTANT:"

CASES = {
    "mlp2x-layer-2-default-llama-pad": (TinyLlavaSpec(), "hub"),
    "linear-layer-1-full-llama-crop": (
        TinyLlavaSpec(
            projector_type="linear",
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            aspect_mode="crop",
            seed=1,
        ),
        "transformers-save",
    ),
    "mlp2x-layers-3and-1-qwen2-tied": (
        TinyLlavaSpec(text_arch="qwen2", vision_feature_layer=(-3, -1), tie_word_embeddings=True, seed=2),
        "model-prefix",
    ),
    "identity-mistral": (
        TinyLlavaSpec(text_arch="mistral", projector_type="identity", vision_hidden=128, seed=3),
        "hub",
    ),
    # llava-interleave's shape: SigLIP tower (no class token, no pre-norm), every token, last layer,
    # Qwen2; SigLIP's processor (stretch to the size, mean/std 0.5); the pooling head in the
    # checkpoint, saved bare under vision_tower.* by transformers, and skipped
    "siglip-layer-1-full-qwen2-resize": (
        TinyLlavaSpec(
            vision_tower="siglip",
            text_arch="qwen2",
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            aspect_mode="resize",
            seed=5,
        ),
        "transformers-save",
    ),
    # SigLIP with default selection (transformers drops the first patch), two feature layers,
    # no head in the checkpoint
    "siglip-layers-3and-2-default-llama": (
        TinyLlavaSpec(
            vision_tower="siglip",
            vision_head=False,
            vision_feature_layer=(-3, -2),
            aspect_mode="resize",
            seed=6,
        ),
        "hub",
    ),
    # auto picks the reference projector in fp32; force the fused oneDNN path here.
    "mlp2x-fused-cpu-kernels": (TinyLlavaSpec(seed=4), "hub"),
}
KERNELS = {"mlp2x-fused-cpu-kernels": "fused"}


def _resave(model, out, layout: str) -> None:
    """Rewrite the weights of ``out`` in another checkpoint layout."""
    from safetensors.torch import save_file

    if layout == "hub":
        return
    if layout == "transformers-save":
        model.save_pretrained(out)  # transformers 5 writes vision_tower.embeddings.* etc.
        return
    state = {k: v.contiguous() for k, v in model.state_dict().items()}  # model.* and lm_head.*
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    spec, layout = CASES[request.param]
    out = tmp_path_factory.mktemp(request.param)
    model = build_tiny_llava(out, spec)
    _resave(model, out, layout)
    from llava_model.tiny import build_tokenizer

    previous = os.environ.get("LLAVA_KERNELS")
    os.environ["LLAVA_KERNELS"] = KERNELS.get(request.param, "auto")
    try:
        llm = make_llm(out)  # the projector picks its kernel while loading
    finally:
        os.environ.pop("LLAVA_KERNELS") if previous is None else os.environ.update(LLAVA_KERNELS=previous)
    if request.param in KERNELS:
        kinds = llm.apply_model(lambda model: type(model.multi_modal_projector._kernel).__name__)
        assert kinds == ["PackedCpuProjector"]
    yield spec, model, build_tokenizer(), llm, out
    close_llm(llm)


def _vllm_greedy(llm, prompts):
    params = SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, temperature=0.0)
    outs = llm.generate(prompts, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_one_image(case):
    spec, model, tok, llm, _ = case
    image = photo_like(60, 40, seed=5)
    ours = _vllm_greedy(llm, [{"prompt": PROMPT_1, "multi_modal_data": {"image": image}}])[0]
    assert len(ours) == NEW_TOKENS
    assert ours == hf_greedy(model, tok, PROMPT_1, [image], spec, NEW_TOKENS)


def test_two_images(case):
    spec, model, tok, llm, _ = case
    images = [photo_like(50, 70, seed=6), noise(33, 33, seed=7)]
    ours = _vllm_greedy(llm, [{"prompt": PROMPT_2, "multi_modal_data": {"image": images}}])[0]
    assert ours == hf_greedy(model, tok, PROMPT_2, images, spec, NEW_TOKENS)


def test_text_only(case):
    spec, model, tok, llm, _ = case
    assert _vllm_greedy(llm, [PROMPT_TEXT])[0] == hf_greedy(model, tok, PROMPT_TEXT, [], spec, NEW_TOKENS)


def test_mixed_batch_of_image_sizes(case):
    """One engine step batches images of different sizes and a text-only prompt; with
    the default (exact) resampler transformers' processor sees the same pixels."""
    spec, model, tok, llm, _ = case
    requests = [
        (PROMPT_1, [photo_like(200, 30, seed=8)]),
        (PROMPT_TEXT, []),
        (PROMPT_2, [noise(17, 90, seed=9), photo_like(64, 64, seed=10)]),
        (PROMPT_1, [photo_like(31, 33, seed=11)]),
        (PROMPT_1, [photo_like(640, 480, seed=12)]),
        (PROMPT_2, [noise(333, 517, seed=13), photo_like(50, 300, seed=14)]),
    ]
    prompts = [
        {"prompt": p, "multi_modal_data": {"image": imgs}} if imgs else p for p, imgs in requests
    ]
    ours = _vllm_greedy(llm, prompts)
    expected = [hf_greedy(model, tok, p, imgs, spec, NEW_TOKENS) for p, imgs in requests]
    assert ours == expected


def test_image_token_count_comes_from_vision_config(case):
    spec, model, tok, llm, _ = case
    out = llm.generate(
        [{"prompt": PROMPT_1, "multi_modal_data": {"image": noise(20, 20)}}],
        SamplingParams(max_tokens=1),
        use_tqdm=False,
    )[0]
    patches = (spec.image_size // spec.patch_size) ** 2
    class_token = spec.vision_tower == "clip"
    per_image = patches + class_token - (spec.vision_feature_select_strategy == "default")
    assert model.config.image_seq_length != per_image  # the saved field is wrong on purpose
    text_len = len(tok(PROMPT_1)["input_ids"])
    assert len(out.prompt_token_ids) == text_len - 1 + per_image


def test_checkpoint_layout_is_the_one_named(case):
    """Guards the fixture: each case really exercises a different naming."""
    from safetensors import safe_open

    _, _, _, _, out = case
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        names = list(f.keys())
    assert all(hub_name(n) for n in names)
    prefixes = {n.split(".")[0] + "." + n.split(".")[1] for n in names}
    assert prefixes & {"vision_tower.vision_model", "vision_tower.embeddings", "model.vision_tower"}
    spec = case[0]
    heads = [n for n in names if ".head." in n]
    assert bool(heads) == (spec.vision_tower == "siglip" and spec.vision_head)


def test_our_class_serves_it_with_the_checkpoints_tower(case):
    spec, _, _, llm, _ = case
    built = llm.apply_model(lambda m: (type(m).__module__, type(m.vision_tower).__name__))
    tower = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}[spec.vision_tower]
    assert built == [("llava_model.model", tower)]
