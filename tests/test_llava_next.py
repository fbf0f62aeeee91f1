"""LLaVA-NeXT (anyres) in our model class, against transformers' LlavaNext code.

The geometry (best grid, resize, padding, unpadding, token counts), the preprocessing
(byte-exact with transformers' own processor) and the packing of features are checked
one by one against transformers; then tiny random checkpoints (fp32) built in code give
transformers' greedy tokens in vLLM, with images of different grids in one prompt and
in one batch, in the llava-hf and transformers-save layouts.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vllm import SamplingParams

from llava_model.anyres import AnyresLayout, best_resolution, fit_within, pack_features
from llava_model.image_processing import ImageProcessingConfig, preprocess_anyres
from llava_model.tiny import TinyLlavaSpec, build_tiny_llava, build_tokenizer
from tests.conftest import close_llm, make_llm
from tests.images import noise, photo_like
from tests.reference import hf_next_greedy, hf_next_processor

# LLaVA-1.6's grid pinpoints, scaled from 336-px tiles to 32-px ones
PINPOINTS = ((32, 64), (64, 32), (64, 64), (96, 32), (32, 96))
LLAVA_16_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
NEW_TOKENS = 24
SIZES = [(37, 91), (200, 50), (20, 20), (64, 64), (640, 480), (96, 32), (1, 300), (33, 31)]  # width, height


def _random_sizes(count: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    return [(int(w), int(h)) for w, h in rng.integers(1, 2500, size=(count, 2))]


# ---- geometry against transformers ------------------------------------------------------------


def test_grid_choice_and_resize_equal_transformers():
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension

    pinpoints = [tuple(p) for p in LLAVA_16_PINPOINTS]
    for width, height in SIZES + _random_sizes(300):
        want = select_best_resolution((height, width), LLAVA_16_PINPOINTS)
        assert best_resolution(height, width, pinpoints) == tuple(want), (width, height)
        image = np.empty((1, height, width), dtype=np.uint8)
        assert fit_within(height, width, *want) == get_patch_output_size(image, want, ChannelDimension.FIRST)


def test_token_counts_equal_transformers_processor():
    """LLaVA-1.6's real sizes (CLIP ViT-L/14 at 336 px, default selection): our count per
    image size equals transformers' LlavaNextProcessor's."""
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(image_size=336, patch_size=14).to_dict(),
        image_grid_pinpoints=LLAVA_16_PINPOINTS,
        vision_feature_select_strategy="default",
    )
    layout = AnyresLayout.from_config(config)
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(image_grid_pinpoints=LLAVA_16_PINPOINTS),
        tokenizer=build_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    for width, height in SIZES + _random_sizes(300, seed=1):
        want = processor._get_number_of_features(height, width, 336, 336) - 1  # less its class token
        assert layout.tokens(height, width) == want, (width, height)
    most, (height, width) = layout.most_tokens()
    assert most == layout.tokens(height, width) == 576 + 48 * 49  # a 2x2 grid kept whole
    assert all(layout.tokens(h, w) <= most for w, h in _random_sizes(300, seed=2))


def test_packing_equals_transformers():
    from transformers import LlavaNextConfig
    from transformers.models.llava_next.modeling_llava_next import LlavaNextModel

    spec = TinyLlavaSpec(grid_pinpoints=PINPOINTS)
    config = LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8},
        image_grid_pinpoints=[list(p) for p in spec.grid_pinpoints],
    )
    layout = AnyresLayout.from_config(config)
    torch.manual_seed(0)
    newline = torch.randn(6)
    sizes = [(h, w) for w, h in SIZES]
    features = [torch.randn(layout.tiles(h, w), 16, 6) for h, w in sizes]
    want, lengths = LlavaNextModel.pack_image_features(
        SimpleNamespace(config=config), features, torch.tensor(sizes), "default", newline
    )
    for (height, width), tiles, expected, length in zip(sizes, features, want, lengths.tolist()):
        ours = pack_features(tiles[0], tiles[1:], height, width, layout.grid(height, width), newline)
        assert torch.equal(ours, expected)
        assert length == layout.tokens(height, width)


def test_preprocessing_is_byte_exact_with_transformers():
    from transformers import LlavaNextConfig

    config = LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8},
        image_grid_pinpoints=[list(p) for p in PINPOINTS],
    )
    cfg = ImageProcessingConfig(image_size=32, shortest_edge=32, aspect_mode="resize")
    images = [photo_like(w, h, seed=i) for i, (w, h) in enumerate(SIZES)] + [noise(45, 17).convert("L")]
    ours, counts, sizes = preprocess_anyres(images, cfg, PINPOINTS)
    want = hf_next_processor(config)(images=images, return_tensors="pt")
    assert sizes == [tuple(s) for s in want["image_sizes"].tolist()]
    for index, chunk in enumerate(torch.split(ours, counts)):
        # transformers pads every image to the most tiles; the padding is not the image's
        assert torch.allclose(chunk, want["pixel_values"][index, : len(chunk)], atol=1e-6, rtol=0)
        assert not want["pixel_values"][index, len(chunk) :].any()


def test_settings_that_cannot_be_tiled_are_refused():
    from transformers import LlavaNextConfig

    def config(**kwargs):
        vision = {"model_type": "clip_vision_model", "image_size": 32, "patch_size": 8}
        return LlavaNextConfig(vision_config=vision, **kwargs)

    with pytest.raises(ValueError, match=r"\[48, 64\].*multiples of .* 32"):
        AnyresLayout.from_config(config(image_grid_pinpoints=[[48, 64]]))
    with pytest.raises(ValueError, match="'full'.*17 features per tile"):
        AnyresLayout.from_config(config(image_grid_pinpoints=[[32, 64]], vision_feature_select_strategy="full"))


# ---- greedy parity in vLLM ------------------------------------------------------------------------

CASES = {
    # llava-hf layout, Vicuna-style Llama, MLP projector, penultimate layer
    "llama-mlp-hub": (TinyLlavaSpec(grid_pinpoints=PINPOINTS, seed=7), "hub"),
    # transformers' own save (model.image_newline, model.language_model.*), Mistral, linear
    # projector, two feature layers
    "mistral-linear-transformers-save": (
        TinyLlavaSpec(
            grid_pinpoints=PINPOINTS, text_arch="mistral", projector_type="linear", vision_feature_layer=(-3, -1), seed=8
        ),
        "transformers-save",
    ),
}
PROMPT_1 = "USER: <image>\nWhat is in the image? ASSISTANT:"
PROMPT_2 = "USER: <image>\n<image>\nWhat differs between them? ASSISTANT:"


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    spec, layout = CASES[request.param]
    out = tmp_path_factory.mktemp(request.param)
    model = build_tiny_llava(out, spec)
    if layout == "transformers-save":
        model.save_pretrained(out)
    llm = make_llm(out, max_model_len=1024)
    yield model, build_tokenizer(), llm
    close_llm(llm)


def _ours(llm, requests):
    params = SamplingParams(max_tokens=NEW_TOKENS, min_tokens=NEW_TOKENS, temperature=0.0)
    prompts = [{"prompt": p, "multi_modal_data": {"image": ims}} for p, ims in requests]
    return llm.generate(prompts, params, use_tqdm=False)


def _check(case, requests):
    model, tok, llm = case
    outs = _ours(llm, requests)
    for (prompt, images), out in zip(requests, outs):
        want, length = hf_next_greedy(model, tok(prompt)["input_ids"], images, tok.pad_token_id, NEW_TOKENS)
        assert len(out.prompt_token_ids) == length  # the same image token count as transformers
        assert list(out.outputs[0].token_ids) == want


@pytest.mark.parametrize("size", SIZES)
def test_one_image_of_each_grid(case, size):
    _check(case, [(PROMPT_1, [photo_like(*size, seed=sum(size))])])


def test_two_images_of_different_grids_in_one_prompt(case):
    _check(case, [(PROMPT_2, [photo_like(200, 50, seed=1), noise(37, 91, seed=2)])])


def test_a_batch_of_different_grids(case):
    """Requests in one engine batch: their tiles go through the tower together."""
    requests = [(PROMPT_1, [photo_like(w, h, seed=w + h)]) for w, h in SIZES[:5]]
    requests.append((PROMPT_2, [photo_like(96, 32, seed=3), photo_like(64, 64, seed=4)]))
    _check(case, requests)


def test_the_image_is_read(case):
    """A random model's reply depends on its image (else parity would prove little)."""
    _, _, llm = case
    replies = {tuple(o.outputs[0].token_ids) for o in _ours(llm, [(PROMPT_1, [noise(60, 40, seed=s)]) for s in range(3)])}
    assert len(replies) > 1


def test_prompt_and_image_count_mismatch_names_both(case):
    _, _, llm = case
    with pytest.raises(ValueError, match=r"2 <image> placeholder\(s\) but 1 image"):
        _ours(llm, [(PROMPT_2, [photo_like(40, 40)])])


def test_per_request_aspect_mode_is_refused(case):
    """The tiling is the checkpoint's: LLaVA-1.5's per-request option has no meaning here."""
    _, _, llm = case
    request = {"prompt": PROMPT_1, "multi_modal_data": {"image": [photo_like(40, 40)]},
               "mm_processor_kwargs": {"image_aspect_ratio": "pad"}}
    with pytest.raises(ValueError, match=r"unknown image processing option\(s\) \['image_aspect_ratio'\]; supported: none"):
        llm.generate([request], SamplingParams(max_tokens=2), use_tqdm=False)
