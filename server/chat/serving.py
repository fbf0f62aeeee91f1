"""Chat completions over the engine: prompt + images -> sampling -> response or SSE stream."""

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from llava_model.reply_text import fresh_start, held_back_end
from server.chat.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ImagePart,
    TokenLogprob,
    TopLogprob,
    Usage,
    completion_id,
    now,
)
from server.chat.reply_memory import ReplyMemory
from server.chat.templates import IMAGE, ChatTemplate, TemplateError, message_text
from server.chat.token_pacing import TokenBytes, TokenPacer
from server.errors import APIError, bad_request

log = logging.getLogger("server.chat")
_GREEDY_BELOW = 1e-5  # vLLM decodes greedily below this temperature


class ChatService:
    def __init__(self, *, engine, template: ChatTemplate, images, metrics, limiter, settings, image_tokens):
        self.engine = engine
        self.template = template
        self.images = images
        self.metrics = metrics
        self.limiter = limiter
        self.settings = settings
        self.image_tokens = image_tokens  # llava_model.anyres.ImageTokenCount
        self.tokenizer = engine.llm.get_tokenizer()
        self.image_id = self.tokenizer.convert_tokens_to_ids(IMAGE)
        self.token_bytes = TokenBytes(self.tokenizer)
        # How this checkpoint was trained to read prompts (llava_model.prompt_ids), read once:
        # the engine's config, else the model directory's config.json.
        from llava_model.prompt_ids import SETTING, prompt_tokenization

        hf_config = getattr(getattr(engine.llm, "model_config", None), "hf_config", None)
        self.prompt_tokenization = prompt_tokenization(
            hf_config if getattr(hf_config, SETTING, None) is not None else settings.model_dir())
        log.info("prompt tokenization: %s", self.prompt_tokenization)
        self._prompt_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompt")
        self.replies = ReplyMemory(settings.reply_memory_tokens)
        eos = getattr(self.tokenizer, "eos_token_id", None)
        self._eos = {eos} if isinstance(eos, int) else set()

    # ---- entry point -------------------------------------------------------------------------
    def _lora(self, model: str):
        """The LoRA request for ``model`` (``None``: the base model); 404 for a model not served."""
        if model == self.engine.model_name:
            base = self.engine.base_lora
            return base.request() if base is not None else None
        adapter = self.engine.adapters.get(model)
        if adapter is None:
            served = ", ".join(repr(m) for m in [self.engine.model_name, *self.engine.adapters])
            raise APIError(404, f"model {model!r} does not exist; this server serves {served}",
                           param="model", code="model_not_found")
        return adapter.request()

    async def create(self, req: ChatCompletionRequest, raw: Request):
        lora = self._lora(req.model)
        if self.engine.dead:
            raise APIError(503, "the engine has stopped; the server cannot serve requests", headers={"Retry-After": "5"})
        deadline = time.perf_counter() + self.settings.request_timeout_s  # fetch + preprocess + generate
        self.limiter.acquire()
        media = self.images.request_media()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                media.release()
                self.limiter.release()

        try:
            prompt = await _watched(self._prompt(req, media), raw, deadline, self.settings)
            params, copies = self._sampling(req, prompt.length)
        except _Disconnected:
            release()
            return Response(status_code=499)  # nobody is listening; nginx's "client closed request"
        except BaseException:
            release()
            raise
        self.metrics.images.observe(prompt.images)
        rid = completion_id()
        if req.stream:
            stream = self._stream(req, prompt, params, copies, rid, deadline, release, lora)
            return StreamingResponse(stream, media_type="text/event-stream", background=BackgroundTask(release))
        try:
            return await self._complete(req, prompt, params, copies, rid, raw, deadline, lora)
        except _Disconnected:
            return Response(status_code=499)
        finally:
            release()

    # ---- prompt --------------------------------------------------------------------------------
    async def _prompt(self, req: ChatCompletionRequest, media) -> "_Prompt":
        urls = []
        for i, message in enumerate(req.messages):
            parts = [message.content] if isinstance(message.content, str) else message.content
            for part in parts:
                if isinstance(part, ImagePart):
                    urls.append(part.image_url.url)
                elif IMAGE in (part if isinstance(part, str) else part.text):
                    raise bad_request(f"messages[{i}] text contains {IMAGE!r}; send images as image_url parts",
                                      param=f"messages[{i}].content")
        # Rendering and tokenising a long prompt takes a while: off the event loop, one at a time
        # (the tokenizer is shared).
        loop = asyncio.get_running_loop()
        text, ids = await loop.run_in_executor(self._prompt_pool, self._token_ids, req.messages)
        if ids.count(self.image_id) != len(urls):
            raise bad_request(f"chat template {self.template.name!r} placed {ids.count(self.image_id)} image "
                              f"placeholder(s) for {len(urls)} image(s) in these messages", param="messages")
        # Checked before loading with the fewest tokens an image can cost, then with the exact count
        # (which, for LLaVA-NeXT, depends on each image's size).
        self._check_length(len(ids) + len(urls) * (self.image_tokens.least - 1))
        images = await self.images.load_all(urls, media) if urls else []
        prompt_len = len(ids) + sum(self.image_tokens(p.image.height, p.image.width) - 1 for p in images)
        self._check_length(prompt_len)
        prompt = {"prompt_token_ids": ids}
        if images:
            prompt["multi_modal_data"] = {"image": [p.image for p in images]}
            # Our content hash names each image, so vLLM's caches need no pixel hash of their own.
            prompt["multi_modal_uuids"] = {"image": [p.key for p in images]}
        return _Prompt(prompt, prompt_len, len(urls), text)

    def _check_length(self, prompt_len: int) -> None:
        if prompt_len >= self.engine.max_model_len:
            raise bad_request(
                f"the prompt is {prompt_len} tokens (images included), the model's limit is "
                f"{self.engine.max_model_len}", param="messages", code="context_length_exceeded")

    def _token_ids(self, messages) -> tuple[str, list[int]]:
        """The rendered prompt and its ids: replies this server sent (``ReplyMemory``) keep
        the ids it generated, the rest is tokenised afresh."""
        try:
            text = self.template.render(messages)
        except TemplateError as exc:
            raise bad_request(f"the chat template refused these messages: {exc}", param="messages",
                              code="invalid_messages") from None
        from llava_model.prompt_ids import encode_prompt_with_offsets

        replies = [message_text(m) for m in messages if m.role == "assistant"]
        keep = bool(replies and self.replies.max_tokens and getattr(self.tokenizer, "is_fast", False))
        ids, spans = encode_prompt_with_offsets(self.tokenizer, text, self.prompt_tokenization, offsets=keep)
        if keep:
            spliced = self.replies.splice(text, ids, spans, replies)
            if spliced is not None and spliced.count(self.image_id) == ids.count(self.image_id):
                return text, spliced
        return text, ids

    def _remember(self, prompt: "_Prompt", output, text: str, token_ids: list[int]) -> None:
        """Keep a finished reply's ids for when the client sends it back (not one a stop
        string cut: its ids go past its text)."""
        reason = getattr(output, "stop_reason", None)
        if not self.replies.max_tokens or output.finish_reason is None or isinstance(reason, str):
            return
        ids = list(token_ids)
        if output.finish_reason == "stop" and ids and (ids[-1] in self._eos or ids[-1] == reason):
            ids.pop()  # the end of turn: the template writes its own
        self.replies.remember(prompt.text, prompt.engine["prompt_token_ids"], text, ids)

    def _sampling(self, req: ChatCompletionRequest, prompt_len: int):
        """vLLM's sampling parameters, and how many copies of each output to send: greedy
        decoding has one answer, so ``n`` greedy choices are one generation sent ``n`` times
        (vLLM refuses ``n > 1`` without sampling; OpenAI answers it)."""
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        room = self.engine.max_model_len - prompt_len
        max_tokens = req.token_limit or room
        if max_tokens > room:
            raise bad_request(
                f"max_tokens {max_tokens} + prompt {prompt_len} tokens exceeds the model's limit of "
                f"{self.engine.max_model_len}", param="max_tokens", code="context_length_exceeded")
        structured = None  # compact JSON: see the engine's structured-outputs settings
        if req.response_format is not None and req.response_format.type == "json_object":
            structured = StructuredOutputsParams(json_object=True)
        elif req.response_format is not None and req.response_format.type == "json_schema":
            structured = StructuredOutputsParams(json=req.response_format.json_schema.schema_)
        temperature = 1.0 if req.temperature is None else req.temperature
        greedy = temperature < _GREEDY_BELOW
        try:
            params = SamplingParams(
                n=1 if greedy else req.n,
                temperature=temperature,
                top_p=1.0 if req.top_p is None else req.top_p,
                top_k=-1 if req.top_k in (None, 0) else req.top_k,
                seed=req.seed,
                stop=req.stop_list,
                presence_penalty=req.presence_penalty or 0.0,
                frequency_penalty=req.frequency_penalty or 0.0,
                max_tokens=max_tokens,
                min_tokens=min(req.min_tokens, max_tokens),
                ignore_eos=req.ignore_eos,
                logprobs=(req.top_logprobs or 0) if req.logprobs else None,
                structured_outputs=structured,
                output_kind=RequestOutputKind.DELTA if req.stream else RequestOutputKind.FINAL_ONLY,
            )
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise _client_error(exc) from None
        return params, (req.n if greedy else 1)

    # ---- generation ----------------------------------------------------------------------------
    async def _generate(self, prompt, params, rid, lora=None) -> AsyncIterator:
        """The engine's outputs; its errors as ``APIError`` (its own input validation: 400;
        a dead engine: 503; anything else: 500 without details)."""
        from vllm.exceptions import GracefulHTTPError, VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        try:
            async for output in self.engine.llm.generate(prompt, params, rid, lora_request=lora):
                yield output
        except (VLLMClientError, ValueError, TypeError) as exc:
            raise _client_error(exc) from None
        except GracefulHTTPError as exc:
            raise APIError(int(exc.http_status), exc.message) from None
        except EngineDeadError:
            raise APIError(503, "the engine stopped while serving this request", headers={"Retry-After": "5"}) from None
        except EngineGenerateError as exc:
            if isinstance(exc.__cause__, (VLLMClientError, ValueError, TypeError)):
                raise _client_error(exc.__cause__) from None
            log.error("engine failed on %s: %r", rid, exc.__cause__)
            raise APIError(500, "the engine failed while serving this request") from None

    async def _abort(self, rid: str) -> None:
        try:
            await self.engine.llm.abort(rid)
        except Exception:  # a dead engine has nothing left to abort
            log.debug("abort of %s failed", rid, exc_info=True)

    async def _complete(self, req, prompt, params, copies, rid, raw: Request, deadline: float,
                        lora=None) -> JSONResponse:
        started = time.perf_counter()
        timing = _Timing(self.metrics, started)
        finals: dict[int, object] = {}
        result: dict = {}

        async def consume():
            async for output in self._generate(prompt.engine, params, rid, lora):
                timing.tokens_seen(sum(len(o.token_ids) for o in output.outputs))
                result["prompt_tokens"] = len(output.prompt_token_ids or [])
                result["metrics"] = output.metrics
                for choice in output.outputs:
                    finals[choice.index] = choice

        try:
            await _watched(consume(), raw, deadline, self.settings)
        except BaseException:
            await self._abort(rid)
            raise
        outputs = [finals[i] for i in sorted(finals)]
        replies = ReplyText(self.tokenizer)
        texts = {o.index: replies.fix(o.index, o.text, o.token_ids, finished=True) for o in outputs}
        for o in outputs:
            self._remember(prompt, o, texts[o.index], o.token_ids)
        choices = [self._choice(req, o, texts[o.index], o.index * copies + c) for o in outputs for c in range(copies)]
        completion = copies * sum(len(o.token_ids) for o in outputs)
        timing.finish(result.get("prompt_tokens", 0), completion, result.get("metrics"))
        body = ChatCompletion(
            id=rid, created=now(), model=req.model, choices=choices,
            usage=Usage(prompt_tokens=result.get("prompt_tokens", 0), completion_tokens=completion,
                        total_tokens=result.get("prompt_tokens", 0) + completion),
        )
        return JSONResponse(body.model_dump(exclude_none=False))

    def _choice(self, req, output, text: str, index: int) -> Choice:
        logprobs = None
        if req.logprobs:
            pacer = TokenPacer(self.tokenizer)
            pacer.add(output.token_ids, output.logprobs)
            logprobs = self._logprobs(req, pacer.take(len(text), True, _by_stop_string(output)))
        return Choice(index=index, message=AssistantMessage(content=text),
                      logprobs=logprobs, finish_reason=_finish(output))

    def _logprobs(self, req, tokens) -> ChoiceLogprobs:
        """``tokens``: ``(position in the reply, token id, the engine's logprob entry)``."""
        content = []
        for position, token_id, entry in tokens:
            chosen = entry.get(token_id)
            ranked = sorted(entry.items(), key=lambda kv: -kv[1].logprob)[: req.top_logprobs or 0]
            text = self._token_text(token_id, chosen, position)
            content.append(TokenLogprob(
                token=text,
                logprob=max(chosen.logprob, -9999.0) if chosen else -9999.0,
                bytes=self.token_bytes(token_id, text),
                top_logprobs=[
                    TopLogprob(token=(alt := self._token_text(t, lp, position)), logprob=max(lp.logprob, -9999.0),
                               bytes=self.token_bytes(t, alt))
                    for t, lp in ranked
                ],
            ))
        return ChoiceLogprobs(content=content)

    def _token_text(self, token_id: int, logprob, position: int) -> str:
        """The token as text; the reply's first token without the space only the prompt's
        context gave it, as the reply's text has it (``llava_model.reply_text``)."""
        if logprob is not None and logprob.decoded_token is not None:
            text = logprob.decoded_token
        else:
            text = self.tokenizer.decode([token_id])
        return fresh_start(self.tokenizer, text, [token_id]) if position == 0 and text else text

    async def _stream(self, req, prompt, params, copies, rid, deadline: float,
                      release: Callable[[], None], lora=None) -> AsyncIterator[str]:
        """SSE chunks; however it ends (done, timed out, bad input found by the engine, the
        engine failing), the client gets an error event if needed and then ``[DONE]`` —
        except when the client itself went away (then the engine request is aborted)."""
        started = time.perf_counter()
        timing = _Timing(self.metrics, started)
        created, model = now(), req.model
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        prompt_tokens, completion = 0, 0
        metrics = None
        replies = ReplyText(self.tokenizer)
        sent: dict[int, str] = {}
        pacers: dict[int, TokenPacer] = {}

        def chunk(choices, usage=None) -> str:
            body = ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)
            return f"data: {json.dumps(body.model_dump(exclude_none=True))}\n\n"

        try:
            # No role-only chunk up front: each choice's first chunk carries its role and its
            # first text, so tools that stamp TTFT at the first chunk measure a real token.
            opened: set[int] = set()
            async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                async for output in self._generate(prompt.engine, params, rid, lora):
                    prompt_tokens = len(output.prompt_token_ids or []) or prompt_tokens
                    metrics = output.metrics or metrics
                    choices = []
                    for o in output.outputs:
                        text = replies.fix(o.index, o.text, o.token_ids, finished=o.finish_reason is not None)
                        sent[o.index] = sent.get(o.index, "") + text
                        if o.finish_reason is not None:
                            self._remember(prompt, o, sent[o.index], replies.ids[o.index])
                        completion += copies * len(o.token_ids)
                        timing.tokens_seen(len(o.token_ids))
                        logprobs = None
                        if req.logprobs:
                            pacer = pacers.setdefault(o.index, TokenPacer(self.tokenizer))
                            pacer.add(o.token_ids, o.logprobs)
                            ready = pacer.take(len(sent[o.index]), o.finish_reason is not None, _by_stop_string(o))
                            logprobs = self._logprobs(req, ready) if ready else None
                        if text or o.finish_reason or logprobs:
                            for index in range(o.index * copies, (o.index + 1) * copies):
                                role = None if index in opened else "assistant"
                                opened.add(index)
                                choices.append(ChunkChoice(index=index, delta=Delta(role=role, content=text or None),
                                                           logprobs=logprobs, finish_reason=_finish(o)))
                    if choices:
                        yield chunk(choices)
            timing.finish(prompt_tokens, completion, metrics)
            if include_usage:
                yield chunk([], Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                                      total_tokens=prompt_tokens + completion))
        except TimeoutError:
            await self._abort(rid)
            error = APIError(504, f"request timed out after {self.settings.request_timeout_s:g} s")
            yield f"data: {json.dumps(error.body())}\n\n"
        except APIError as exc:
            await self._abort(rid)
            yield f"data: {json.dumps(exc.body())}\n\n"
        except (asyncio.CancelledError, GeneratorExit):  # client gone: free the KV cache
            await self._abort(rid)
            raise
        except Exception:
            log.exception("stream %s failed", rid)
            await self._abort(rid)
            yield f"data: {json.dumps(APIError(500, 'internal server error').body())}\n\n"
        finally:
            release()
        yield "data: [DONE]\n\n"


async def _watched(coro, raw: Request, deadline: float, settings):
    """Run ``coro`` until done; raise ``_Disconnected`` when the client leaves and 504 at the
    deadline, cancelling it in both cases."""
    task = asyncio.ensure_future(coro)
    try:
        while not task.done():
            left = deadline - time.perf_counter()
            if left <= 0:
                raise APIError(504, f"request timed out after {settings.request_timeout_s:g} s")
            await asyncio.wait({task}, timeout=min(0.25, left))
            if not task.done() and await raw.is_disconnected():
                log.info("client disconnected")
                raise _Disconnected()
        return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def _client_error(exc: BaseException) -> APIError:
    """A request the engine refused, as a 400 naming the parameter: the one vLLM names, else
    the request field its message starts with (``stop cannot contain an empty string.``)."""
    message = _SOURCE_LOCATION.sub("", str(exc.args[0]) if exc.args else type(exc).__name__)
    param = getattr(exc, "parameter", None)
    if param is None:
        first = message.split(" ", 1)[0].strip("`'\":,.")
        param = first if first in ChatCompletionRequest.model_fields else None
    if param is None and _GRAMMAR.search(message):
        param = "response_format"
    return bad_request(message, param=param)


# the grammar compiler's messages carry a time and its C++ source location
# ("[22:58:05] /project/cpp/regex_converter.cc:83: Regex parsing error"); the client gets the reason
_SOURCE_LOCATION = re.compile(r"(\[\d{2}:\d{2}:\d{2}\] )?(/[\w.+-]+)+\.(cc|cpp|cxx|h|hpp|py):\d+: ?")
_GRAMMAR = re.compile(r"schema|grammar|regex|structured output", re.IGNORECASE)


class ReplyText:
    """Each choice's text as a fresh decode of its generated ids gives it
    (``llava_model.reply_text``): no leading space the prompt's context put there, and
    at the end the U+FFFD of a character the last tokens left incomplete. The same rules
    run on streamed deltas, so they concatenate to the non-streamed text."""

    _TAIL = 16  # characters of emitted text kept per choice: more than a cut character's bytes

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: dict[int, list[int]] = {}
        self.settled: set[int] = set()
        self.tail: dict[int, str] = {}

    def fix(self, index: int, text: str, token_ids, finished: bool = False) -> str:
        """The text to send for this step's ``text`` / ``token_ids`` of choice ``index``."""
        ids = self.ids.setdefault(index, [])
        ids.extend(token_ids)
        if text and index not in self.settled:
            self.settled.add(index)
            text = fresh_start(self.tokenizer, text, ids)
        if finished:
            text += held_back_end(self.tokenizer, self.tail.get(index, "") + text, ids)
        self.tail[index] = (self.tail.get(index, "") + text)[-self._TAIL :]
        return text


class _Disconnected(Exception):
    pass


@dataclass(frozen=True)
class _Prompt:
    engine: dict  # what the engine gets: ids, images and their keys
    length: int  # tokens, images included
    images: int
    text: str  # the rendered prompt (the key of replies to it, ``ReplyMemory``)


def _by_stop_string(output) -> bool:
    """Whether one of the request's stop strings ended this reply (vLLM: ``stop_reason`` is
    the string; a stop token's id or ``None`` otherwise)."""
    return isinstance(getattr(output, "stop_reason", None), str)


def _finish(output) -> str | None:
    reason = output.finish_reason
    if reason is None:
        return None
    return "length" if reason == "length" else "stop"


class _Timing:
    """TTFT, TPOT, end-to-end latency, queue time and token counters for one request."""

    def __init__(self, metrics, started: float):
        self.metrics = metrics
        self.started = started
        self.first: float | None = None

    def tokens_seen(self, count: int) -> None:
        if count and self.first is None:
            self.first = time.perf_counter()
            self.metrics.ttft.observe(self.first - self.started)

    def finish(self, prompt_tokens: int, completion_tokens: int, stats) -> None:
        end = time.perf_counter()
        self.metrics.e2e.observe(end - self.started)
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generation_tokens.inc(completion_tokens)
        if self.first is not None and completion_tokens > 1:
            self.metrics.tpot.observe((end - self.first) / (completion_tokens - 1))
        queued, scheduled = getattr(stats, "queued_ts", 0.0), getattr(stats, "scheduled_ts", 0.0)
        if queued and scheduled and scheduled >= queued:
            self.metrics.queue.observe(scheduled - queued)
