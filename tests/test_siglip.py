"""A SigLIP-tower LLaVA (llava-interleave's shape) served over HTTP, against transformers.

The checkpoint is what transformers' own ``save_pretrained`` writes for a
``LlavaForConditionalGeneration`` with a ``siglip_vision_model`` tower and a Qwen2 LLM
(the tower saved bare under ``vision_tower.*``, its unused pooling head included), with
SigLIP's ``preprocessor_config.json``. Asked through the ``openai`` SDK, greedy, the server's
reply is transformers' decode of transformers' greedy tokens on transformers' own
processor's pixels, and the usage counts SigLIP's image tokens (no class token).
"""

import base64
import io

import pytest

from llava_model.chat_format import Turn, prompt
from llava_model.tiny import TinyLlavaSpec, build_tiny_llava
from llava_model.vision import num_image_tokens
from tests.images import noise, photo_like
from tests.reference import hf_greedy

NEW_TOKENS = 24
QUESTION = "What is in the image?"
SPEC = TinyLlavaSpec(
    vision_tower="siglip",
    text_arch="qwen2",
    vision_feature_layer=-1,
    vision_feature_select_strategy="full",
    aspect_mode="resize",
    image_size=48,
    patch_size=12,
    seed=11,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from llava_model.tiny import build_tokenizer

    out = tmp_path_factory.mktemp("siglip")
    model = build_tiny_llava(out, SPEC)
    model.save_pretrained(out)  # transformers' own layout over ours
    return out, model, build_tokenizer()


@pytest.fixture(scope="module")
def client(built):
    from openai import OpenAI

    from server.child_process import running_server

    out = built[0]
    with running_server(out, "--chat-template", "chatml", "--served-model-name", "interleave",
                        "--dtype", "float32", log_path=out / "server.log") as (base, _):
        yield OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def _data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


CASES = {
    "wide photo": [photo_like(200, 90, seed=1)],
    "tall noise": [noise(30, 77, seed=2)],
    "two images": [photo_like(640, 480, seed=3), photo_like(48, 48, seed=4)],
}


@pytest.mark.parametrize("name", list(CASES))
def test_served_reply_is_transformers_greedy(built, client, name):
    _, model, tok = built
    images = CASES[name]
    text = "\n".join(["<image>"] * len(images) + [QUESTION])
    want = hf_greedy(model, tok, prompt("chatml", None, [Turn("user", text)]), images, SPEC, NEW_TOKENS)
    content = [{"type": "image_url", "image_url": {"url": _data_url(im)}} for im in images]
    request = {
        "model": "interleave",
        "messages": [{"role": "user", "content": content + [{"type": "text", "text": QUESTION}]}],
        "temperature": 0,
        "max_tokens": NEW_TOKENS,
        "extra_body": {"min_tokens": NEW_TOKENS, "ignore_eos": True},
    }
    reply = client.chat.completions.create(**request)
    # a random model's bytes: replies may end inside a character, shown as U+FFFD as transformers does
    expected = tok.decode(want, skip_special_tokens=True)
    assert reply.choices[0].message.content == expected
    stream = client.chat.completions.create(**request, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
    assert reply.usage.completion_tokens == NEW_TOKENS
    per_image = num_image_tokens(model.config)
    assert per_image == (SPEC.image_size // SPEC.patch_size) ** 2  # SigLIP: patches only
    text_ids = tok(prompt("chatml", None, [Turn("user", text)]))["input_ids"]
    assert reply.usage.prompt_tokens == len(text_ids) + len(images) * (per_image - 1)
