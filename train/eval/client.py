"""An async client for any OpenAI-compatible chat endpoint (ours by default).

Bounded concurrency (a semaphore around each HTTP attempt), timeouts, and retries with
exponential back-off on 429, 5xx and transport errors, honouring ``Retry-After``. Every
attempt, retry and token is counted in ``ClientStats`` so callers (and tests) can see
exactly what happened on the wire.
"""

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Self

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # our server (``make serve``)
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class EndpointConfig:
    base_url: str = DEFAULT_BASE_URL
    model: str | None = None  # None: the first model the endpoint lists at GET /models
    api_key: str | None = None
    timeout_s: float = 120.0  # per attempt
    max_retries: int = 4  # attempts after the first
    backoff_s: float = 1.0  # wait before the first retry; doubles each retry
    backoff_max_s: float = 30.0  # cap on one wait (Retry-After included)
    concurrency: int = 4  # HTTP requests in flight at once
    max_tokens: int = 1024
    temperature: float = 0.0

    @classmethod
    def from_env(cls, prefix: str = "OPENAI", fallback: str | None = None, **given) -> "EndpointConfig":
        """Flags (``given``, None = not given) win over ``{prefix}_BASE_URL`` / ``_API_KEY`` / ``_MODEL``,
        which win over ``{fallback}_*``, which win over the defaults."""

        def env(name: str) -> str | None:
            for p in (prefix, fallback):
                if p and os.environ.get(f"{p}_{name}"):
                    return os.environ[f"{p}_{name}"]
            return None

        values = {"base_url": env("BASE_URL"), "api_key": env("API_KEY"), "model": env("MODEL")}
        values.update({k: v for k, v in given.items() if v is not None})
        return replace(cls(), **{k: v for k, v in values.items() if v is not None})


@dataclass
class ClientStats:
    requests: int = 0  # HTTP attempts made
    succeeded: int = 0  # calls that got a reply
    failed: int = 0  # calls that gave up
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    statuses: Counter = field(default_factory=Counter)  # HTTP status (or "timeout"/"transport") per attempt

    def as_dict(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k != "statuses"}
        out["statuses"] = {str(k): v for k, v in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))}
        return out


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    retries: int  # retries this call needed
    model: str


class ChatError(RuntimeError):
    """A call that failed for good (not retryable, or out of retries)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def user_message(text: str, image_url: str | None = None) -> dict:
    if image_url is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                        {"type": "text", "text": text}]}


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except Exception:  # noqa: BLE001 - any body shape: show its start
        return response.text[:200]


class ChatClient:
    """``async with ChatClient(config) as client: await client.chat(messages)``."""

    def __init__(self, config: EndpointConfig, *, sleep=asyncio.sleep):
        self.config = config
        self.stats = ClientStats()
        self._sleep = sleep
        self._gate = asyncio.Semaphore(config.concurrency)
        self._http: httpx.AsyncClient | None = None
        self._model = config.model
        self._model_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        limits = httpx.Limits(max_connections=self.config.concurrency + 2)
        self._http = httpx.AsyncClient(base_url=self.config.base_url.rstrip("/"), headers=headers,
                                       timeout=self.config.timeout_s, limits=limits)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._http.aclose()

    @property
    def resolved_model(self) -> str | None:
        """The model name in use (None until the first call when it comes from GET /models)."""
        return self._model

    async def model_name(self) -> str:
        async with self._model_lock:
            if self._model is None:
                body, _ = await self._call("GET", "/models", None)
                models = body.get("data") or []
                if not models:
                    raise ChatError(f"{self.config.base_url}/models lists no model; pass a model name")
                self._model = models[0]["id"]
        return self._model

    async def chat(self, messages: list[dict], *, max_tokens: int | None = None,
                   temperature: float | None = None) -> ChatResult:
        model = await self.model_name()
        body = {
            "model": model, "messages": messages,
            "max_tokens": max_tokens or self.config.max_tokens,
            "temperature": self.config.temperature if temperature is None else temperature,
        }
        reply, retries = await self._call("POST", "/chat/completions", body)
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            self.stats.failed += 1
            raise ChatError(f"reply has no choices[0].message.content: {str(reply)[:200]}") from exc
        usage = reply.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.stats.prompt_tokens += prompt
        self.stats.completion_tokens += completion
        self.stats.succeeded += 1
        return ChatResult(text, choice.get("finish_reason"), prompt, completion, retries, model)

    async def _call(self, method: str, path: str, body: dict | None) -> tuple[dict, int]:
        """The reply's JSON and the retries it took."""
        attempt = 0
        while True:
            wait, problem, status = None, None, None
            async with self._gate:
                self.stats.requests += 1
                try:
                    response = await self._http.request(method, path, json=body)
                except httpx.TimeoutException:
                    self.stats.statuses["timeout"] += 1
                    problem = f"timed out after {self.config.timeout_s} s"
                except httpx.TransportError as exc:
                    self.stats.statuses["transport"] += 1
                    problem = f"{type(exc).__name__}: {exc}"
                else:
                    status = response.status_code
                    self.stats.statuses[status] += 1
                    if status == 200:
                        try:
                            return response.json(), attempt
                        except ValueError:
                            problem = "reply is not JSON"
                    elif status in RETRY_STATUSES:
                        problem = f"HTTP {status}: {_error_message(response)}"
                        wait = _retry_after(response)
                    else:
                        self.stats.failed += 1
                        raise ChatError(f"{method} {path}: HTTP {status}: {_error_message(response)}", status)
            if attempt >= self.config.max_retries:
                self.stats.failed += 1
                raise ChatError(f"{method} {path}: {problem} (gave up after {attempt} retries)", status)
            attempt += 1
            self.stats.retries += 1
            backoff = self.config.backoff_s * 2 ** (attempt - 1) * random.uniform(0.75, 1.0)
            await self._sleep(min(wait if wait is not None else backoff, self.config.backoff_max_s))


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None
