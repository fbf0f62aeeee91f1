"""LoRA adapters through the server: ``--lora-modules NAME=PATH``, each adapter a model.

Greedy replies through the ``openai`` SDK equal transformers' on the base with that
adapter merged in (W + alpha/r * B @ A), for an adapter in PEFT's older naming and one
in transformers 5's, while requests for the base and the adapters run at once; the
base stays the base; ``/v1/models`` lists them all; unknown models are 404; adapters
that cannot be served are refused at startup, naming why.
"""

import base64
import copy
import io
import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from safetensors.torch import load_file, save_file

from llava_model.chat_format import Turn, prompt
from llava_model.tiny import build_tiny_llava, build_tokenizer
from server.lora import AdapterError, parse_lora_modules
from tests.images import photo_like
from tests.reference import hf_greedy
from tests.test_lora import RANK, SPEC, merge_into, write_adapter

NEW_TOKENS = 16
QUESTION = "What is in the image?"
IMAGE = photo_like(45, 30, seed=3)


def transformers5_names(src, dst) -> None:
    """The same adapter as PEFT names it on transformers 5's LlavaForConditionalGeneration."""
    dst.mkdir()
    state = load_file(str(src / "adapter_model.safetensors"))
    renamed = {k.replace("base_model.model.language_model.model.", "base_model.model.model.language_model."): v
               for k, v in state.items()}
    assert renamed.keys() != state.keys()
    save_file(renamed, str(dst / "adapter_model.safetensors"))
    (dst / "adapter_config.json").write_text((src / "adapter_config.json").read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from server.child_process import running_server

    root = tmp_path_factory.mktemp("lora")
    base = build_tiny_llava(root / "model", SPEC)
    strong = write_adapter(root / "strong", scale=0.3)
    transformers5_names(root / "strong", root / "strong-t5")
    other = write_adapter(root / "other", scale=-0.3)
    flags = ["--chat-template", "vicuna_v1", "--served-model-name", "base", "--dtype", "float32",
             "--lora-modules", f"strong={root / 'strong'}", "--lora-modules", f"strong-t5={root / 'strong-t5'}",
             "--lora-modules", f"other={root / 'other'}", "--max-lora-rank", str(RANK), "--max-loras", "3"]
    with running_server(root / "model", *flags, log_path=root / "server.log") as (url, _):
        yield url, base, {"strong": strong, "other": other}


def _expected(base, state, tok) -> str:
    model = copy.deepcopy(base)
    if state is not None:
        merge_into(model, state)
    text = prompt("vicuna_v1", None, [Turn("user", f"<image>\n{QUESTION}")])
    return tok.decode(hf_greedy(model, tok, text, [IMAGE], SPEC, NEW_TOKENS), skip_special_tokens=True)


def _ask(client, model: str) -> str:
    buf = io.BytesIO()
    IMAGE.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    reply = client.chat.completions.create(
        model=model, temperature=0, max_tokens=NEW_TOKENS, extra_body={"min_tokens": NEW_TOKENS, "ignore_eos": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": QUESTION}]}],
    )
    assert reply.model == model
    return reply.choices[0].message.content


def test_each_adapter_answers_as_transformers_merged(served):
    url, base, states = served
    tok = build_tokenizer()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    want = {"base": _expected(base, None, tok), "strong": _expected(base, states["strong"], tok),
            "other": _expected(base, states["other"], tok)}
    want["strong-t5"] = want["strong"]
    assert len(set(want.values())) == 3  # the adapters change the answer
    names = ["base", "strong", "strong-t5", "other"] * 2
    with ThreadPoolExecutor(len(names)) as pool:  # all at once: adapters share engine steps
        got = list(pool.map(lambda name: _ask(client, name), names))
    assert got == [want[name] for name in names]


def test_models_lists_the_adapters_and_unknown_models_are_404(served):
    url, _, _ = served
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    listed = {m.id: m.model_extra.get("parent") for m in client.models.list().data}
    assert listed == {"base": None, "strong": "base", "strong-t5": "base", "other": "base"}
    with pytest.raises(openai.NotFoundError) as caught:
        _ask(client, "nope")
    error = caught.value.body
    assert error["code"] == "model_not_found" and "'strong-t5'" in error["message"]


def _adapter(path, **config):
    path.mkdir()
    save_file({"x": torch.zeros(1)}, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, **config}))
    return path


@pytest.mark.parametrize(
    "spec, make, message",
    [
        ("noequals", None, "expected NAME=PATH"),
        ("base={dir}", {}, "already a served model"),
        ("big={dir}", {"r": 128}, "rank 128, above --max-lora-rank 64"),
        ("saved={dir}", {"modules_to_save": ["multi_modal_projector"]}, "stores whole modules"),
        ("prefix={dir}", {"peft_type": "PREFIX_TUNING"}, "is not LORA"),
        ("missing={dir}/nothing-here", {}, "is not a directory"),
        ("bad name!={dir}", {}, "the name may use"),
    ],
)
def test_adapters_that_cannot_be_served_are_refused_by_name(tmp_path, spec, make, message):
    folder = _adapter(tmp_path / "adapter", **(make or {}))
    with pytest.raises(AdapterError, match=message):
        parse_lora_modules([spec.format(dir=folder)], "base", 64)


def test_two_adapters_with_one_name_are_refused(tmp_path):
    folder = _adapter(tmp_path / "adapter")
    with pytest.raises(AdapterError, match="already a served model"):
        parse_lora_modules([f"a={folder}", f"a={folder}"], "base", 64)
    assert [a.lora_id for a in parse_lora_modules([f"a={folder}", f"b={folder}"], "base", 64).values()] == [1, 2]
