"""A reply's text as a fresh decode of its generated ids gives it.

vLLM detokenises a reply in the context of its prompt, so a sentencepiece model's first
word piece (``▁2``) comes out as ``" 2"``, where transformers' ``decode`` of the
generated ids (and the original LLaVA) give ``"2"``. Byte-level BPE tokenizers keep a
generated space in a fresh decode too, so their text is left as it is.
"""


def fresh_start(tokenizer, text: str, token_ids) -> str:
    """``text`` (the start of a reply, non-empty) without the leading space that only the
    prompt's context put there."""
    if text.startswith(" ") and not tokenizer.decode(list(token_ids), skip_special_tokens=True).startswith(" "):
        return text[1:]
    return text
