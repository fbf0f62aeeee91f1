"""Each format's Jinja chat template renders, through transformers, exactly its own prompt text."""

import pytest

from llava_model.chat_format import FORMATS, IMAGE, Turn, chat_template, prompt, segments
from llava_model.tiny import build_tokenizer

IMG = {"type": "image"}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "What is shown?"}],
    "one turn, image": [{"role": "user", "content": [IMG, text("What is shown?")]}],
    "one turn, two images after the text": [{"role": "user", "content": [text("Compare"), IMG, IMG]}],
    "system, one turn": [{"role": "system", "content": "Answer briefly."},
                         {"role": "user", "content": [IMG, text("Count the shapes.")]}],
    "three turns": [
        {"role": "user", "content": [IMG, text("What is shown?")]},
        {"role": "assistant", "content": "A red circle."},
        {"role": "user", "content": "And below it?"},
    ],
    "two systems, three turns, images": [
        {"role": "system", "content": "Sys A"}, {"role": "system", "content": [text("Sys B")]},
        {"role": "user", "content": [IMG, text("first")]},
        {"role": "assistant", "content": [text("one")]},
        {"role": "user", "content": [text("second"), IMG]},
    ],
    "ends with the assistant": [
        {"role": "user", "content": [IMG, text("Caption it.")]},
        {"role": "assistant", "content": "A blue square."},
    ],
    "empty system": [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
    "replies sent back with the space the model generated": [
        {"role": "user", "content": [IMG, text("What is shown?")]},
        {"role": "assistant", "content": " A red circle."},
        {"role": "user", "content": "And below it?"},
        {"role": "assistant", "content": [text("  Two spaces, one kept.")]},
        {"role": "user", "content": "And?"},
    ],
}


def as_turns(messages: list[dict]) -> tuple[str | None, list[Turn]]:
    """The server's reading of messages: parts joined by newlines, an image as IMAGE."""

    def joined(content) -> str:
        if isinstance(content, str):
            return content
        return "\n".join(IMAGE if p["type"] == "image" else p["text"] for p in content)

    system = [joined(m["content"]) for m in messages if m["role"] == "system"]
    turns = [Turn(m["role"], joined(m["content"])) for m in messages if m["role"] != "system"]
    return ("\n".join(system) if system else None), turns


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_jinja_template_renders_the_prompt(tokenizer, name, conversation):
    messages = CONVERSATIONS[conversation]
    rendered = tokenizer.apply_chat_template(messages, chat_template=chat_template(name), tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == prompt(name, *as_turns(messages))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_without_generation_prompt_it_renders_the_training_text(tokenizer, name):
    messages = CONVERSATIONS["ends with the assistant"]
    rendered = tokenizer.apply_chat_template(messages, chat_template=chat_template(name), tokenize=False,
                                             add_generation_prompt=False)
    assert rendered == "".join(t for t, _ in segments(name, *as_turns(messages)))


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown conversation format 'vicuna'"):
        chat_template("vicuna")


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("reply", [" A red circle.", "A red circle."])
def test_a_reply_sent_back_renders_as_the_tokens_generated(tokenizer, name, reply):
    """Turn 2's prompt starts with turn 1's prompt and the very tokens the model generated
    (what prefix caching needs, and the training format), whether the client sends the
    reply back as the server wrote it (the first generated token's space included) or
    trimmed."""
    first = [Turn("user", f"{IMAGE}\nWhat is shown?")]
    p1 = tokenizer.encode(prompt(name, None, first), add_special_tokens=False)
    generated = tokenizer.encode(prompt(name, None, first) + " A red circle.", add_special_tokens=False)[len(p1):]
    assert tokenizer.decode(p1 + generated).endswith(" A red circle.")
    history = [*first, Turn("assistant", reply), Turn("user", "And below it?")]
    p2 = tokenizer.encode(prompt(name, None, history), add_special_tokens=False)
    if name in ("vicuna_v1", "mistral_instruct"):  # the formats that put a space before a reply
        assert p2[: len(p1) + len(generated)] == p1 + generated
