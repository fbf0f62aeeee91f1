"""LoRA adapters loaded and unloaded while the server runs (``--runtime-lora-dir``).

The server starts with no adapter; one is loaded from below the directory through
``POST /v1/load_lora_adapter`` (with the API key), answers as transformers with it
merged while the base still answers as the base, is unloaded, and is then unknown
(404). Paths outside the directory, bad adapters and taken names are 400s; without the
key, 401; without the flag the endpoints do not exist, and the flag without a key is
refused at startup.
"""

import httpx
import pytest

from llava_model.tiny import build_tiny_llava, build_tokenizer
from server.config import ServerSettings
from tests.test_lora import RANK, SPEC, write_adapter
from tests.test_lora_server import _ask, _expected

KEY = "runtime-key"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from server.child_process import running_server

    root = tmp_path_factory.mktemp("lora-runtime")
    base = build_tiny_llava(root / "model", SPEC)
    adapters = root / "adapters"
    adapters.mkdir()
    strong = write_adapter(adapters / "strong", scale=0.3)
    write_adapter(root / "outside", scale=0.3)
    flags = ["--chat-template", "vicuna_v1", "--served-model-name", "base", "--dtype", "float32",
             "--runtime-lora-dir", str(adapters), "--api-key", KEY, "--max-lora-rank", str(RANK)]
    with running_server(root / "model", *flags, log_path=root / "server.log") as (url, _):
        yield url, base, strong, root


def _post(url: str, path: str, body: dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + path, json=body, headers=headers, timeout=120)


def _models(url: str) -> list[str]:
    return [m["id"] for m in httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]]


def test_load_answer_unload(served):
    from openai import OpenAI

    url, base, strong, root = served
    client = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    tok = build_tokenizer()
    assert _post(url, "/v1/load_lora_adapter", {"lora_name": "strong", "lora_path": "strong"}, key=None).status_code == 401

    loaded = _post(url, "/v1/load_lora_adapter", {"lora_name": "strong", "lora_path": "strong"})
    assert loaded.status_code == 200, loaded.text
    assert loaded.json()["id"] == "strong" and loaded.json()["rank"] == RANK
    assert _models(url) == ["base", "strong"]
    with_adapter = _expected(base, strong, tok)
    assert with_adapter != _expected(base, None, tok)  # the adapter changes the answer
    assert _ask(client, "strong") == with_adapter
    assert _ask(client, "base") == _expected(base, None, tok)

    taken = _post(url, "/v1/load_lora_adapter", {"lora_name": "strong", "lora_path": "strong"})
    assert taken.status_code == 400 and taken.json()["error"]["code"] == "lora_name_taken"

    gone = _post(url, "/v1/unload_lora_adapter", {"lora_name": "strong"})
    assert gone.status_code == 200, gone.text
    assert _models(url) == ["base"]
    with pytest.raises(Exception) as info:
        _ask(client, "strong")
    assert getattr(info.value, "status_code", None) == 404
    again = _post(url, "/v1/unload_lora_adapter", {"lora_name": "strong"})
    assert again.status_code == 404 and again.json()["error"]["code"] == "model_not_found"

    # loaded again under another name (a new engine id), it answers as before
    assert _post(url, "/v1/load_lora_adapter", {"lora_name": "again", "lora_path": str(root / "adapters" / "strong")}
                 ).status_code == 200
    assert _ask(client, "again") == with_adapter
    assert _ask(client, "base") == _expected(base, None, tok)


@pytest.mark.parametrize(
    "body,message",
    [
        ({"lora_name": "x", "lora_path": "../outside"}, "outside the runtime LoRA directory"),
        ({"lora_name": "x", "lora_path": "/etc"}, "outside the runtime LoRA directory"),
        ({"lora_name": "x", "lora_path": "missing"}, "is not a directory"),
        ({"lora_name": "base", "lora_path": "strong"}, "already a served model"),
        ({"lora_name": "bad name!", "lora_path": "strong"}, "letters, digits"),
    ],
)
def test_bad_loads_are_400_naming_why(served, body, message):
    url = served[0]
    reply = _post(url, "/v1/load_lora_adapter", body)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]


def test_unknown_fields_are_400(served):
    reply = _post(served[0], "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "strong", "pin": True})
    assert reply.status_code == 400


def test_the_flag_needs_a_key_and_the_endpoints_need_the_flag(tmp_path):
    from server.app import build_app
    from server.engine import adapters
    from server.lora import AdapterError

    with pytest.raises(AdapterError, match="--runtime-lora-dir needs an API key"):
        adapters(ServerSettings(runtime_lora_dir=tmp_path))
    with pytest.raises(AdapterError, match="not a directory"):
        adapters(ServerSettings(runtime_lora_dir=tmp_path / "nope", api_key=["k"]))
    paths = {route.path for route in build_app(ServerSettings()).routes}
    assert "/v1/chat/completions" in paths and "/v1/load_lora_adapter" not in paths
    paths = {route.path for route in build_app(ServerSettings(runtime_lora_dir=tmp_path, api_key=["k"])).routes}
    assert {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"} <= paths
