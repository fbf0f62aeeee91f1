"""Loading and unloading LoRA adapters while the server runs (``--runtime-lora-dir DIR``).

    POST /v1/load_lora_adapter    {"lora_name": "NAME", "lora_path": "PATH"}
    POST /v1/unload_lora_adapter  {"lora_name": "NAME"}

The paths and bodies are vLLM's. Only routed when ``--runtime-lora-dir`` is set, which
needs an API key (``server.engine.adapters``): the Gate then asks every request for it.
An adapter is loaded only from below that directory (a relative ``lora_path`` is read
from there), after the same checks as ``--lora-modules`` at startup, and it is a model
(``/v1/models``, a request's ``model``) once vLLM has loaded it. A request that names an
adapter after its unloading gets a 404; requests already running with it finish.
"""

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from server.errors import APIError, bad_request
from server.lora import Adapter, AdapterError, base_standin, check_name, read_adapter

router = APIRouter()
_LOCK = asyncio.Lock()  # one load or unload at a time


class LoadAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str


def _resolve(root: Path, given: str) -> Path:
    path = (root / given).resolve()  # an absolute ``given`` replaces root
    if not path.is_relative_to(root.resolve()):
        raise bad_request(f"lora_path {given!r} is outside the runtime LoRA directory", param="lora_path")
    return path


@router.post("/v1/load_lora_adapter")
async def load_adapter(body: LoadAdapter, request: Request):
    state = request.app.state
    engine, settings = state.engine, state.settings
    path = _resolve(settings.runtime_lora_dir, body.lora_path)
    async with _LOCK:
        try:
            check_name(body.lora_name, [engine.model_name, *engine.adapters], "lora_name")
        except AdapterError as exc:
            raise bad_request(str(exc), param="lora_name", code="lora_name_taken") from None
        try:
            rank = read_adapter(body.lora_name, path, settings.max_lora_rank)
        except AdapterError as exc:
            raise bad_request(str(exc), param="lora_path") from None
        adapter = Adapter(body.lora_name, path, rank, engine.next_lora_id())
        try:
            await engine.llm.add_lora(adapter.request())
        except Exception as exc:  # noqa: BLE001 (vLLM raises many types for an adapter it cannot load)
            raise bad_request(f"LoRA adapter {body.lora_name!r} cannot be loaded: {exc}", param="lora_path") from None
        if engine.scratch is not None and engine.base_lora is None:  # a CPU engine's first adapter
            engine.base_lora = base_standin({adapter.name: adapter}, engine.scratch / "base", engine.next_lora_id())
        engine.adapters[adapter.name] = adapter
    return {"object": "lora_adapter", "id": adapter.name, "rank": rank, "status": "loaded"}


@router.post("/v1/unload_lora_adapter")
async def unload_adapter(body: UnloadAdapter, request: Request):
    engine = request.app.state.engine
    async with _LOCK:
        adapter = engine.adapters.pop(body.lora_name, None)
        if adapter is None:
            raise APIError(404, f"no LoRA adapter {body.lora_name!r} is loaded", param="lora_name",
                           code="model_not_found")
        await engine.llm.remove_lora(adapter.lora_id)
    return {"object": "lora_adapter", "id": adapter.name, "status": "unloaded"}
