"""LLaVA JSON loading and validation, conversation formats, loss masks, mismatch reports."""

import json

import pytest
import torch
from PIL import Image

from llava_model.chat_format import FORMATS, Turn, prompt, segments
from llava_model.image_processing import ImageProcessingConfig
from llava_model.tiny import build_tokenizer
from train.llava.data import IGNORE, DataError, LlavaDataset, Sample, collate, load_samples, tokenise

TOKENIZER = build_tokenizer()


def _write(tmp_path, samples, images=("a.png",)):
    for name in images:
        Image.new("RGB", (20, 10), (200, 10, 10)).save(tmp_path / name)
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    return path


def _conv(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


GOOD = {"id": "ok", "image": "a.png", "conversations": _conv("<image>\nWhat is it?", "A red box.")}
TEXT_ONLY = {"id": "text", "conversations": _conv("Hello?", "Hi.", "Bye?", "Bye.")}


def test_loads_image_and_text_only_samples(tmp_path):
    samples = load_samples(_write(tmp_path, [GOOD, TEXT_ONLY]), tmp_path)
    assert [s.id for s in samples] == ["ok", "text"]
    assert samples[0].image == "a.png" and samples[1].image is None
    assert [t.role for t in samples[1].turns] == ["user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ({"id": "m", "image": "missing.png", "conversations": _conv("<image>\nq", "a")}, "'m' (#1): image file"),
        ({"id": "c", "image": "a.png", "conversations": _conv("no placeholder", "a")}, "'c' (#1): 0 <image>"),
        ({"id": "t", "conversations": _conv("<image>\nq", "a")}, "'t' (#1): 1 <image> placeholder(s) for 0"),
        ({"id": "r", "conversations": [{"from": "robot", "value": "x"}]}, "'r' (#1): turn 0 has role 'robot'"),
        ({"id": "e", "conversations": _conv("q", "   ")}, "'e' (#1): turn 1 is empty"),
        ({"id": "o", "conversations": _conv("q", "a")[::-1]}, "'o' (#1): turn 0 should be human"),
        ({"id": "g", "image": "a.png", "conversations": _conv("<image>\nq", "<image>")}, "'g' (#1): turn 1"),
        ({"id": "n", "conversations": []}, "'n' (#1): 'conversations' must be a non-empty list"),
        ({"id": "ok", "conversations": _conv("q", "a")}, "duplicate sample ids: ['ok']"),
    ],
)
def test_every_problem_names_its_sample(tmp_path, bad, needle):
    with pytest.raises(DataError, match="problem") as err:
        load_samples(_write(tmp_path, [GOOD, bad]), tmp_path)
    assert needle in str(err.value)


def test_all_problems_reported_at_once_and_broken_json(tmp_path):
    bad = [{"id": f"b{i}", "conversations": _conv("q", "")} for i in range(3)]
    with pytest.raises(DataError, match="3 problem") as err:
        load_samples(_write(tmp_path, bad), tmp_path)
    assert all(f"'b{i}'" in str(err.value) for i in range(3))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match="cannot read LLaVA JSON"):
        load_samples(tmp_path / "broken.json")


def _turns(*values):
    return [Turn("user" if i % 2 == 0 else "assistant", v) for i, v in enumerate(values)]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_serving_prompt_is_the_training_text_up_to_the_answer(fmt):
    turns = _turns("<image>\nWhat is it?", "A box.", "And now?", "Still a box.")
    train_text = "".join(t for t, _ in segments(fmt, None, turns))
    served = prompt(fmt, None, turns[:3])
    assert train_text.startswith(served)
    assert train_text[len(served):].strip().startswith("Still a box.")
    answers = [t for t, trainable in segments(fmt, None, turns) if trainable]
    assert [a.strip().removesuffix("</s>").removesuffix("<|im_end|>").strip() for a in answers][-1] == "Still a box."


def _decoded_targets(tok) -> str:
    return TOKENIZER.decode([t for t in tok.labels if t != IGNORE])


def test_vicuna_loss_only_on_assistant_turns_with_image_expanded():
    sample = Sample("s", "a.png", tuple(_turns("<image>\nWhat colour?", "red", "Shape?", "a square")))
    tok = tokenise(sample, TOKENIZER, "vicuna_v1", image_tokens=16, max_length=512)
    image_id = TOKENIZER.convert_tokens_to_ids("<image>")
    assert tok.input_ids.count(image_id) == 16
    assert all(label == IGNORE for i, label in zip(tok.input_ids, tok.labels) if i == image_id)
    assert _decoded_targets(tok) == " red</s> a square</s>"
    assert tok.input_ids[0] == TOKENIZER.bos_token_id and tok.labels[0] == IGNORE


def test_plain_format_learns_the_caption_only():
    sample = Sample("s", "a.png", tuple(_turns("<image>\nDescribe briefly.", "A red box.")))
    tok = tokenise(sample, TOKENIZER, "plain", image_tokens=4, max_length=512)
    assert _decoded_targets(tok) == "A red box.\n"
    assert "Describe" not in TOKENIZER.decode(tok.input_ids)


def test_straddling_token_is_a_reported_mismatch(monkeypatch):
    # An answer that starts inside a word: the tokenizer's merged token crosses the edge.
    monkeypatch.setitem(FORMATS, "broken", lambda system, turns: ([("USER: colo", False), ("ur</s>", True)], ""))
    why = tokenise(Sample("x", None, tuple(_turns("q", "a"))), TOKENIZER, "broken", 4, 512)
    assert isinstance(why, str) and "straddles" in why


def test_dataset_counts_mismatches_with_ids_and_truncation(tmp_path):
    samples = [
        Sample("fine", None, tuple(_turns("q", "answer"))),
        Sample("too-long", "a.png", tuple(_turns("<image>\nq", "answer"))),  # image cannot fit
    ]
    cfg = ImageProcessingConfig(image_size=8, shortest_edge=8)
    ds = LlavaDataset(samples, TOKENIZER, "vicuna_v1", image_tokens=600, max_length=512, image_config=cfg)
    assert len(ds) == 1 and ds.mismatches.count == 1
    assert ds.mismatches.examples[0].startswith("too-long: ")


def test_images_load_lazily_with_the_server_preprocessing(tmp_path):
    _write(tmp_path, [])
    cfg = ImageProcessingConfig(image_size=8, shortest_edge=8, aspect_mode="pad")
    sample = Sample("s", "a.png", tuple(_turns("<image>\nq", "a")))
    ds = LlavaDataset([sample, Sample("t", None, tuple(_turns("q", "a")))], TOKENIZER, "vicuna_v1", 4, 512,
                      cfg, image_root=tmp_path)
    from llava_model.image_processing import preprocess_images

    item = ds[0]
    expected = preprocess_images([Image.open(tmp_path / "a.png")], cfg)[0]
    assert torch.equal(item["pixel_values"], expected)
    batch = collate([ds[0], ds[1]], TOKENIZER.pad_token_id)
    assert batch["pixel_values"].shape == (1, 3, 8, 8)
    assert batch["input_ids"].shape[0] == 2
    short = int(batch["attention_mask"][1].sum())
    assert (batch["labels"][1, short:] == IGNORE).all() and (batch["input_ids"][1, short:] == TOKENIZER.pad_token_id).all()


@pytest.mark.parametrize("fmt", ["plain", "vicuna_v1", "mistral_instruct", "chatml"])
def test_exported_jinja_template_renders_exactly_the_builtin(fmt):
    from llava_model.chat_format import chat_template
    from server.chat.protocol import Message
    from server.chat.templates import _jinja, choose_template

    class Tok:
        chat_template = None
        bos_token, eos_token = "<s>", "</s>"

    conversations = [
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}},
                                      {"type": "text", "text": "What?"}]}],
        [{"role": "system", "content": "Sys A"}, {"role": "system", "content": "Sys B"},
         {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
         {"role": "user", "content": "again"}],
        [{"role": "developer", "content": "Dev"}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "yo"}],
    ]
    render = _jinja(chat_template(fmt), Tok())
    for conv in conversations:
        messages = [Message.model_validate(m) for m in conv]
        assert render(messages) == choose_template(fmt, Tok(), "llama").render(messages)
