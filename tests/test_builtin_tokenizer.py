"""The built-in model's tokenizer: Llama-style, so a reply decoded on its own has no stray space."""

import pytest

from llava_model.chat_format import IMAGE, Turn
from train.builtin.pretrain import train_tokenizer
from train.llava.data import Sample, tokenise

CHAT = ("A chat between a curious user and an artificial intelligence assistant. USER: How many shapes "
        "are in the image? Answer with a number. ASSISTANT: 2</s>USER: What colour is the circle? ASSISTANT: "
        "The circle is red.</s>")
TEXTS = [CHAT, "a small red circle left of a large blue square on grey"] * 40


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    t = train_tokenizer(TEXTS, tmp_path_factory.mktemp("tok"), 400)
    t.add_special_tokens({"additional_special_tokens": [IMAGE]})
    return t


def test_a_reply_decodes_without_a_leading_space(tok):
    ids = tok("USER: How many shapes? ASSISTANT: 2 red")["input_ids"]
    answer = ids[ids.index(tok.convert_tokens_to_ids("\u2581red")) - 1:]  # what the model generates
    assert tok.decode(answer) == "2 red"
    assert tok.decode(tok("ASSISTANT: The circle is red.")["input_ids"], skip_special_tokens=True) == \
        "ASSISTANT: The circle is red."


def test_any_text_round_trips_through_byte_fallback(tok):
    for text in ["héllo wörld", "日本語 🙂 emoji", "tabs\tand\nnewlines", "ASSISTANT:"]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text


def test_training_labels_line_up_with_the_answers(tok):
    turns = (("user", f"{IMAGE}\nHow many shapes are in the image?"), ("assistant", "2"),
             ("user", "What colour is the circle?"), ("assistant", "The circle is red."))
    sample = Sample("s", "img.png", tuple(Turn(role, text) for role, text in turns))
    out = tokenise(sample, tok, "vicuna_v1", 9, 512)
    assert not isinstance(out, str), out
    learnt = [t for t, label in zip(out.input_ids, out.labels, strict=True) if label != -100]
    assert tok.decode(learnt) == "2</s> The circle is red.</s>"  # each answer, with its own end
