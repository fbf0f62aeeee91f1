"""OpenAI chat-completions wire format, as pydantic models.

Unknown fields are ignored, as OpenAI's API does; fields of the wrong type fail
validation (a 400): types are strict, so ``"max_tokens": "4"``, ``"n": true`` or
``"stream": "yes"`` are refused rather than guessed at (an integer is still a number). An
explicit ``null`` means the field's default. Only what this server acts on is modelled.
"""

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ImageURL(_Lenient):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Lenient):
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> "Message":
        if self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role != "user" and isinstance(self.content, list):
            if any(isinstance(p, ImagePart) for p in self.content):
                raise ValueError(f"images are only accepted in user messages, not {self.role}")
        return self


class StreamOptions(_Lenient):
    include_usage: bool = False


# The engine compiles a schema into a grammar in its own process, and every request waits
# while it does: a 20,000-value enum took 13 s and stalled all other requests for 8 s. The
# limits below are OpenAI's enum limit and a size no hand-written schema comes near.
MAX_SCHEMA_ENUM_VALUES = 1000
MAX_SCHEMA_BYTES = 64 * 1024


def _objects(node: Any, budget: int, skip: tuple[str, ...] = ()):
    """The schema's objects, everywhere in it, iteratively and at most ``budget`` nodes (values
    under the keys in ``skip`` are data, not schemas, and are not entered)."""
    stack, seen = [node], 0
    while stack and seen < budget:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            yield item
            stack.extend(v for k, v in item.items() if k not in skip)
        elif isinstance(item, list):
            stack.extend(item)


def _enum_values(node: Any, budget: int = 100_000) -> int:
    """How many enum values the schema lists, everywhere in it (iteratively, bounded)."""
    return sum(len(item["enum"]) for item in _objects(node, budget, skip=("enum", "const"))
               if isinstance(item.get("enum"), list))


# Keywords that only combine or name schemas: following them matches nothing yet. A cycle made of
# them alone (``{"$ref": "#/$defs/a"}`` with ``a`` = ``{"$ref": "#/$defs/a"}``) is a grammar that
# can never produce a value; the engine answered such a request 200 with empty content.
_PASS_THROUGH = ("allOf", "anyOf", "oneOf")


def _pointer(root: Any, ref: str) -> Any:
    """The node a local ``$ref`` (``#`` or ``#/a/b``) names, or None."""
    if not (ref == "#" or ref.startswith("#/")):
        return None
    node = root
    for part in ref[2:].split("/") if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _ref_loop(root: Any, budget: int = 10_000) -> str | None:
    """A local ``$ref`` that leads back to itself through ``$ref`` / allOf / anyOf / oneOf only,
    before any keyword that matches part of a value; None when there is none."""
    # every node of a schema within MAX_SCHEMA_BYTES (a node takes at least two bytes of JSON)
    refs = [item["$ref"] for item in _objects(root, MAX_SCHEMA_BYTES) if isinstance(item.get("$ref"), str)]
    for ref in dict.fromkeys(refs):
        seen, frontier, steps = set(), [_pointer(root, ref)], 0
        while frontier and steps < budget:
            node, steps = frontier.pop(), steps + 1
            if not isinstance(node, dict) or id(node) in seen:
                continue
            seen.add(id(node))
            if node.get("$ref") == ref:
                return ref
            if isinstance(node.get("$ref"), str):
                frontier.append(_pointer(root, node["$ref"]))
            for key in _PASS_THROUGH:
                if isinstance(node.get(key), list):
                    frontier.extend(node[key])
    return None


class JSONSchemaFormat(_Lenient):
    name: str = "response"
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _compilable_in_time(cls, schema: dict[str, Any]) -> dict[str, Any]:
        size = len(json.dumps(schema, ensure_ascii=False).encode())
        if size > MAX_SCHEMA_BYTES:
            raise ValueError(f"the schema is {size} bytes of JSON; at most {MAX_SCHEMA_BYTES} are accepted")
        values = _enum_values(schema)
        if values > MAX_SCHEMA_ENUM_VALUES:
            raise ValueError(f"the schema lists {values} enum values; at most {MAX_SCHEMA_ENUM_VALUES} are accepted")
        loop = _ref_loop(schema)
        if loop is not None:
            raise ValueError(f"the schema's $ref {loop!r} refers back to itself before matching any part of a "
                             "value, so no value can match it")
        return schema


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_present(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs a json_schema object")
        return self


# fields with a non-null default: OpenAI's API takes an explicit null for them
_DEFAULTED = ("n", "logprobs", "stream", "min_tokens", "ignore_eos")


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what the engine can carry
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    # vLLM-compatible extensions, for fixed-length benchmarks and tests.
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        if isinstance(data, dict):
            nulls = [k for k in _DEFAULTED if k in data and data[k] is None]
            if nulls:
                data = {k: v for k, v in data.items() if k not in nulls}
        return data

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @model_validator(mode="after")
    def _logprobs(self) -> "ChatCompletionRequest":
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


# ---- responses ---------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
