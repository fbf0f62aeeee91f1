"""LLaVA's training data: the JSON format, its validation, and tokenisation with loss masks.

A file is a JSON list of ``{"id", "image"?, "conversations": [{"from": "human"|"gpt",
"value"}...]}``; ``<image>`` marks where the image stands in a human turn. Every
problem is reported with the sample's id (and position), all of them at once.

Tokenisation renders a conversation with a ``llava_model.chat_format`` format, tokenises
the text as the base model reads prompts (``llava_model.prompt_ids``: ``whole``, or in
``chunks`` around each ``<image>`` for checkpoints of the original repo) and labels exactly
the tokens inside assistant segments. A token
that straddles a segment edge, an ``<image>`` that did not become one image token, or
a sample left with nothing to learn is a *tokenisation mismatch*: counted, listed by
id, and the sample is left out — it never trains with a silent zero loss.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llava_model.chat_format import IMAGE, Turn, segments
from llava_model.prompt_ids import DEFAULT_TOKENIZATION, encode_prompt_with_offsets

IGNORE = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class DataError(ValueError):
    """Invalid training data; the message names every bad sample."""


@dataclass(frozen=True)
class Sample:
    id: str
    image: str | None
    turns: tuple[Turn, ...]


def _problems(index: int, raw: object, image_root: Path | None, check_files: bool) -> list[str]:
    if not isinstance(raw, dict):
        return [f"sample #{index}: not an object"]
    name = f"sample {raw.get('id', '?')!r} (#{index})"
    conv = raw.get("conversations")
    if not isinstance(conv, list) or not conv:
        return [f"{name}: 'conversations' must be a non-empty list"]
    out = []
    images = 0
    for t, turn in enumerate(conv):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES:
            out.append(f"{name}: turn {t} has role {turn.get('from') if isinstance(turn, dict) else turn!r}; "
                       f"expected one of {sorted(ROLES)}")
            continue
        value = turn.get("value")
        if not isinstance(value, str) or not value.replace(IMAGE, "").strip():
            out.append(f"{name}: turn {t} is empty")
            continue
        want = "user" if t % 2 == 0 else "assistant"
        if ROLES[turn["from"]] != want:
            out.append(f"{name}: turn {t} should be {'human' if want == 'user' else 'gpt'} (turns alternate, human first)")
        if ROLES[turn["from"]] == "assistant" and IMAGE in value:
            out.append(f"{name}: turn {t} (gpt) contains {IMAGE}")
        images += value.count(IMAGE)
    image = raw.get("image")
    if image is not None and not isinstance(image, str):
        out.append(f"{name}: 'image' must be a path string")
    want_images = 0 if image is None else 1
    if images != want_images:
        out.append(f"{name}: {images} {IMAGE} placeholder(s) for {want_images} image(s)")
    if isinstance(image, str) and check_files and image_root is not None and not (image_root / image).is_file():
        out.append(f"{name}: image file {image_root / image} does not exist")
    return out


def load_samples(path: str | Path, image_root: str | Path | None = None, check_files: bool = True) -> list[Sample]:
    """Read and validate a LLaVA JSON file; raise ``DataError`` listing every bad sample."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read LLaVA JSON: {exc}") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of samples, got {type(raw).__name__}")
    root = Path(image_root) if image_root is not None else None
    problems = [p for i, r in enumerate(raw) for p in _problems(i, r, root, check_files)]
    ids = [str(r.get("id", i)) for i, r in enumerate(raw)]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        problems.append(f"duplicate sample ids: {dup}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{path}: {len(problems)} problem(s):\n  {shown}{more}")
    return [
        Sample(sid, r.get("image"), tuple(Turn(ROLES[t["from"]], t["value"]) for t in r["conversations"]))
        for sid, r in zip(ids, raw, strict=True)
    ]


@dataclass
class Tokenised:
    input_ids: list[int]
    labels: list[int]


@dataclass
class MismatchReport:
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, sample_id: str, why: str) -> None:
        self.count += 1
        if len(self.examples) < 50:
            self.examples.append(f"{sample_id}: {why}")


def tokenise(sample: Sample, tokenizer, fmt: str, image_tokens: int, max_length: int,
             system: str | None = None, tokenization: str = DEFAULT_TOKENIZATION) -> Tokenised | str:
    """Input ids (each ``<image>`` expanded to ``image_tokens`` ids) and labels, or why not.

    ``tokenization`` is the model's prompt tokenisation (``llava_model.prompt_ids``), the
    one it is served with.
    """
    parts = segments(fmt, system, list(sample.turns))
    text = "".join(t for t, _ in parts)
    spans, pos = [], 0
    for t, trainable in parts:
        if trainable:
            spans.append((pos, pos + len(t)))
        pos += len(t)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE)
    encoded, offsets = encode_prompt_with_offsets(tokenizer, text, tokenization, image_token_id=image_id)
    ids, labels = [], []
    for tok, (start, end) in zip(encoded, offsets, strict=True):
        inside = [s <= start and end <= e for s, e in spans] if end > start else [False]
        crosses = any(start < e and s < end for s, e in spans) and not any(inside)
        if crosses:
            return f"token {tokenizer.convert_ids_to_tokens(tok)!r} at chars {start}-{end} straddles an answer edge"
        if tok == image_id:
            ids += [image_id] * image_tokens
            labels += [IGNORE] * image_tokens
        else:
            ids.append(tok)
            labels.append(tok if any(inside) else IGNORE)
    found = encoded.count(image_id)
    if found != text.count(IMAGE):
        return f"{text.count(IMAGE)} {IMAGE} in the text became {found} image token(s)"
    if len(ids) > max_length:
        last_image = max((i for i, t in enumerate(ids) if t == image_id), default=-1)
        if last_image >= max_length:
            return f"{len(ids)} tokens; the image does not fit in max_length {max_length}"
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return "no assistant tokens left to learn from"
    return Tokenised(ids, labels)


class LlavaDataset(torch.utils.data.Dataset):
    """Tokenised samples; images are opened and preprocessed lazily, as the server does."""

    def __init__(self, samples: Sequence[Sample], tokenizer, fmt: str, image_tokens: int, max_length: int,
                 image_config, image_root: str | Path | None = None, system: str | None = None,
                 tokenization: str = DEFAULT_TOKENIZATION):
        self.image_root = Path(image_root) if image_root is not None else Path(".")
        self.image_config = image_config
        self.tokenization = tokenization
        self.mismatches = MismatchReport()
        self.items: list[tuple[Sample, Tokenised]] = []
        for sample in samples:
            out = tokenise(sample, tokenizer, fmt, image_tokens, max_length, system, tokenization)
            if isinstance(out, str):
                self.mismatches.add(sample.id, out)
            else:
                self.items.append((sample, out))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        from llava_model.image_processing import preprocess_images

        sample, tok = self.items[index]
        item = {"input_ids": torch.tensor(tok.input_ids), "labels": torch.tensor(tok.labels)}
        if sample.image is not None:
            from PIL import Image

            with Image.open(self.image_root / sample.image) as image:
                item["pixel_values"] = preprocess_images([image], self.image_config)[0]
        return item


def collate(batch: list[dict], pad_id: int) -> dict:
    """Right-padded ids, labels (-100 on padding) and the batch's images in order."""
    longest = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = b["input_ids"], b["labels"], 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    pixels = [b["pixel_values"] for b in batch if "pixel_values" in b]
    if pixels:
        out["pixel_values"] = torch.stack(pixels)
    return out
