"""The real server over HTTP: the openai SDK and raw requests against a tiny model."""

import base64
import concurrent.futures
import json
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from tests.hostile import hostile_server
from tests.images import noise, photo_like
from tests.server_proc import image_server, png, running_server

KEY = "test-key"
MODEL = "tiny-llava"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    build_tiny_llava(root / "model", TinyLlavaSpec())
    local = root / "local-images"
    local.mkdir()
    (local / "pic.png").write_bytes(png(photo_like(30, 50, seed=9)))
    flags = [
        "--served-model-name", MODEL, "--api-key", KEY,
        "--allowed-image-hosts", "127.0.0.1", "--allowed-local-image-dir", str(local),
        "--max-inflight", "2", "--max-body-bytes", "2000000", "--max-image-bytes", "300000",
        "--max-image-pixels", "4000000", "--image-timeout-s", "1.5", "--limit-images-per-prompt", "3",
    ]
    with (
        image_server() as images,
        hostile_server() as (hostile, hostile_record),
        running_server(root / "model", *flags, log_path=root / "server.log") as (base, proc),
    ):
        yield {"base": base, "images": images, "local": local, "proc": proc, "root": root,
               "hostile": hostile, "hostile_record": hostile_record}


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=stack["base"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def user(text: str, *urls: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def post(stack, body: dict, key: str | None = KEY, timeout: float = 120, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers.update(kwargs.pop("headers", {}))
    return httpx.post(stack["base"] + "/v1/chat/completions", json=body, headers=headers, timeout=timeout, **kwargs)


def metrics(stack) -> dict[str, float]:
    text = httpx.get(stack["base"] + "/metrics", timeout=10).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (json.dumps(sample.labels, sort_keys=True) if sample.labels else "")
            values[key] = sample.value
    return values


# ---- the happy paths, through the openai SDK ----------------------------------------------


def test_non_streaming_with_image(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[user("What is in the image?", data_url(photo_like(64, 48)))],
        max_tokens=8, temperature=0,
    )
    assert out.id.startswith("chatcmpl-") and out.created > 0 and out.model == MODEL
    assert out.choices[0].finish_reason == "length" and out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens == 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + 8
    assert out.usage.prompt_tokens > 16  # 16 image tokens for the tiny tower plus the text


def test_streaming_matches_non_streaming(client):
    messages = [user("Describe it.", data_url(noise(40, 40, seed=2)))]
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, temperature=0)
    pieces, usage, finish = [], None, None
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    first = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            first = first or choice
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    # The first chunk with choices carries the role and a real token (what TTFT tools stamp).
    assert first.delta.role == "assistant" and (first.delta.content or first.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == "length" and usage.completion_tokens == 12
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_multi_image_and_multi_turn(client, stack):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        user("Compare these.", data_url(photo_like(20, 30)), stack["images"] + "/img.png"),
        {"role": "assistant", "content": "They differ."},
        user("And this one?", "file://" + str(stack["local"] / "pic.png")),
    ]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, temperature=0)
    assert out.usage.completion_tokens == 4
    assert out.usage.prompt_tokens >= 3 * 16 + 20  # three images of 16 tokens each, plus the text


def test_n_choices(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[user("Hi")], max_tokens=5, n=2, temperature=1.0, seed=1
    )
    assert sorted(c.index for c in out.choices) == [0, 1]
    assert out.usage.completion_tokens == 10


def test_seed_reproducibility(client):
    def run(seed):
        return client.chat.completions.create(
            model=MODEL, messages=[user("Tell me", data_url(noise(30, 30)))], max_tokens=16,
            temperature=1.0, seed=seed,
        ).choices[0].message.content

    assert run(1234) == run(1234)


def test_stop_string(client):
    messages = [user("Count", data_url(photo_like(30, 30, seed=7)))]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    stop = next((text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].strip()), None)
    assert stop, f"no usable stop string in {text!r}"
    cut = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_json_schema_output_validates(client):
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "blue"]}, "big": {"type": "boolean"}},
        "required": ["color", "big"],
        "additionalProperties": False,
    }
    out = client.chat.completions.create(
        model=MODEL, messages=[user("Answer in JSON", data_url(photo_like(30, 30)))], max_tokens=40,
        temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    value = json.loads(out.choices[0].message.content)
    assert set(value) == {"color", "big"} and value["color"] in ("red", "blue") and isinstance(value["big"], bool)


def test_logprobs(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[user("Hi")], max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    entries = out.choices[0].logprobs.content
    assert len(entries) == 4
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs))  # greedy


@pytest.mark.parametrize("stream", [False, True])
def test_logprob_tokens_are_the_tokens_of_the_text_sent_with_them(stack, client, stream):
    """With a stop string, vLLM holds text back while it could begin the stop string and
    never shows the stop string's tokens; their logprobs went out at once, a token ahead of
    the text (streamed) and the stop string's tokens with them. Now each chunk's logprob
    tokens spell that chunk's text, and the reply's spell its content (special tokens, which
    the text skips, aside)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stack["root"] / "model")
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    kwargs = {"model": MODEL, "max_tokens": 24, "temperature": 0, "logprobs": True}
    for attempt in range(6):
        messages = [user(f"Count them ({attempt})", data_url(photo_like(30, 30, seed=7)))]
        full = client.chat.completions.create(messages=messages, **kwargs).choices[0]
        tokens, text = [t.token for t in full.logprobs.content], full.message.content
        # The random model samples ids past the tokenizer's vocabulary (no text) and lone bytes
        # of characters (U+FFFD in the text, no text of their own): look for a stop string among
        # the tokens before the text's first character that is not ASCII.
        limit = next((i for i, c in enumerate(text) if not c.isascii()), len(text))
        starts, at = [], 0
        for t in tokens:
            width = 0 if t in special else len(t)
            if at + width > limit or text[at : at + width] != t[:width]:
                break
            starts.append(at)
            at += width
        # two tokens with text whose first occurrence in the text begins where the first does
        stop_at = next((k for k in range(2, len(starts) - 1)
                        if tokens[k] and tokens[k + 1] and not {tokens[k], tokens[k + 1]} & special
                        and (tokens[k] + tokens[k + 1]).strip()
                        and text.find(tokens[k] + tokens[k + 1]) == starts[k]), None)
        if stop_at is not None:
            break
    else:
        pytest.fail(f"no reply had a usable stop string: {tokens} {text!r}")
    stop = tokens[stop_at] + tokens[stop_at + 1]
    want, shown = text[: starts[stop_at]], tokens[:stop_at]
    if not stream:
        cut = client.chat.completions.create(messages=messages, stop=[stop], **kwargs).choices[0]
        assert cut.finish_reason == "stop" and cut.message.content == want
        assert [t.token for t in cut.logprobs.content] == shown
        return
    pieces = []
    for chunk in client.chat.completions.create(messages=messages, stop=[stop], stream=True, **kwargs):
        for choice in chunk.choices:
            chunk_tokens = [t.token for t in choice.logprobs.content] if choice.logprobs else []
            assert "".join(t for t in chunk_tokens if t not in special) == (choice.delta.content or "")
            pieces.append((choice.delta.content or "", chunk_tokens))
    assert "".join(p for p, _ in pieces) == want
    assert [t for _, ts in pieces for t in ts] == shown


def test_logprob_bytes_spell_the_reply_across_split_characters(stack, client):
    """The random tiny model samples lone bytes of characters: the text shows U+FFFD where
    they do not complete one, vLLM names such a token ``""``, and its ``bytes`` were empty.
    Each token's bytes are now its own, so all of them spell the reply (special tokens and
    ids past the vocabulary, which have no text, aside)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stack["root"] / "model")
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    split = 0
    for attempt in range(4):
        out = client.chat.completions.create(
            model=MODEL, messages=[user(f"Say something ({attempt})")], max_tokens=48, temperature=0,
            logprobs=True, extra_body={"min_tokens": 48}).choices[0]
        entries = [e for e in out.logprobs.content if e.token not in special]
        spelled = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")
        assert spelled == out.message.content, (spelled, out.message.content)
        split += sum(1 for e in entries if e.bytes and not e.token)
        if split:
            break
    assert split, "no reply held a lone byte token"


def test_models_and_request_id(stack):
    r = httpx.get(stack["base"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "abc-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-1"
    assert [m["id"] for m in r.json()["data"]] == [MODEL]
    assert len(httpx.get(stack["base"] + "/health").headers["x-request-id"]) == 32


# ---- errors, always in OpenAI's shape -------------------------------------------------------


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


def test_auth(stack):
    body = {"model": MODEL, "messages": [user("hi")]}
    assert_error(post(stack, body, key=None), 401, "API key")
    assert_error(post(stack, body, key="wrong"), 401, "API key")
    assert httpx.get(stack["base"] + "/v1/models").status_code == 401
    assert httpx.get(stack["base"] + "/health").status_code == 200  # open unless --health-needs-key


def test_unknown_model_is_404(stack):
    assert_error(post(stack, {"model": "gpt-4o", "messages": [user("hi")]}), 404, "gpt-4o")


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "audio"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": []}, "messages"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}, "limit"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "see <image>"}]}, "image_url parts"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 1000}, "n"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "top_logprobs": 500, "logprobs": True},
         "top_logprobs"),
        # beyond what the engine can carry: it had failed there, a 500
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "seed": 2**64}, "seed"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "seed": -(2**63) - 1}, "seed"),
        # wrong types are refused, not coerced
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "4"}, "max_tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": True}, "n"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        # a grammar this large stalled every request while the engine compiled it
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": [f"w{i}" for i in range(2_000)]}}}},
         "enum values"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"enum": ["w" * 70_000]}}}},
         "bytes of JSON"),
        # a schema no value can match: answered 200 with empty content
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "$ref": "#/$defs/a", "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}]}, "b": {"$ref": "#/$defs/a"}}}}}},
         "refers back to itself"),
    ],
)
def test_bad_requests_are_400_with_a_readable_message(stack, body, fragment):
    error = assert_error(post(stack, body), 400, fragment)
    assert "pydantic" not in error["message"] and "loc" not in error["message"]


@pytest.mark.parametrize("schema", [{"type": "string", "pattern": "(("}, {"type": "nonsense"}])
def test_a_schema_the_grammar_compiler_refuses_is_a_400_without_its_source_paths(stack, schema):
    body = {"model": MODEL, "messages": [user("hi")], "max_tokens": 4,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    error = assert_error(post(stack, body), 400, "")
    assert error["param"] == "response_format", error
    assert ".cc:" not in error["message"] and "/project" not in error["message"], error["message"]


def test_a_recursive_schema_that_matches_values_is_served(client):
    """A tree refers to itself under ``properties`` / ``items``: it matches values, and is not
    taken for the loop above."""
    node = {"type": "object", "properties": {"v": {"type": "integer"},
                                            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["v", "kids"], "additionalProperties": False}
    schema = {"$ref": "#/$defs/node", "$defs": {"node": node}}
    out = client.chat.completions.create(
        model=MODEL, messages=[user("A tree")], max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "tree", "schema": schema}})
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content)["v"], int)
    else:  # cut at max_tokens by a random model: a prefix of a tree
        assert out.choices[0].message.content.startswith('{"')


def test_seed_at_the_engines_bounds_and_explicit_nulls_are_served(stack):
    for seed in (2**64 - 1, -(2**63)):
        body = {"model": MODEL, "messages": [user("hi")], "max_tokens": 2, "temperature": 1.0, "seed": seed}
        assert post(stack, body).status_code == 200
    body = {"model": MODEL, "messages": [user("hi")], "max_tokens": 2, "stream": None, "n": None, "logprobs": None}
    response = post(stack, body)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1


def test_a_json_body_sent_with_a_form_content_type_is_told_what_is_missing(stack):
    # what `curl -d '{...}'` without -H sends; the message had been "body: Input should be a valid dictionary"
    body = json.dumps({"model": MODEL, "messages": [user("hi")], "max_tokens": 2})
    response = httpx.post(stack["base"] + "/v1/chat/completions", content=body, timeout=60,
                          headers={"Content-Type": "application/x-www-form-urlencoded",
                                   "Authorization": f"Bearer {KEY}"})
    assert_error(response, 400, "Content-Type: application/json", "application/x-www-form-urlencoded")


def test_unknown_fields_are_ignored(stack):
    body = {"model": MODEL, "messages": [user("hi")], "max_tokens": 2, "some_future_field": {"x": 1}}
    assert post(stack, body).status_code == 200


def test_body_too_large_is_413(stack):
    body = {"model": MODEL, "messages": [user("x" * 2_500_000)]}
    assert_error(post(stack, body), 413, "larger than")


@pytest.mark.parametrize(
    "url,fragment",
    [
        ("data:image/png;base64,!!!notbase64", "not valid base64"),
        ("data:image/png;base64," + base64.b64encode(b"GIF89a not really").decode(), "cannot decode"),
        ("ftp://example.com/a.png", "unsupported URL scheme"),
        ("http://169.254.169.254/latest/meta-data", "refused"),
        ("http://10.1.2.3/a.png", "refused"),
        ("file:///etc/passwd", "outside the allowed"),
        ("http://[zz/x", "not valid"),  # urlsplit raised: a 500 with the connection dropped
        ("{images}/big.png", "larger than the limit"),
        ("{images}/big-stream.png", "larger than the limit"),
        ("{images}/many-pixels.png", "more than the limit"),
        ("{images}/loop", "redirects"),
        ("{images}/slow", "timed out"),
        ("{images}/missing.png", "HTTP 404"),
        ("{images}/text", "cannot decode"),
    ],
)
def test_bad_images_are_400_naming_the_image(stack, url, fragment):
    url = url.format(images=stack["images"])
    body = {"model": MODEL, "messages": [user("look", data_url(noise(8, 8)), url)], "max_tokens": 2}
    error = assert_error(post(stack, body), 400, "image 2", fragment)
    assert error["code"] == "invalid_image"


def test_redirect_is_followed(stack):
    body = {"model": MODEL, "messages": [user("look", stack["images"] + "/redirect")], "max_tokens": 2}
    assert post(stack, body).status_code == 200


def test_too_many_images(stack):
    url = data_url(noise(8, 8))
    error = assert_error(post(stack, {"model": MODEL, "messages": [user("x", url, url, url, url)]}), 400, "at most 3")
    assert error["code"] == "too_many_images"


def test_overload_is_429_with_retry_after(stack):
    body = {"model": MODEL, "messages": [user("go", data_url(noise(16, 16)))], "max_tokens": 600,
            "min_tokens": 600, "temperature": 0}
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: post(stack, body), range(6)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 429} and codes.count(200) >= 2 and 429 in codes, [r.text[:200] for r in responses]
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.headers["retry-after"] == "1"
    assert_error(limited, 429, "limit")


# ---- disconnects free the engine --------------------------------------------------------------


def _running(stack) -> float:
    return metrics(stack)["llava_engine_requests_running"]


def _wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_streaming_disconnect_aborts(stack):
    body = {"model": MODEL, "messages": [user("long", data_url(noise(16, 16)))], "max_tokens": 900,
            "min_tokens": 900, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", stack["base"] + "/v1/chat/completions", json=body, headers=headers) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data:")
            assert _wait_for(lambda: _running(stack) == 1, 10)
        # leaving the block closes the connection mid-stream
    assert _wait_for(lambda: _running(stack) == 0), "engine kept generating after the client left"
    assert metrics(stack)["llava_requests_in_flight"] == 0


def test_non_streaming_disconnect_aborts(stack):
    # 900 tokens whatever the model says (min_tokens): seconds of work at any speed this engine
    # has, so the client is gone long before the answer would be.
    body = {"model": MODEL, "messages": [user("long", data_url(noise(16, 16)))], "max_tokens": 900,
            "min_tokens": 900, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        post(stack, body, timeout=0.5)
    assert _wait_for(lambda: _running(stack) == 0), "engine kept generating after the client left"


# ---- metrics ---------------------------------------------------------------------------------


def test_metrics_move_after_requests(stack, client):
    before = metrics(stack)
    client.chat.completions.create(
        model=MODEL, messages=[user("count", data_url(noise(20, 20)), data_url(noise(21, 20)))], max_tokens=6,
        temperature=0,
    )
    after = metrics(stack)
    ok = 'llava_requests_total{"endpoint": "/v1/chat/completions", "status": "200"}'
    assert after[ok] == before.get(ok, 0) + 1
    assert after["llava_generation_tokens_total"] == before["llava_generation_tokens_total"] + 6
    assert after["llava_prompt_tokens_total"] > before["llava_prompt_tokens_total"]
    assert after["llava_images_per_request_sum"] == before["llava_images_per_request_sum"] + 2
    assert after["llava_time_to_first_token_seconds_count"] == before["llava_time_to_first_token_seconds_count"] + 1
    assert after["llava_image_preprocess_seconds_count"] == before["llava_image_preprocess_seconds_count"] + 2
    for name in ("llava_e2e_request_latency_seconds_count", "llava_time_per_output_token_seconds_count",
                 "llava_image_fetch_seconds_count", "llava_kv_cache_usage_ratio", "llava_engine_requests_waiting"):
        assert name in after
    assert any(k.startswith("vllm:") for k in after)  # vLLM's own engine metrics ride along


# ---- hardening: each of these failed before the fix ----------------------------------------


def test_key_is_checked_before_the_body_is_read(stack):
    url = stack["base"] + "/v1/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"Authorization": "Bearer wrong",
                                                        "Content-Type": "application/json"})
    assert_error(r, 401, "API key")  # not a 400 about the body: nothing was parsed
    r = httpx.post(url, content=b"x" * 3_000_000, headers={"Content-Type": "application/json"})
    assert_error(r, 401, "API key")  # not a 413: the body was never read


def test_chunked_body_over_the_cap_is_413(stack):
    def chunks():
        for _ in range(40):
            yield b"x" * 100_000  # 4 MB in all, no Content-Length

    r = httpx.post(stack["base"] + "/v1/chat/completions", content=chunks(), timeout=60,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert_error(r, 413, "larger than")


def test_n_greedy_choices_are_served(client):
    messages = [user("Describe", data_url(photo_like(30, 30, seed=4)))]
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, n=2, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    assert out.choices[0].message.content == out.choices[1].message.content
    assert out.usage.completion_tokens == 12
    single = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0)
    assert out.choices[0].message.content == single.choices[0].message.content
    texts = {0: "", 1: ""}
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, n=2, temperature=0,
                                                stream=True):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == {0: single.choices[0].message.content, 1: single.choices[0].message.content}


def test_engine_validation_errors_are_400_naming_the_parameter(stack):
    error = assert_error(post(stack, {"model": MODEL, "messages": [user("hi")], "stop": [""]}), 400, "stop")
    assert error["param"] == "stop"


def test_undecodable_image_leaks_no_address(stack):
    url = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n broken").decode()
    error = assert_error(post(stack, {"model": MODEL, "messages": [user("x", url)]}), 400, "cannot decode")
    assert "0x" not in error["message"] and "BytesIO" not in error["message"]


def test_client_leaving_during_the_fetch_stops_it_and_frees_the_slot(stack):
    body = {"model": MODEL, "messages": [user("look", stack["hostile"] + "/drip")], "max_tokens": 2}
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        post(stack, body, timeout=0.8)
    record = stack["hostile_record"]
    assert _wait_for(lambda: "/drip" in record.hung_up, 5), "the server kept fetching for a client that left"
    assert record.hung_up["/drip"] - started < 4.0
    assert _wait_for(lambda: metrics(stack)["llava_requests_in_flight"] == 0, 5)
    assert metrics(stack)["llava_image_bytes_in_flight"] == 0


def test_a_huge_prompt_does_not_stall_the_event_loop(stack):
    text = " ".join(f"w{i % 997}" for i in range(300_000))  # ~1.6 MB: tokenising it takes a while
    box = {}

    def send():
        started = time.monotonic()
        box["response"] = post(stack, {"model": MODEL, "messages": [user(text)]})
        box["took"] = time.monotonic() - started

    worker = concurrent.futures.ThreadPoolExecutor(1).submit(send)
    slowest = 0.0
    while not worker.done():
        started = time.monotonic()
        assert httpx.get(stack["base"] + "/health", timeout=30).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.02)
    worker.result()
    assert_error(box["response"], 400, "limit")
    assert slowest < box["took"] / 2, (slowest, box["took"])


def test_nan_and_infinite_floats_are_400(stack):
    for value in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"model": "%s", "messages": [{"role": "user", "content": "x"}], "temperature": %s}' % (
            MODEL.encode(), value)
        r = httpx.post(stack["base"] + "/v1/chat/completions", content=body,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        assert_error(r, 400, "temperature")


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (2, 2)])
def test_degenerate_images_are_served_and_the_engine_lives(stack, size):
    body = {"model": MODEL, "messages": [user("what?", data_url(noise(*size, seed=5)))], "max_tokens": 2}
    assert post(stack, body).status_code == 200
    assert httpx.get(stack["base"] + "/health").status_code == 200


def test_markdown_image_links_in_text_are_never_fetched(stack):
    link = f"![x]({stack['hostile']}/img.png?markdown) <img src=\"{stack['hostile']}/img.png?tag\">"
    assert post(stack, {"model": MODEL, "messages": [user(link)], "max_tokens": 2}).status_code == 200
    assert stack["hostile_record"].hits.get("/img.png", 0) == 0


def test_every_route_but_health_and_metrics_needs_the_key(stack):
    for path in ("/v1/models", "/metrics/../v1/models", "/v1/nothing-here", "/docs"):
        assert httpx.get(stack["base"] + path).status_code == 401, path
    r = httpx.get(stack["base"] + "/v1/models", headers={"Host": "evil/x?", "Authorization": "Bearer nope"})
    assert r.status_code in (400, 401)


def test_the_server_listens_on_loopback_only(stack):
    import psutil

    root = psutil.Process(stack["proc"].pid)
    listening = [c for p in [root, *root.children(recursive=True)] for c in p.net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and all(c.laddr.ip in ("127.0.0.1", "::1") for c in listening), listening


def test_a_re_sent_image_is_prepared_once_and_answers_the_same(stack, client):
    """Multi-turn chat re-sends the image every turn: the second time it comes from the
    prepared-image cache (by content hash) and the answer is the same."""
    url = data_url(photo_like(90, 70, seed=21))
    before = metrics(stack)
    outs = [client.chat.completions.create(model=MODEL, messages=[user("Describe", url)], max_tokens=8,
                                           temperature=0).choices[0].message.content for _ in range(2)]
    after = metrics(stack)
    assert outs[0] == outs[1]
    assert after["llava_image_cache_misses_total"] == before.get("llava_image_cache_misses_total", 0) + 1
    assert after["llava_image_cache_hits_total"] == before.get("llava_image_cache_hits_total", 0) + 1


def _prefix_cache_hits(stack) -> float:
    return sum(v for k, v in metrics(stack).items() if k.startswith("vllm:prefix_cache_hits_total"))


@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_sent_back_is_read_as_the_tokens_generated(stack, client, stream):
    """Turn 2 re-sends turn 1's reply as text. The tiny model samples its byte-level BPE
    tokens in ways a fresh tokenisation of the text does not reproduce, so without the
    reply memory the prompt leaves what the model saw at the reply and the prefix cache
    misses from there; with it, every full block of turn 1's prompt and reply is reused."""
    from server.engine import CPU_BLOCK_SIZE

    kwargs = {"model": MODEL, "max_tokens": 48, "temperature": 0, "logprobs": True, "extra_body": {"min_tokens": 48}}
    for attempt in range(6):
        first = [user(f"Describe it at length ({stream}, {attempt}).", data_url(photo_like(60, 40, seed=5)))]
        if stream:
            chunks = list(client.chat.completions.create(messages=first, stream=True,
                                                         stream_options={"include_usage": True}, **kwargs))
            reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            tokens = [t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
            usage = chunks[-1].usage
        else:
            one = client.chat.completions.create(messages=first, **kwargs)
            reply, usage = one.choices[0].message.content, one.usage
            tokens = [t.token for t in one.choices[0].logprobs.content]
        assert usage.completion_tokens == len(tokens) == 48 and reply
        # The random model may sample the image placeholder, which text cannot carry: such a
        # reply is sent back tokenised afresh (the server checks), so ask again.
        if "<image>" not in tokens:
            break
    else:
        pytest.fail(f"every reply held an image placeholder: {tokens}")
    before = _prefix_cache_hits(stack)
    second = [*first, {"role": "assistant", "content": reply}, user("And then?")]
    out = client.chat.completions.create(model=MODEL, messages=second, max_tokens=2, temperature=0)
    reused = _prefix_cache_hits(stack) - before
    # the engine holds the KV of the prompt and of every generated token but the last
    cached = usage.prompt_tokens + usage.completion_tokens - 1
    assert reused == cached // CPU_BLOCK_SIZE * CPU_BLOCK_SIZE
    assert out.usage.prompt_tokens > cached
