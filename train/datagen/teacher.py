"""Teachers: symbolic context + response type -> the teacher's text.

Both share one interface, ``await teacher.complete(context, kind) -> TeacherReply``, and
the same parser, runner and merge downstream:

- ``LLMTeacher``: any OpenAI-compatible chat endpoint (a GPT-4-class service or our own
  server), prompted with the type's system message and few-shot examples;
- ``TemplateTeacher``: the synthetic world's deterministic template teacher
  (``train.builtin.template_teacher``), whose conversations are written in the same text form.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from train.builtin.symbolic import KINDS, SymbolicContext
from train.datagen.parser import render
from train.datagen.prompts import PROMPTS_DIR, PromptSet, load_prompts
from train.eval.client import ChatClient


@dataclass(frozen=True)
class TeacherReply:
    text: str
    finish_reason: str | None = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    teacher: str = ""  # which teacher / model wrote it


class Teacher(Protocol):
    name: str

    async def complete(self, context: SymbolicContext, kind: str) -> TeacherReply: ...


@dataclass
class LLMTeacher:
    """Prompts an OpenAI-compatible endpoint through ``client`` (which bounds and retries)."""

    client: ChatClient
    prompts_dir: Path = PROMPTS_DIR
    max_tokens: int | None = None  # None: the client's setting
    name: str = "llm"
    _prompts: dict[str, PromptSet] = field(default_factory=dict, repr=False)

    def prompt(self, kind: str) -> PromptSet:
        if kind not in self._prompts:
            self._prompts[kind] = load_prompts(kind, self.prompts_dir)
        return self._prompts[kind]

    async def complete(self, context: SymbolicContext, kind: str) -> TeacherReply:
        result = await self.client.chat(self.prompt(kind).messages(context), max_tokens=self.max_tokens)
        return TeacherReply(result.text, result.finish_reason, result.prompt_tokens,
                            result.completion_tokens, result.retries, f"{self.name}:{result.model}")


@dataclass
class TemplateTeacher:
    """The synthetic world's template teacher behind the same interface (no network)."""

    seed: int = 0
    name: str = "template"

    async def complete(self, context: SymbolicContext, kind: str) -> TeacherReply:
        from train.builtin.template_teacher import template_conversation

        if kind not in KINDS:
            raise ValueError(f"unknown response type {kind!r}; expected one of {KINDS}")
        text = render(template_conversation(context, kind, seed=self.seed))
        return TeacherReply(text, "stop", teacher=f"{self.name}:{self.seed}")
