"""A LLaVA-NeXT checkpoint served over HTTP: replies, usage and length limits use each
image's real token count, which depends on its size.

Asked through the ``openai`` SDK, greedy, the server's reply is transformers' decode of
transformers' greedy tokens (its own processor's pixels), and ``usage.prompt_tokens`` is
the prompt transformers builds. The length check before the engine runs counts each
image's real tokens: two small images fit where two large ones do not, and the refusal
states the exact count.
"""

import httpx
import pytest

from llava_model.chat_format import Turn, prompt
from llava_model.data_url import image_data_url
from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from tests.images import noise, photo_like
from tests.reference import hf_next_greedy

NEW_TOKENS = 16
QUESTION = "What is in the image?"
MAX_MODEL_LEN = 240
SPEC = TinyLlavaSpec(grid_pinpoints=((32, 64), (64, 32), (64, 64), (96, 32), (32, 96)), seed=9)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from llava_model.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("next")
    model = build_tiny_llava(out, SPEC)
    return out, model, build_tokenizer()


@pytest.fixture(scope="module")
def base_url(built):
    from server.child_process import running_server

    out = built[0]
    with running_server(out, "--chat-template", "chatml", "--served-model-name", "next", "--dtype", "float32",
                        "--max-model-len", str(MAX_MODEL_LEN), log_path=out / "server.log") as (base, _):
        yield base


def _request(images, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": image_data_url(im)}} for im in images]
    return {
        "model": "next",
        "messages": [{"role": "user", "content": content + [{"type": "text", "text": QUESTION}]}],
        "temperature": 0,
        "max_tokens": NEW_TOKENS,
        **extra,
    }


def _reference(built, images):
    _, model, tok = built
    text = "\n".join(["<image>"] * len(images) + [QUESTION])
    ids = tok(prompt("chatml", None, [Turn("user", text)]))["input_ids"]
    want, length = hf_next_greedy(model, ids, images, tok.pad_token_id, NEW_TOKENS)
    return tok.decode(want, skip_special_tokens=True), length


CASES = {
    "large photo": [photo_like(640, 480, seed=1)],
    "tall noise": [noise(30, 77, seed=2)],
    "two grids": [photo_like(200, 50, seed=3), photo_like(20, 90, seed=4)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_served_reply_is_transformers_greedy(built, base_url, name):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    images = CASES[name]
    expected, length = _reference(built, images)
    request = _request(images, extra_body={"min_tokens": NEW_TOKENS, "ignore_eos": True})
    reply = client.chat.completions.create(**request)
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == length
    stream = client.chat.completions.create(**request, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected


def test_length_limit_counts_each_images_real_tokens(built, base_url):
    small = [photo_like(8, 8, seed=5), photo_like(9, 9, seed=6)]  # 36 tokens each
    large = [photo_like(64, 64, seed=7), photo_like(64, 64, seed=8)]  # 88 tokens each, the most
    _, small_len = _reference(built, small)
    _, large_len = _reference(built, large)
    assert small_len < MAX_MODEL_LEN <= large_len  # the test's premise
    ok = httpx.post(f"{base_url}/v1/chat/completions", json=_request(small), timeout=120)
    assert ok.status_code == 200, ok.text
    assert ok.json()["usage"]["prompt_tokens"] == small_len
    refused = httpx.post(f"{base_url}/v1/chat/completions", json=_request(large), timeout=120)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert f"the prompt is {large_len} tokens" in error["message"]
