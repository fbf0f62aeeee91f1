"""Prompt text -> token ids, the way the checkpoint was trained to read it.

Two tokenisations exist for LLaVA prompts, and a model only answers as trained when it
is served with the one it learnt on:

- ``whole`` (llava-hf, transformers' processors, our trainer): the prompt is tokenised
  once, ``<image>`` being an added special token. A leading BOS is added unless the
  text already starts with the BOS text (a chat template that writes ``{{ bos_token }}``).
- ``chunks`` (the original LLaVA repo, ``llava.mm_utils.tokenizer_image_token``, which
  LLaVA v1/1.5 were trained with): the text is split at every ``<image>`` and each chunk
  is tokenised on its own with the tokenizer's default special tokens. If the first
  chunk's ids start with BOS, that BOS is kept once and the first id of every chunk is
  dropped (each chunk's own BOS); if not, the chunks' ids are kept as they are. One image
  token id stands between consecutive chunks. An empty chunk (``<image>`` first, or two
  ``<image>`` side by side) contributes only its special tokens, so nothing once its BOS
  is dropped. With a Llama (sentencepiece) tokenizer every chunk gets its own dummy-prefix
  ``▁``, so ``...USER: <image>\\n...`` reads ``':' '▁' <image> '▁' '\\n'`` where ``whole``
  reads ``':' '▁' <image> '\\n'``: one id less per image. A text that starts with the BOS
  text gets a second BOS in this mode, as it did in the original.

The choice is a per-model setting, the top-level ``config.json`` key
``llava_prompt_tokenization``; absent means ``whole``. ``llava-convert`` writes ``chunks``
for checkpoints of the original repo; the trainer tokenises with its base model's setting
and writes it into what it exports. The server, the offline generator and the trainer all
call ``encode_prompt`` / ``encode_prompt_with_offsets`` below, so they cannot disagree.
"""

import json
from collections.abc import Mapping
from pathlib import Path

from llava_model.chat_format import IMAGE

SETTING = "llava_prompt_tokenization"
TOKENIZATIONS: tuple[str, ...] = ("whole", "chunks")
DEFAULT_TOKENIZATION = "whole"

Span = tuple[int, int]


def check_tokenization(value: object) -> str:
    if value not in TOKENIZATIONS:
        raise ValueError(f"{SETTING} {value!r} is not one of {TOKENIZATIONS}")
    return str(value)


def prompt_tokenization(source: object) -> str:
    """The setting of a model: from its config object, a config dict, or its directory
    (``config.json`` there). Absent (or no ``config.json``): ``whole``."""
    if isinstance(source, (str, Path)):
        path = Path(source) / "config.json"
        if not path.is_file():
            return DEFAULT_TOKENIZATION
        source = json.loads(path.read_text())
    if isinstance(source, Mapping):
        value = source.get(SETTING)
    else:
        value = getattr(source, SETTING, None)
    return DEFAULT_TOKENIZATION if value is None else check_tokenization(value)


def write_prompt_tokenization(model_dir: str | Path, value: str) -> None:
    """Set the setting in ``model_dir/config.json`` (other keys untouched)."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    config[SETTING] = check_tokenization(value)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _encode(tokenizer, text: str, add_special_tokens: bool,
            offsets: bool) -> tuple[list[int], list[Span] | None]:
    if offsets:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return list(enc["input_ids"]), [(int(s), int(e)) for s, e in enc["offset_mapping"]]
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens)), None


def _image_token_id(tokenizer) -> int:
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    if image_id is None or image_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"the tokenizer has no {IMAGE} token")
    return int(image_id)


def encode_prompt_with_offsets(
    tokenizer, text: str, tokenization: str, *, image_token_id: int | None = None, offsets: bool = True
) -> tuple[list[int], list[Span] | None]:
    """Ids of ``text`` (one image id per ``<image>``) and, with ``offsets``, each id's
    character span in ``text`` (special tokens: empty spans; offsets need a fast tokenizer)."""
    if check_tokenization(tokenization) == "whole":
        bos = getattr(tokenizer, "bos_token", None)
        return _encode(tokenizer, text, not (bos and text.startswith(bos)), offsets)

    image_id = _image_token_id(tokenizer) if image_token_id is None else int(image_token_id)
    chunks: list[tuple[list[int], list[Span] | None]] = []
    image_spans: list[Span] = []
    start = 0
    for i, piece in enumerate(text.split(IMAGE)):
        if i:
            image_spans.append((start - len(IMAGE), start))
        ids, spans = _encode(tokenizer, piece, True, offsets)
        if spans is not None:
            spans = [(s + start, e + start) for s, e in spans]
        chunks.append((ids, spans))
        start += len(piece) + len(IMAGE)

    first_ids, first_spans = chunks[0]
    bos_id = getattr(tokenizer, "bos_token_id", None)
    keep_bos = bos_id is not None and len(first_ids) > 0 and first_ids[0] == bos_id
    drop = 1 if keep_bos else 0  # the first id of every chunk, as the original does
    out_ids: list[int] = first_ids[:1] if keep_bos else []
    out_spans: list[Span] = list(first_spans[:1]) if (keep_bos and first_spans is not None) else []
    for i, (ids, spans) in enumerate(chunks):
        if i:
            out_ids.append(image_id)
            out_spans.append(image_spans[i - 1])
        out_ids.extend(ids[drop:])
        if spans is not None:
            out_spans.extend(spans[drop:])
    return out_ids, (out_spans if offsets else None)


def encode_prompt(tokenizer, text: str, tokenization: str, *, image_token_id: int | None = None) -> list[int]:
    """Token ids of a prompt text with one image id where each ``<image>`` stands,
    tokenised ``whole`` or in ``chunks`` (see the module's docstring)."""
    ids, _ = encode_prompt_with_offsets(tokenizer, text, tokenization, image_token_id=image_token_id,
                                        offsets=False)
    return ids
