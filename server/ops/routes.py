"""Routes: GET /health, GET /metrics, GET /v1/models (keys are checked by ``ops.middleware.Gate``)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.ops.metrics import exposition

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    if state.engine is None or state.engine.dead:
        return JSONResponse({"status": "dead"}, status_code=503)
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(request: Request):
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models")
async def models(request: Request):
    state = request.app.state
    engine = state.engine
    base = {"id": engine.model_name, "object": "model", "created": state.started, "owned_by": "llava-serve",
            "max_model_len": engine.max_model_len, "root": engine.model_name, "parent": None}
    adapters = [{**base, "id": name, "parent": engine.model_name} for name in engine.adapters]
    return {"object": "list", "data": [base, *adapters]}
