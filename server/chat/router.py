"""Route: POST /v1/chat/completions (thin: the key was checked by ``ops.middleware.Gate``)."""

from fastapi import APIRouter, Request

from server.chat.protocol import ChatCompletionRequest

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state
    return await state.chat.create(body, request)
