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

import json
from collections.abc import Callable
from dataclasses import dataclass

IMAGE = "<image>"
EOS = "</s>"  # ends an assistant turn in vicuna_v1 and mistral_instruct
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_USER, VICUNA_ASSISTANT = "USER:", "ASSISTANT:"
MISTRAL_INST, MISTRAL_INST_END = "[INST]", "[/INST]"
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
CHATML_SYSTEM = "You are a helpful assistant."

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


def _reply(text: str) -> str:
    """An assistant turn's text after the format's separating space. A reply sent back as
    history usually starts with that space already (the first generated token carries it,
    e.g. ``" The"`` after ``ASSISTANT:``), and a doubled space would be other tokens than
    the model generated: the history would leave its training format and miss the prefix
    cache from that point on."""
    return text.removeprefix(" ")


def _vicuna_v1(system: str | None, turns: list[Turn]) -> tuple[Segments, str]:
    out: Segments = [((system if system is not None else VICUNA_SYSTEM) + " ", False)]
    for turn in turns:
        if turn.role == "user":
            out.append((f"{VICUNA_USER} {turn.text} {VICUNA_ASSISTANT}", False))
        else:
            out.append((f" {_reply(turn.text)}{EOS}", True))
    return out, VICUNA_ASSISTANT


def _mistral_instruct(system: str | None, turns: list[Turn]) -> tuple[Segments, str]:
    out: Segments = []
    for i, turn in enumerate(turns):
        if turn.role == "user":
            text = f"{system}\n\n{turn.text}" if system and i == 0 else turn.text
            out.append((f"{MISTRAL_INST} {text} {MISTRAL_INST_END}", False))
        else:
            out.append((f" {_reply(turn.text)}{EOS}", True))
    return out, ""


def _chatml(system: str | None, turns: list[Turn]) -> tuple[Segments, str]:
    out: Segments = [(f"{CHATML_START}system\n{system or CHATML_SYSTEM}{CHATML_END}\n", False)]
    for turn in turns:
        if turn.role == "user":
            out.append((f"{CHATML_START}user\n{turn.text}{CHATML_END}\n{CHATML_START}assistant\n", False))
        else:
            out.append((f"{turn.text}{CHATML_END}", True))
            out.append(("\n", False))
    return out, f"{CHATML_START}assistant\n"


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


# Jinja chat templates (HF ``tokenizer.chat_template``) of the same formats, written from the
# same constants. Every statement trims the whitespace around it and text is emitted only
# through ``{{ }}``, so the output is the same with or without trim_blocks/lstrip_blocks.
# Messages are HF-style: content is a string or a list of {"type": "image"} / {"type": "text"}
# parts (joined by newlines, an image standing as IMAGE), as the server turns them into Turns.
# With add_generation_prompt the result is ``prompt``'s text; without it, ``segments``' text.


def _lit(text: str) -> str:
    """``text`` as a Jinja string literal (Jinja reads JSON's escapes)."""
    return json.dumps(text)


def _out(expr: str) -> str:
    return "{{ " + expr + " }}"


NL = _lit("\n")
# text(content): a message's text; ns.system: the system messages' text (none without one).
_READ_MESSAGES = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}" + _out("content") + "{%- else -%}"
    "{%- for part in content -%}"
    "{%- if not loop.first -%}" + _out(NL) + "{%- endif -%}"
    "{%- if part['type'] in ('image', 'image_url') -%}" + _out(_lit(IMAGE)) + "{%- else -%}" + _out("part['text']")
    + "{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
    "{%- set ns = namespace(system=none, last=none) -%}"
    "{%- for m in messages if m['role'] in ('system', 'developer') -%}"
    "{%- set ns.system = text(m['content']) if ns.system is none else ns.system ~ " + NL + " ~ text(m['content']) -%}"
    "{%- endfor -%}"
)


def _turns(user: str, assistant: str) -> str:
    """The turns, each written by ``user`` or ``assistant``: Jinja expressions of its text ``t``."""
    return (
        "{%- for m in messages if m['role'] in ('user', 'assistant') -%}{%- set t = text(m['content']) -%}"
        "{%- if m['role'] == 'user' -%}" + _out(user) + "{%- else -%}" + _out(assistant) + "{%- endif -%}"
        "{%- set ns.last = m['role'] -%}{%- endfor -%}"
    )


def _opening(text: str) -> str:
    """The next assistant turn's opening, unless the last (user) turn already ends with it."""
    return "{%- if add_generation_prompt and ns.last != 'user' -%}" + _out(_lit(text)) + "{%- endif -%}"


# ``" " + _reply(t) + EOS``
_JINJA_REPLY = f"' ' ~ (t[1:] if t[:1] == ' ' else t) ~ {_lit(EOS)}"


def _jinja_plain() -> str:
    return _READ_MESSAGES + _turns(f"{_lit(IMAGE)} * t.count({_lit(IMAGE)})", f"t ~ {NL}")


def _jinja_vicuna_v1() -> str:
    system = _out(f"(ns.system if ns.system is not none else {_lit(VICUNA_SYSTEM)}) ~ ' '")
    user = f"{_lit(VICUNA_USER + ' ')} ~ t ~ {_lit(' ' + VICUNA_ASSISTANT)}"
    return _READ_MESSAGES + system + _turns(user, _JINJA_REPLY) + _opening(VICUNA_ASSISTANT)


def _jinja_mistral_instruct() -> str:
    system_first = f"((ns.system ~ {NL} ~ {NL}) if loop.first and ns.system else '')"
    user = f"{_lit(MISTRAL_INST + ' ')} ~ {system_first} ~ t ~ {_lit(' ' + MISTRAL_INST_END)}"
    return _READ_MESSAGES + _turns(user, _JINJA_REPLY)


def _jinja_chatml() -> str:
    def block(role: str) -> str:
        return _lit(f"{CHATML_START}{role}\n")

    end = _lit(f"{CHATML_END}\n")
    system = _out(f"{block('system')} ~ (ns.system if ns.system else {_lit(CHATML_SYSTEM)}) ~ {end}")
    user = f"{block('user')} ~ t ~ {end} ~ {block('assistant')}"
    return _READ_MESSAGES + system + _turns(user, f"t ~ {end}") + _opening(f"{CHATML_START}assistant\n")


_JINJA: dict[str, Callable[[], str]] = {
    "plain": _jinja_plain,
    "vicuna_v1": _jinja_vicuna_v1,
    "mistral_instruct": _jinja_mistral_instruct,
    "chatml": _jinja_chatml,
}


def chat_template(name: str) -> str:
    """Format ``name`` as a Jinja chat template (for ``tokenizer.chat_template`` or a server's
    ``--chat-template`` file) that renders exactly ``prompt``'s text."""
    _check(name)
    return _JINJA[name]()
