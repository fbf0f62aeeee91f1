"""TokenPacer: a streamed chunk's logprobs are the tokens of that chunk's text, with the shipped
model's word-piece tokenizer and the tiny models' byte-level BPE (no engine: the text vLLM
would send is played back with its stop-string hold-back)."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llava_model.tiny import build_tokenizer
from server.chat.token_pacing import TokenPacer

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture(scope="module", params=["shipped", "tiny"])
def tokenizer(request):
    if request.param == "shipped":
        return AutoTokenizer.from_pretrained(SHIPPED)
    return build_tokenizer()


def reply_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def play(tok, ids: list[int], stop: str | None = None):
    """(chunks of (text, token ids), final text) as a server streams them: each step's text is
    the fresh decode's new characters, held back while its end could begin ``stop``."""
    pacer, sent, chunks = TokenPacer(tok), "", []
    final = None
    for step, token_id in enumerate(ids):
        pacer.add([token_id], [{}])
        whole = tok.decode(ids[: step + 1], skip_special_tokens=True)
        finished = step == len(ids) - 1
        if stop and stop in whole:
            final, finished = whole[: whole.index(stop)], True
            visible = final
        elif stop and not finished:
            visible = whole
            for k in range(len(stop) - 1, 0, -1):  # a partial stop string at the end is held back
                if whole.endswith(stop[:k]):
                    visible = whole[:-k]
                    break
        else:
            visible = whole
        new, sent = visible[len(sent):], visible
        taken = pacer.take(len(sent), finished, by_stop_string=final is not None)
        chunks.append((new, [t for _, t, _ in taken]))
        if finished:
            break
    return chunks, sent


def test_each_chunks_tokens_spell_its_text_and_the_stop_strings_tokens_are_dropped(tokenizer):
    text = "the red circle is left of the blue square . yes , two circles"
    ids = reply_ids(tokenizer, text)
    chunks, sent = play(tokenizer, ids)
    assert sent == tokenizer.decode(ids, skip_special_tokens=True)
    assert [t for _, ts in chunks for t in ts] == ids  # every token, once, in order
    for new, ts in chunks:  # a token goes out with the text it spells
        assert tokenizer.decode(ts, skip_special_tokens=True).strip() == new.strip()

    chunks, sent = play(tokenizer, ids, stop="blue")
    assert sent == tokenizer.decode(ids, skip_special_tokens=True).split("blue")[0]
    taken = [t for _, ts in chunks for t in ts]
    assert taken == ids[: len(taken)] and len(taken) < len(ids)
    # the tokens shown spell the text shown but for the part of a token the stop string
    # begins inside of (here the word piece's space before "blue"); its tokens are not shown
    spelled = tokenizer.decode(taken, skip_special_tokens=True)
    assert sent.startswith(spelled) and sent[len(spelled):] in ("", " ")
    assert "blue" not in spelled
    # held-back text holds its tokens back: no chunk carries a token without its text
    for new, ts in chunks:
        assert bool(ts) <= bool(new.strip()) or not tokenizer.decode(ts, skip_special_tokens=True).strip()


def test_a_stop_string_inside_a_token_drops_that_token(tokenizer):
    ids = reply_ids(tokenizer, "the circle is red")
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    stop = "ircle"  # ends the text in the middle of a token
    chunks, sent = play(tokenizer, ids, stop=stop)
    assert sent == whole.split(stop)[0]
    taken = [t for _, ts in chunks for t in ts]
    spelled = tokenizer.decode(taken, skip_special_tokens=True)
    assert sent.startswith(spelled) and len(sent) - len(spelled) < len(stop) + 2
    assert taken == ids[: len(taken)] and len(taken) < len(ids)


def test_special_tokens_go_out_with_the_text_before_them(tokenizer):
    ids = reply_ids(tokenizer, "red circle")
    ids = ids[:1] + [tokenizer.convert_tokens_to_ids("<image>")] + ids[1:] + [tokenizer.eos_token_id]
    chunks, _ = play(tokenizer, ids)
    assert [t for _, ts in chunks for t in ts] == ids
    assert chunks[1] == ("", ids[1:2])  # zero wide: out at once, with no text of its own


def test_a_character_split_over_tokens_goes_out_with_its_last_token():
    tok = build_tokenizer()  # byte-level: a rare character is several byte tokens
    ids = reply_ids(tok, "a \u2603 b")
    assert len(ids) >= 4
    pacer, out = TokenPacer(tok), []
    for step, token_id in enumerate(ids):
        pacer.add([token_id], [{}])
        text = tok.decode(ids[: step + 1], skip_special_tokens=True)
        shown = text.rstrip("\ufffd")  # vLLM holds back an incomplete character
        out.append([t for _, t, _ in pacer.take(len(shown))])
    snowman = [i for i, ts in enumerate(out) if ts and "\u2603" in tok.decode(ts)]
    assert snowman and all(out[i] for i in snowman)
    assert [t for ts in out for t in ts] == ids


def test_positions_count_from_the_reply_start(tokenizer):
    ids = reply_ids(tokenizer, "two circles")
    pacer = TokenPacer(tokenizer)
    pacer.add(ids[:1], [{}])
    pacer.add(ids[1:], [{}] * (len(ids) - 1))
    assert [p for p, _, _ in pacer.take(10_000)] == list(range(len(ids)))


def test_token_bytes_put_split_characters_back_together(tokenizer):
    """OpenAI's ``bytes``: a character split over byte tokens (``<0xC3>`` ``<0xA9>`` in the shipped
    tokenizer, ``Ã`` ``©`` in byte-level BPE) is the concatenation of its tokens' bytes; vLLM names
    such tokens by text that is empty or U+FFFD, whose UTF-8 had lost them."""
    from vllm.tokenizers.detokenizer_utils import convert_ids_list_to_tokens

    from server.chat.token_pacing import TokenBytes

    text = "a red é, a snowman \u2603 and \u4e2d"
    ids = reply_ids(tokenizer, text)
    names = convert_ids_list_to_tokens(tokenizer, ids)  # the token texts the engine reports
    token_bytes = TokenBytes(tokenizer)
    spelled = b"".join(bytes(token_bytes(i, name)) for i, name in zip(ids, names))
    assert spelled.decode().lstrip(" ") == text
    assert b"".join(name.encode() for name in names).decode(errors="replace") != spelled.decode()
    image = tokenizer.convert_tokens_to_ids("<image>")
    assert token_bytes(image, "<image>") == list(b"<image>")  # special tokens: their name
