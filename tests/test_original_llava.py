"""An ORIGINAL-repo LLaVA-1.5 checkpoint, served as it was trained.

A tiny checkpoint in the original layout is built here (``LlavaLlamaForCausalLM`` state
dict, ``mm_*`` config keys, a separate CLIP directory) with a sentencepiece Llama
tokenizer trained here, converted with ``llava-convert`` and served by our server. The
original repo tokenises a prompt chunk by chunk around each ``<image>``
(``llava.mm_utils.tokenizer_image_token``): with a sentencepiece tokenizer each image sits
between two ``▁`` pieces. The reference below rebuilds those ids straight from the
sentencepiece model (what the slow ``LlamaTokenizer`` the original loads gives for text
without special tokens: BOS + the pieces), and the reference answers come from
transformers' ``LlavaForConditionalGeneration`` on those ids with the original
preprocessing (pad to a square with the mean colour, then CLIP's processor).
"""

import base64
import io
import json
from types import SimpleNamespace

import httpx
import pytest
import torch

from llava_model.chat_format import IMAGE, VICUNA_SYSTEM
from llava_model.prompt_ids import SETTING, encode_prompt, encode_prompt_with_offsets, prompt_tokenization
from tests.images import photo_like

LLAVA_V1_SYSTEM = (  # the original repo's conv_llava_v1 (separators " " and "</s>", as vicuna_v1)
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
SYSTEMS = {"vicuna_v1": VICUNA_SYSTEM, "llava_v1": LLAVA_V1_SYSTEM}
QUESTION = "What is in the image?"
IMAGE_SIDE, PATCH = 32, 8
NEW_TOKENS = 16
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def original_prompt(system: str, question: str, images: int) -> str:
    """conv_llava_v1 / conv_vicuna_v1 (SeparatorStyle.TWO): one user turn, the images first."""
    return f"{system} USER: " + "<image>\n" * images + f"{question} ASSISTANT:"


def reference_ids(sp, text: str, image_id: int, bos_id: int) -> list[int]:
    """The original repo's prompt ids, built by hand from the sentencepiece model: every
    chunk between images is BOS + its pieces; the ids start with one BOS, and each chunk
    adds its pieces without its BOS; one image id between chunks."""
    out = [bos_id]
    for i, chunk in enumerate(text.split(IMAGE)):
        if i:
            out.append(image_id)
        out.extend(sp.encode(chunk))
    return out


# ---- the checkpoint -------------------------------------------------------------------------


def _corpus() -> list[str]:
    from llava_model.tiny import _syllable_words

    lines = [
        VICUNA_SYSTEM, LLAVA_V1_SYSTEM, f"USER: {QUESTION} ASSISTANT: A red circle above a blue square.",
        "USER: How many objects are there? ASSISTANT: There are three objects.",
        "Describe the picture in detail. The background is green and there is a small yellow triangle.",
        "Is there a cat on the left? Yes, the cat sits left of the dog, below the window.",
    ] * 20
    return lines + [" ".join(_syllable_words(30, seed=s)) for s in range(100)]


def train_sentencepiece(path, vocab_size: int = 512) -> None:
    """A Llama-style sentencepiece BPE model: byte fallback, dummy prefix, no whitespace
    normalisation, digits split, <unk> <s> </s> at ids 0 1 2."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    path.write_bytes(buf.getvalue())


def write_original_tokenizer(src) -> None:
    """What an original LLaVA-1.5 checkpoint ships: tokenizer.model and a slow LlamaTokenizer config."""
    train_sentencepiece(src / "tokenizer.model")
    (src / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "clean_up_tokenization_spaces": False, "model_max_length": 2048, "padding_side": "right",
        "sp_model_kwargs": {},
    }))
    (src / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "unk_token": "<unk>"}))


def make_original_checkpoint(root):
    """(source dir, CLIP dir): an original-repo LLaVA-1.5 (torch .bin, mlp2x_gelu, pad)."""
    import sentencepiece as spm
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    src, clip = root / "original", root / "clip"
    src.mkdir()
    write_original_tokenizer(src)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    torch.manual_seed(0)
    text = LlamaConfig(
        hidden_size=128, num_attention_heads=2, num_key_value_heads=1, head_dim=64, intermediate_size=256,
        num_hidden_layers=2, vocab_size=sp.get_piece_size(), max_position_embeddings=2048, initializer_range=0.08,
        bos_token_id=1, eos_token_id=2,
    )
    lm = LlamaForCausalLM(text)
    state = dict(lm.state_dict())
    # Only word pieces can win greedy decoding (their text compares cleanly over HTTP): the
    # rows of bytes and specials become the mean row, whose logit is the mean logit.
    head = state["lm_head.weight"]
    quiet = [i for i in range(sp.get_piece_size()) if sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i)]
    head[quiet] = head.mean(dim=0)
    state.update({
        "model.mm_projector.0.weight": torch.randn(128, 64) * 0.1, "model.mm_projector.0.bias": torch.randn(128) * 0.1,
        "model.mm_projector.2.weight": torch.randn(128, 128) * 0.1, "model.mm_projector.2.bias": torch.randn(128) * 0.1,
    })
    torch.save(state, src / "pytorch_model.bin")
    (src / "config.json").write_text(json.dumps(text.to_dict() | {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": 64,
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "flat", "image_aspect_ratio": "pad", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
    }))
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                              image_size=IMAGE_SIDE, patch_size=PATCH, initializer_range=0.08)
    CLIPVisionModel(vision).save_pretrained(clip)
    (clip / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": IMAGE_SIDE},
        "crop_size": {"height": IMAGE_SIDE, "width": IMAGE_SIDE}, "do_resize": True, "do_center_crop": True,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": OPENAI_CLIP_MEAN, "image_std": OPENAI_CLIP_STD, "resample": 3,
    }))
    return src, clip, sp


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from transformers import AutoTokenizer

    from llava_model.convert import main as llava_convert

    root = tmp_path_factory.mktemp("original_llava")
    src, clip, sp = make_original_checkpoint(root)
    out = root / "converted"
    llava_convert([str(src), "--vision-tower", str(clip), "--out", str(out)])
    # PIL's resampling: the pixels the original's CLIP processor computes, exactly.
    pre = json.loads((out / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps(pre | {"resampler": "pil"}, indent=2))
    tok = AutoTokenizer.from_pretrained(out)
    image_id = json.loads((out / "config.json").read_text())["image_token_index"]
    return SimpleNamespace(root=root, src=src, clip=clip, out=out, sp=sp, tok=tok, image_id=image_id,
                           space=sp.piece_to_id("▁"), bos=sp.bos_id())


# ---- (a) the chunked tokenisation against the hand-built reference ----------------------------

PROMPTS = {
    "no image": original_prompt(VICUNA_SYSTEM, QUESTION, 0),
    "one image": original_prompt(VICUNA_SYSTEM, QUESTION, 1),
    "two images": original_prompt(LLAVA_V1_SYSTEM, QUESTION, 2),
    "image first": "<image>\nDescribe the picture in detail.",
    "adjacent images": "Compare<image><image>these two.",
    "image last": "USER: Describe this <image>",
    "only an image": "<image>",
    "two turns": f"{VICUNA_SYSTEM} USER: <image>\n{QUESTION} ASSISTANT: A red circle.USER: And <image>\nthis?",
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_chunks_equal_the_original_ids_built_from_sentencepiece(built, name):
    text = PROMPTS[name]
    ours = encode_prompt(built.tok, text, "chunks")
    assert ours == reference_ids(built.sp, text, built.image_id, built.bos)
    assert ours.count(built.image_id) == text.count(IMAGE)
    assert ours.count(built.bos) == 1


def test_each_image_sits_between_two_space_pieces(built):
    ids = encode_prompt(built.tok, PROMPTS["two images"], "chunks")
    places = [i for i, t in enumerate(ids) if t == built.image_id]
    assert len(places) == 2
    for i in places:  # ':' '▁' <image> '▁' '\n'   and   '\n' '▁' <image> '▁' '\n'
        assert ids[i + 1] == built.space and ids[i + 2] == built.sp.piece_to_id("<0x0A>")
    assert ids[places[0] - 1] == built.space
    assert built.tok.convert_ids_to_tokens(ids[places[0] - 2 : places[0] + 3]) == [":", "▁", IMAGE, "▁", "<0x0A>"]


@pytest.mark.parametrize("name", ["one image", "two images", "two turns"])
def test_whole_prompt_tokenisation_loses_the_space_after_each_image(built, name):
    """Today's (llava-hf) tokenisation of the same text: one id less per image, the '▁'
    after it. This is what the served prompt was before the setting existed."""
    text = PROMPTS[name]
    chunks, whole = encode_prompt(built.tok, text, "chunks"), encode_prompt(built.tok, text, "whole")
    assert len(whole) == len(chunks) - text.count(IMAGE)
    after = {i + 1 for i, t in enumerate(chunks) if t == built.image_id}
    assert all(chunks[i] == built.space for i in after)
    assert whole == [t for i, t in enumerate(chunks) if i not in after]


def test_offsets_follow_the_ids(built):
    """The trainer's variant: same ids, each with its span in the text."""
    text = PROMPTS["two turns"]
    ids, spans = encode_prompt_with_offsets(built.tok, text, "chunks")
    assert ids == encode_prompt(built.tok, text, "chunks") and len(spans) == len(ids)
    for t, (s, e) in zip(ids, spans, strict=True):
        if t == built.image_id:
            assert text[s:e] == IMAGE
    assert text[slice(*spans[ids.index(built.sp.piece_to_id("<0x0A>"))])] == "\n"


class _Stub:
    """A tokenizer of one id per character (ord), optionally with a BOS on every text."""

    def __init__(self, bos: bool):
        self.bos_token, self.bos_token_id = ("<s>", 1) if bos else (None, None)

    def encode(self, text, add_special_tokens=True):
        return ([1] if add_special_tokens and self.bos_token_id else []) + [ord(c) for c in text]

    def convert_tokens_to_ids(self, token):
        return 9


def test_empty_chunks_and_tokenizers_without_bos_behave_as_in_the_original():
    bos = _Stub(bos=True)
    assert encode_prompt(bos, "<image>", "chunks") == [1, 9]
    assert encode_prompt(bos, "<image>ab", "chunks") == [1, 9, 97, 98]
    assert encode_prompt(bos, "a<image><image>b", "chunks") == [1, 97, 9, 9, 98]
    assert encode_prompt(bos, "a<image>", "chunks") == [1, 97, 9]
    assert encode_prompt(bos, "ab", "chunks") == encode_prompt(bos, "ab", "whole") == [1, 97, 98]
    assert encode_prompt(bos, "<s>ab", "whole") == [ord(c) for c in "<s>ab"]  # the template wrote BOS
    none = _Stub(bos=False)  # no BOS: chunks are kept whole, one image id between them
    assert encode_prompt(none, "<image>a<image><image>b", "chunks") == [9, 97, 9, 9, 98]
    assert encode_prompt(none, "a", "chunks", image_token_id=5) == [97]
    with pytest.raises(ValueError, match=SETTING):
        encode_prompt(bos, "a", "pieces")


# ---- (b) the converter writes the setting; everyone reads it ----------------------------------


def test_converter_writes_chunks_and_readers_default_to_whole(built, tmp_path):
    config = json.loads((built.out / "config.json").read_text())
    assert config[SETTING] == "chunks"
    assert prompt_tokenization(built.out) == "chunks"
    from transformers import AutoConfig

    assert prompt_tokenization(AutoConfig.from_pretrained(built.out)) == "chunks"
    assert prompt_tokenization(tmp_path) == "whole"  # no config.json
    assert prompt_tokenization({"model_type": "llava"}) == "whole"  # llava-hf checkpoints
    with pytest.raises(ValueError, match="not one of"):
        prompt_tokenization({SETTING: "bytes"})


def _chat_service(hf_config, model_dir, tokenizer):
    from llava_model.anyres import ImageTokenCount
    from server.chat.serving import ChatService
    from server.chat.templates import choose_template

    llm = SimpleNamespace(get_tokenizer=lambda: tokenizer, model_config=SimpleNamespace(hf_config=hf_config))
    settings = SimpleNamespace(model_dir=lambda: model_dir, reply_memory_tokens=1000)
    return ChatService(engine=SimpleNamespace(llm=llm), template=choose_template("vicuna_v1", tokenizer, "llama"),
                       images=None, metrics=None, limiter=None, settings=settings,
                       image_tokens=ImageTokenCount(least=16))


def test_server_tokenises_as_the_model_config_says(built, tmp_path):
    from transformers import AutoConfig

    from server.chat.protocol import ChatCompletionRequest

    messages = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "system", "content": LLAVA_V1_SYSTEM},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}},
                                     {"type": "text", "text": QUESTION}]},
    ]}).messages
    want = reference_ids(built.sp, original_prompt(LLAVA_V1_SYSTEM, QUESTION, 1), built.image_id, built.bos)
    hf_config = AutoConfig.from_pretrained(built.out)
    assert _chat_service(hf_config, tmp_path, built.tok)._token_ids(messages)[1] == want
    # The engine's config without the key: the model directory's config.json decides.
    assert _chat_service(SimpleNamespace(), built.out, built.tok)._token_ids(messages)[1] == want
    whole = _chat_service(SimpleNamespace(), tmp_path, built.tok)
    assert whole.prompt_tokenization == "whole" and len(whole._token_ids(messages)[1]) == len(want) - 1


# ---- (c) greedy parity over HTTP with transformers on the original's ids ----------------------


def expand2square(image, mean):
    """The original repo's padding: a square of the mean colour, the image centred."""
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), tuple(int(m * 255) for m in mean))
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def original_pixels(clip_dir, images) -> torch.Tensor:
    """``process_images`` of the original repo for ``image_aspect_ratio: pad``."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(**{k: v for k, v in json.loads((clip_dir / "preprocessor_config.json")
                                                                     .read_text()).items()
                                         if k != "image_processor_type"})
    padded = [expand2square(im, processor.image_mean) for im in images]
    return processor(images=padded, return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def hf_model(built):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(built.out, dtype=torch.float32).eval()


def hf_greedy(model, prompt_ids, pixel_values) -> list[int]:
    from llava_model.vision import num_image_tokens

    per_image = num_image_tokens(model.config)
    expanded = []
    for t in prompt_ids:
        expanded += [t] * per_image if t == model.config.image_token_index else [t]
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([expanded]), pixel_values=pixel_values,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=model.config.text_config.pad_token_id)
    return out[0, len(expanded):].tolist()


@pytest.fixture(scope="module")
def server(built):
    from server.child_process import running_server

    with running_server(built.out, "--chat-template", "vicuna_v1", "--served-model-name", "orig",
                        "--dtype", "float32", log_path=built.root / "server.log") as (base, _):
        yield base


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


SIZES = {"square": [(32, 32)], "wide": [(45, 30)], "tall": [(24, 50)], "two images": [(64, 64), (50, 20)]}


@pytest.mark.parametrize("mode", ["llava_v1", "vicuna_v1"])
@pytest.mark.parametrize("sizes", list(SIZES))
def test_served_greedy_tokens_equal_transformers_on_the_original_ids(built, hf_model, server, mode, sizes):
    from llava_model.vision import num_image_tokens

    images = [photo_like(w, h, seed=7 * i + w) for i, (w, h) in enumerate(SIZES[sizes])]
    text = original_prompt(SYSTEMS[mode], QUESTION, len(images))
    ids = reference_ids(built.sp, text, built.image_id, built.bos)
    want = hf_greedy(hf_model, ids, original_pixels(built.clip, images))
    assert len(want) == NEW_TOKENS

    content = [{"type": "image_url", "image_url": {"url": _data_url(im)}} for im in images]
    messages = ([{"role": "system", "content": LLAVA_V1_SYSTEM}] if mode == "llava_v1" else []) + [
        {"role": "user", "content": content + [{"type": "text", "text": QUESTION}]}]
    body = {"model": "orig", "messages": messages, "temperature": 0, "max_tokens": NEW_TOKENS,
            "min_tokens": NEW_TOKENS, "ignore_eos": True}
    reply = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    out = reply.json()
    per_image = num_image_tokens(hf_model.config)
    assert out["usage"]["prompt_tokens"] == len(ids) + len(images) * (per_image - 1)  # the real count
    assert out["usage"]["completion_tokens"] == NEW_TOKENS
    # The text as transformers' decode of the same ids gives it: no leading space from the
    # prompt's context, and the stream's deltas add up to exactly that text.
    expected = built.tok.decode(want, skip_special_tokens=True)
    assert out["choices"][0]["message"]["content"] == expected
    streamed = ""
    with httpx.stream("POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                streamed += "".join(c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"])
    assert streamed == expected
    # The old whole-prompt ids are one shorter per image: the counts above would catch it.
    assert len(encode_prompt(built.tok, text, "whole")) == len(ids) - len(images)


# ---- the trainer reads the setting of the checkpoint it fine-tunes ----------------------------


def test_trainer_tokenises_a_converted_checkpoint_in_chunks_and_exports_the_setting(built, monkeypatch):
    import train.llava.data
    from llava_model.chat_format import Turn
    from train.llava.config import StageConfig
    from train.llava.data import IGNORE, Sample, tokenise
    from train.llava.trainer import train_stage

    sample = Sample("s", "a.png", (Turn("user", f"<image>\n{QUESTION}"), Turn("assistant", "A red circle.")))
    tok = tokenise(sample, built.tok, "vicuna_v1", image_tokens=4, max_length=512, tokenization="chunks")
    text = original_prompt(VICUNA_SYSTEM, QUESTION, 1) + " A red circle.</s>"
    collapsed = [t for i, t in enumerate(tok.input_ids) if t != built.image_id or tok.input_ids[i - 1] != built.image_id]
    assert collapsed == encode_prompt(built.tok, text, "chunks")
    answer = [t for t, label in zip(tok.input_ids, tok.labels, strict=True) if label != IGNORE]
    assert built.tok.decode(answer) == "A red circle.</s>"

    root = built.root / "train"
    root.mkdir()
    data = []
    for i in range(4):
        photo_like(40 + i, 30, seed=i).save(root / f"{i}.png")
        data.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": "A red circle."}]})
    (root / "data.json").write_text(json.dumps(data))
    seen = []
    original = train.llava.data.tokenise
    monkeypatch.setattr(train.llava.data, "tokenise", lambda *a: seen.append(a[-1]) or original(*a))
    cfg = StageConfig(stage=2, model=str(built.out), data=str(root / "data.json"), image_root=str(root),
                      output_dir=str(root / "run"), chat_format="vicuna_v1", global_batch=4, per_device_batch=4,
                      max_steps=1, lr=1e-4, progress=False)
    result = train_stage(cfg)
    assert result["mismatches"] == 0 and seen == ["chunks"] * 4
    final = root / "run" / "final"
    assert json.loads((final / "config.json").read_text())[SETTING] == "chunks"
    assert json.loads((final / "llava_train.json").read_text())["prompt_tokenization"] == "chunks"


# ---- the offline generator sends the same ids -------------------------------------------------


def test_offline_generator_answers_like_transformers_on_the_original_ids(built, hf_model):
    import os
    import subprocess
    import sys

    image = photo_like(45, 30, seed=11)
    image.save(built.root / "gen.png")
    ids = reference_ids(built.sp, original_prompt(VICUNA_SYSTEM, QUESTION, 1), built.image_id, built.bos)
    want = built.tok.decode(hf_greedy(hf_model, ids, original_pixels(built.clip, [image])), skip_special_tokens=True)
    cmd = [sys.executable, "-m", "llava_model.generate", "--model", str(built.out), "--eager", "--dtype", "float32",
           "--max-model-len", "512", "--image", str(built.root / "gen.png"), "--prompt", QUESTION,
           "--max-tokens", str(NEW_TOKENS), "--temperature", "0"]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout.rstrip("\n").rsplit("\n", 1)[-1]  # vLLM logs to stdout before it
    assert printed == want
