"""Chat templates: messages -> prompt text with one ``<image>`` where each image stands.

Built-in LLaVA formats (``vicuna_v1`` for LLaVA v1/1.5, ``mistral_instruct`` for
LLaVA-NeXT-Mistral, ``chatml`` for Qwen-based models, ``plain`` for stage-1
checkpoints) are the ones training uses (``llava_model.chat_format``); a checkpoint's
own Jinja template (``tokenizer.chat_template``) or a Jinja file given by flag is
rendered in a sandbox with HF-style content lists (``{"type": "image"}`` entries).
"""

from collections.abc import Callable
from pathlib import Path

from llava_model.chat_format import FORMATS, IMAGE, VICUNA_SYSTEM, Turn, prompt
from server.chat.protocol import ImagePart, Message

__all__ = [
    "IMAGE", "VICUNA_SYSTEM", "ChatTemplate", "TemplateError", "choose_template", "hf_messages", "message_text",
    "split_system",
]


class TemplateError(ValueError):
    """The chat template refused the messages (its ``raise_exception``) or failed on them."""


def message_text(message: Message) -> str:
    """A message's text, one ``<image>`` where each image part stands."""
    if isinstance(message.content, str):
        return message.content
    return "\n".join(IMAGE if isinstance(p, ImagePart) else p.text for p in message.content)


def split_system(messages: list[Message]) -> tuple[str | None, list[Turn]]:
    system = [message_text(m) for m in messages if m.role in ("system", "developer")]
    turns = [Turn(m.role, message_text(m)) for m in messages if m.role in ("user", "assistant")]
    return ("\n".join(system) if system else None), turns


# The formats live in llava_model.chat_format, shared with training (train/).
BUILTIN = tuple(FORMATS)
DEFAULT_BY_TEXT_MODEL = {"mistral": "mistral_instruct", "mixtral": "mistral_instruct", "qwen2": "chatml"}


def hf_messages(messages: list[Message]) -> list[dict]:
    """Messages as HF chat templates expect them (image parts become ``{"type": "image"}``)."""
    out = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        if isinstance(m.content, str):
            out.append({"role": role, "content": m.content})
        else:
            parts = [
                {"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
                for p in m.content
            ]
            out.append({"role": role, "content": parts})
    return out


class ChatTemplate:
    def __init__(self, name: str, render: Callable[[list[Message]], str]):
        self.name = name
        self._render = render

    def render(self, messages: list[Message]) -> str:
        return self._render(messages)


def _jinja(source: str, tokenizer) -> Callable[[list[Message]], str]:
    from jinja2 import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    template = env.from_string(source)
    specials = {
        "bos_token": getattr(tokenizer, "bos_token", "") or "",
        "eos_token": getattr(tokenizer, "eos_token", "") or "",
    }

    def render(messages: list[Message]) -> str:
        try:
            return template.render(messages=hf_messages(messages), add_generation_prompt=True, **specials)
        except TemplateError:
            raise
        except JinjaError as exc:  # undefined names, sandbox refusals: the template cannot take these messages
            raise TemplateError(f"{type(exc).__name__}: {str(exc)[:200]}") from None

    return render


def _raise_exception(message: str = "") -> None:
    """What HF chat templates call to refuse a conversation (e.g. roles that do not alternate)."""
    raise TemplateError(str(message)[:500] or "refused")


def choose_template(flag: str | None, tokenizer, text_model_type: str) -> ChatTemplate:
    """Flag (built-in name or Jinja file) > the checkpoint's own > by LLM family."""
    if flag:
        if flag in BUILTIN:
            return _builtin(flag)
        path = Path(flag)
        if not path.is_file():
            raise ValueError(f"--chat-template {flag!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file")
        return ChatTemplate(f"file:{path}", _jinja(path.read_text(), tokenizer))
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own.strip():
        return ChatTemplate("checkpoint", _jinja(own, tokenizer))
    return _builtin(DEFAULT_BY_TEXT_MODEL.get(text_model_type, "vicuna_v1"))


def _builtin(name: str) -> ChatTemplate:
    def render(messages: list[Message]) -> str:
        return prompt(name, *split_system(messages))

    return ChatTemplate(name, render)
