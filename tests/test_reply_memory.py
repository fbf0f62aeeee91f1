"""server.chat.reply_memory: a reply sent back as history keeps the ids the model generated.

The tiny models' byte-level BPE tokeniser makes the case real: ids a model samples
one byte at a time read back, once decoded and tokenised again, as fewer merged ids."""

import pytest

from llava_model.chat_format import IMAGE, Turn, prompt
from llava_model.prompt_ids import encode_prompt, encode_prompt_with_offsets
from llava_model.tiny import build_tokenizer
from server.chat.reply_memory import ReplyMemory


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def render(fmt: str, *texts: str) -> str:
    """Alternating user / assistant turns, ending with the generation prompt."""
    turns = [Turn("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts)]
    return prompt(fmt, None, turns)


def byte_ids(tokenizer, text: str) -> list[int]:
    """ASCII ``text`` one byte-token at a time (``Ġ`` is byte-level BPE's space): what a
    sampling model may well generate."""
    return [tokenizer.convert_tokens_to_ids("Ġ" if ch == " " else ch) for ch in text]


def fresh(tokenizer, text: str):
    return encode_prompt_with_offsets(tokenizer, text, "whole")


@pytest.mark.parametrize("fmt", ["vicuna_v1", "chatml", "mistral_instruct"])
def test_history_reads_as_the_ids_generated(tokenizer, fmt):
    question = f"{IMAGE}\nWhat is in the picture?"
    first = render(fmt, question)
    first_ids = encode_prompt(tokenizer, first, "whole")
    reply = "a red circle"
    generated = byte_ids(tokenizer, reply)
    assert tokenizer.decode(generated) == reply
    memory = ReplyMemory(10_000)
    memory.remember(first, first_ids, reply, generated)

    second = render(fmt, question, reply, "And its size?")
    ids, spans = fresh(tokenizer, second)
    # the premise: tokenised afresh, the history is not what the model generated
    assert ids[: len(first_ids) + len(generated)] != first_ids + generated
    spliced = memory.splice(second, ids, spans, [reply])
    assert spliced is not None
    assert spliced[: len(first_ids) + len(generated)] == first_ids + generated
    # after the reply, the fresh tokens of the rest: the same text, nothing lost or added
    assert tokenizer.decode(spliced, skip_special_tokens=False).replace(" ", "") == \
        tokenizer.decode(ids, skip_special_tokens=False).replace(" ", "")
    tail = spliced[len(first_ids) + len(generated):]
    assert tail == ids[len(ids) - len(tail):]
    assert spliced.count(tokenizer.convert_tokens_to_ids(IMAGE)) == 1


def test_each_turn_builds_on_the_last(tokenizer):
    """Turn 3 starts with turn 2's prompt as the engine got it (already spliced)."""
    memory = ReplyMemory(10_000)
    q1, r1, q2, r2 = f"{IMAGE}\nWhat is it?", "a circle", "Which colour?", "red"
    p1 = render("vicuna_v1", q1)
    ids1 = encode_prompt(tokenizer, p1, "whole")
    memory.remember(p1, ids1, r1, byte_ids(tokenizer, r1))
    p2 = render("vicuna_v1", q1, r1, q2)
    ids2 = memory.splice(p2, *fresh(tokenizer, p2), [r1])
    memory.remember(p2, ids2, r2, byte_ids(tokenizer, r2))
    p3 = render("vicuna_v1", q1, r1, q2, r2, "Sure?")
    ids3 = memory.splice(p3, *fresh(tokenizer, p3), [r1, r2])
    g1, g2 = byte_ids(tokenizer, r1), byte_ids(tokenizer, r2)
    assert ids3[: len(ids2) + len(g2)] == ids2 + g2
    assert ids2[: len(ids1) + len(g1)] == ids1 + g1


@pytest.mark.parametrize("change", ["edited reply", "other question", "other system prompt"])
def test_a_history_that_differs_is_tokenised_afresh(tokenizer, change):
    memory = ReplyMemory(10_000)
    question, reply = f"{IMAGE}\nWhat is it?", "a circle"
    first = render("vicuna_v1", question)
    memory.remember(first, encode_prompt(tokenizer, first, "whole"), reply, byte_ids(tokenizer, reply))
    sent_reply = reply + "." if change == "edited reply" else reply
    asked = "What is this?" if change == "other question" else question
    second = render("vicuna_v1", asked, sent_reply, "More?")
    if change == "other system prompt":
        second = prompt("vicuna_v1", "Be brief.", [Turn("user", question), Turn("assistant", reply),
                                                   Turn("user", "More?")])
    assert memory.splice(second, *fresh(tokenizer, second), [sent_reply]) is None


def test_no_cut_inside_a_token(tokenizer):
    """The fresh tokens must have a boundary where the reply ends; else nothing is kept."""
    memory = ReplyMemory(10_000)
    text = "USER: hi ASSISTANT: abc"
    memory.remember("USER: hi ASSISTANT:", [1, 2, 3], "ab", [7, 8])
    ids = [1, 2, 3, 9]
    spans = [(0, 0), (0, 8), (8, 19), (19, 23)]  # " abc" is one token
    assert memory.splice(text, ids, spans, ["ab"]) is None
    spans = [(0, 0), (0, 8), (8, 19), (19, 22), (22, 23)]
    assert memory.splice(text, [1, 2, 3, 9, 10], spans, ["ab"]) == [1, 2, 3, 7, 8, 10]


def test_memory_is_bounded_in_tokens():
    memory = ReplyMemory(100)
    for i in range(50):
        memory.remember(f"prompt {i}:", list(range(10)), f"reply {i}", [1, 2, 3])
    assert 0 < memory.tokens <= 100
    # the latest are kept, the oldest went first
    assert memory.splice("prompt 49: reply 49 then", [0, 1, 2], [(0, 10), (10, 19), (19, 24)],
                         ["reply 49"]) == [*range(10), 1, 2, 3, 2]
    assert memory.splice("prompt 0: reply 0 then", [0, 1, 2], [(0, 9), (9, 17), (17, 22)], ["reply 0"]) is None
    # one prompt's reply remembered again replaces the old entry, not adds to it
    before = memory.tokens
    memory.remember("prompt 49:", list(range(10)), "reply 49", [1, 2, 3])
    assert memory.tokens == before
    # too big to keep, or switched off
    memory.remember("huge:", list(range(200)), "x", [1])
    assert memory.tokens == before
    off = ReplyMemory(0)
    off.remember("p:", [1], "r", [2])
    assert off.tokens == 0 and off.splice("p: r", [1, 2], [(0, 2), (2, 4)], ["r"]) is None
