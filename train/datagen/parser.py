"""The teacher's text -> LLaVA ``conversations``, or a rejection with its reason.

The teacher writes ``Question:`` / ``Answer:`` blocks separated by ``===`` lines (a
detailed description may also be bare text, paired with one of the detail requests).
Replies that break the format, are cut off, refuse, or give away the symbolic context
(captions, boxes, coordinates) are rejected: LLaVA's data must read as if the teacher
saw the image.
"""

import re
import zlib

from train.builtin.symbolic import KINDS

MIN_CONVERSATION_TURNS = 2
MIN_DETAIL_WORDS = 8

_LABEL = re.compile(
    r"^\s*[*_#>]*\s*(question|answer|q|a|user|human|assistant|gpt)\s*[*_]*\s*[:：]\s*[*_]*\s*(.*)$",
    re.IGNORECASE)
_ASKS = {"question", "q", "user", "human"}
_SEPARATOR = re.compile(r"^\s*(===+|---+)\s*$")
_LEAKS = (
    (re.compile(r"\bcaptions?\b", re.IGNORECASE), "mentions the captions"),
    (re.compile(r"\bcoordinates?\b", re.IGNORECASE), "mentions coordinates"),
    (re.compile(r"\bbounding[- ]box(es)?\b", re.IGNORECASE), "mentions bounding boxes"),
    (re.compile(r"\bnormali[sz]ed\b", re.IGNORECASE), "mentions normalised values"),
    (re.compile(r"\[\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+"), "quotes a box"),
    (re.compile(r"(?<![\d.])0\.\d{2,}\b"), "quotes a box coordinate"),
    (re.compile(r"\baccording to the (text|description|information|data)\b", re.IGNORECASE),
     "refers to its text input"),
)
_REFUSALS = re.compile(
    r"\bas an ai\b|\bI (cannot|can't|can not) see\b|\bI'?m sorry\b|\bI am unable\b", re.IGNORECASE)


class Rejected(ValueError):
    """A teacher reply that cannot become training data; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _blocks(text: str) -> tuple[str, list[tuple[bool, str]]]:
    """Text before the first label, and (is_question, body) per labelled block."""
    preamble: list[str] = []
    blocks: list[tuple[bool, list[str]]] = []
    for line in text.splitlines():
        if _SEPARATOR.match(line):
            continue
        m = _LABEL.match(line)
        if m:
            blocks.append((m.group(1).lower() in _ASKS, [m.group(2)]))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            preamble.append(line)
    return "\n".join(preamble).strip(), [(q, "\n".join(body).strip()) for q, body in blocks]


def _pairs(blocks: list[tuple[bool, str]]) -> list[tuple[str, str]]:
    pairs = []
    for i in range(0, len(blocks), 2):
        is_q, question = blocks[i]
        if not is_q:
            raise Rejected(f"block {i + 1} is an answer without a question")
        if i + 1 >= len(blocks):
            raise Rejected(f"question {len(pairs) + 1} has no answer")
        is_q2, answer = blocks[i + 1]
        if is_q2:
            raise Rejected(f"question {len(pairs) + 1} is followed by another question, not an answer")
        if not question:
            raise Rejected(f"question {len(pairs) + 1} is empty")
        if not answer:
            raise Rejected(f"answer {len(pairs) + 1} is empty")
        pairs.append((question, answer))
    return pairs


def _check_content(text: str) -> None:
    if "<image>" in text:
        raise Rejected("contains the <image> placeholder")
    for pattern, reason in _LEAKS:
        m = pattern.search(text)
        if m:
            raise Rejected(f"{reason} ({m.group(0)!r}): the teacher must speak as if it sees the image")
    m = _REFUSALS.search(text)
    if m:
        raise Rejected(f"refuses or breaks character ({m.group(0)!r})")


def parse_reply(text: str, kind: str, *, image_id: str = "", finish_reason: str | None = None,
                instructions: tuple[str, ...] = ("Describe the image in detail.",)) -> list[dict]:
    """LLaVA conversations (no ``<image>`` token) from one teacher reply; raises ``Rejected``."""
    if kind not in KINDS:
        raise ValueError(f"unknown response type {kind!r}; expected one of {KINDS}")
    if finish_reason == "length":
        raise Rejected("reply cut off at the token limit (finish_reason=length)")
    text = (text or "").strip()
    if not text:
        raise Rejected("empty reply")
    _check_content(text)
    preamble, blocks = _blocks(text)
    if kind == "detail" and not blocks:
        if len(text.split()) < MIN_DETAIL_WORDS:
            raise Rejected(f"description has {len(text.split())} words, fewer than {MIN_DETAIL_WORDS}")
        pairs = [(instructions[zlib.crc32(image_id.encode()) % len(instructions)], text)]
    else:
        if not blocks:
            raise Rejected("no 'Question:' / 'Answer:' blocks found")
        if preamble:
            raise Rejected(f"text before the first 'Question:' ({preamble[:40]!r})")
        pairs = _pairs(blocks)
    if kind == "conversation" and len(pairs) < MIN_CONVERSATION_TURNS:
        raise Rejected(f"a conversation needs at least {MIN_CONVERSATION_TURNS} exchanges, "
                       f"found {len(pairs)}")
    if kind in ("complex", "detail") and len(pairs) != 1:
        raise Rejected(f"a {kind} reply has exactly one question, found {len(pairs)}")
    if kind == "detail" and len(pairs[0][1].split()) < MIN_DETAIL_WORDS:
        raise Rejected(f"description has {len(pairs[0][1].split())} words, fewer than {MIN_DETAIL_WORDS}")
    out = []
    for question, answer in pairs:
        out += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return out


def render(conversations: list[dict]) -> str:
    """The teacher's text form of ``conversations`` (``parse_reply`` reads it back)."""
    blocks = []
    for turn in conversations:
        label = "Question" if turn["from"] == "human" else "Answer"
        blocks.append(f"{label}:\n{turn['value'].strip()}\n===")
    return "\n".join(blocks)
