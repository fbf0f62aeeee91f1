"""Conversation formats shared by training and serving.

A format turns a system message and alternating user/assistant turns into text. For
training it yields *segments*: ``(text, trainable)`` pieces whose concatenation is
the sample, with ``trainable`` true exactly on what the assistant says (its answer
and end-of-turn token) — the loss mask. For serving, ``prompt`` is the same text
for the history plus the opening of the next assistant turn, so a model sees at
inference precisely the layout it was trained on.

Formats: ``plain`` (LLaVA stage 1: the image, then the caption), ``vicuna_v1``
(LLaVA v1/1.5), ``mistral_instruct`` (LLaVA-NeXT-Mistral), ``chatml`` (Qwen).
"""

from collections.abc import Callable
from dataclasses import dataclass

IMAGE = "<image>"
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

Segments = list[tuple[str, bool]]


@dataclass(frozen=True)
class Turn:
    role: str  # user | assistant
    text: str  # with IMAGE where each image stands


def _plain(system: str | None, turns: list[Turn]) -> tuple[Segments, str]:
    # Stage 1: no system message and no roles; a user turn is reduced to its images.
    out: Segments = []
    for turn in turns:
        out.append((IMAGE * turn.text.count(IMAGE), False) if turn.role == "user" else (turn.text + "\n", True))
    return out, ""


def _vicuna_v1(system: str | None, turns: list[Turn]) -> tuple[Segments, str]:
    out: Segments = [((system if system is not None else VICUNA_SYSTEM) + " ", False)]
    for turn in turns:
        if turn.role == "user":
            out.append((f"USER: {turn.text} ASSISTANT:", False))
        else:
            out.append((f" {turn.text}</s>", True))
    return out, "ASSISTANT:"


def _mistral_instruct(system: str | None, turns: list[Turn]) -> tuple[Segments, str]:
    out: Segments = []
    for i, turn in enumerate(turns):
        if turn.role == "user":
            text = f"{system}\n\n{turn.text}" if system and i == 0 else turn.text
            out.append((f"[INST] {text} [/INST]", False))
        else:
            out.append((f" {turn.text}</s>", True))
    return out, ""


def _chatml(system: str | None, turns: list[Turn]) -> tuple[Segments, str]:
    out: Segments = [(f"<|im_start|>system\n{system or 'You are a helpful assistant.'}<|im_end|>\n", False)]
    for turn in turns:
        if turn.role == "user":
            out.append((f"<|im_start|>user\n{turn.text}<|im_end|>\n<|im_start|>assistant\n", False))
        else:
            out.append((f"{turn.text}<|im_end|>", True))
            out.append(("\n", False))
    return out, "<|im_start|>assistant\n"


FORMATS: dict[str, Callable[[str | None, list[Turn]], tuple[Segments, str]]] = {
    "plain": _plain,
    "vicuna_v1": _vicuna_v1,
    "mistral_instruct": _mistral_instruct,
    "chatml": _chatml,
}


def _check(name: str) -> None:
    if name not in FORMATS:
        raise ValueError(f"unknown conversation format {name!r}; expected one of {sorted(FORMATS)}")


def segments(name: str, system: str | None, turns: list[Turn]) -> Segments:
    """Training text of a whole conversation, split into (text, trainable) segments."""
    _check(name)
    return [(text, trainable) for text, trainable in FORMATS[name](system, turns)[0] if text]


def prompt(name: str, system: str | None, turns: list[Turn]) -> str:
    """Serving text: the history, then the opening of the assistant's next turn.

    The history's user turns that wait for an answer are closed exactly as in training
    (``vicuna_v1`` training text ends a user turn with ``ASSISTANT:``).
    """
    _check(name)
    body, opening = FORMATS[name](system, turns)
    text = "".join(t for t, _ in body)
    if turns and turns[-1].role == "user":
        return text  # the user segment already opens the assistant turn
    return text + opening
