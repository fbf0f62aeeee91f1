"""A reply's text as a fresh decode of its generated ids gives it.

vLLM detokenises a reply in the context of its prompt, so a sentencepiece model's first
word piece (``▁2``) comes out as ``" 2"``, where transformers' ``decode`` of the
generated ids (and the original LLaVA) give ``"2"``. Byte-level BPE tokenizers keep a
generated space in a fresh decode too, so their text is left as it is.

At the other end, vLLM holds back the bytes of a character the last tokens left
incomplete (waiting for a token that would finish it); when the reply ends there
(``max_tokens`` cut a multi-byte character), those bytes are never shown. A fresh
decode shows them as U+FFFD, as transformers does, so the client can see the cut.
"""

REPLACEMENT = "\ufffd"


def fresh_start(tokenizer, text: str, token_ids) -> str:
    """``text`` (the start of a reply, non-empty) without the leading space that only the
    prompt's context put there."""
    if text.startswith(" ") and not tokenizer.decode(list(token_ids), skip_special_tokens=True).startswith(" "):
        return text[1:]
    return text


def _trailing_replacements(text: str) -> int:
    return len(text) - len(text.rstrip(REPLACEMENT))


def held_back_end(tokenizer, emitted: str, token_ids) -> str:
    """What a finished reply whose text so far ends with ``emitted`` lacks at its end: the
    U+FFFD a fresh decode of all its ``token_ids`` ends with, beyond those already shown.
    Decodes the whole reply only when its last token is part of a character."""
    ids = list(token_ids)
    if not ids or REPLACEMENT not in tokenizer.decode(ids[-1:], skip_special_tokens=True):
        return ""
    missing = _trailing_replacements(tokenizer.decode(ids, skip_special_tokens=True))
    missing -= _trailing_replacements(emitted)
    return REPLACEMENT * max(missing, 0)


def whole_reply(tokenizer, text: str, token_ids) -> str:
    """A finished reply's text (vLLM's) as a fresh decode of its ids gives it."""
    text = fresh_start(tokenizer, text, token_ids) if text else text
    return text + held_back_end(tokenizer, text, token_ids)
