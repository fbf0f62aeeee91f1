"""Route: POST /v1/chat/completions (thin: auth, then the service)."""

from fastapi import APIRouter, Request

from server.chat.protocol import ChatCompletionRequest
from server.ops.auth import check_key

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    check_key(request, state.api_keys)
    return await state.chat.create(body, request)
