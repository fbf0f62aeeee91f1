"""A per-request transformers worker: what the original LLaVA repo serves with.

For comparison only. One request at a time (no batching): transformers'
``generate`` with its own image processor, streamed through a TextIteratorStreamer,
behind the same /v1/chat/completions shape so the same load generator drives it.

    python -m benchmarks.serving.hf_worker --model DIR --port 8002
"""

import argparse
import asyncio
import base64
import io
import json
import threading
import time
import uuid

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image

from llava_model.vision import num_image_tokens
from server.chat.protocol import ChatCompletionRequest, ImagePart
from server.chat.templates import choose_template


def build_app(model_dir: str, served_name: str, dtype: str = "bfloat16") -> FastAPI:
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration, TextIteratorStreamer

    from llava_model.hf_projector import replace_hf_projector

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=getattr(torch, dtype)).eval()
    replace_hf_projector(model, getattr(model.config, "projector_type", None) or "mlp2x_gelu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    template = choose_template(None, tokenizer, model.config.text_config.model_type)
    per_image = num_image_tokens(model.config)
    image_id = model.config.image_token_index
    lock = threading.Lock()  # one generate at a time, as a per-request server does
    app = FastAPI()

    def prepare(req: ChatCompletionRequest):
        images = []
        for m in req.messages:
            for part in m.content if isinstance(m.content, list) else []:
                if isinstance(part, ImagePart):
                    data = base64.b64decode(part.image_url.url.partition(",")[2])
                    images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        ids = []
        for token in tokenizer(template.render(req.messages))["input_ids"]:
            ids.extend([token] * per_image if token == image_id else [token])
        inputs = {"input_ids": torch.tensor([ids])}
        if images:
            inputs["pixel_values"] = processor(images=images, return_tensors="pt")["pixel_values"].to(model.dtype)
        return inputs, len(ids)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = ChatCompletionRequest.model_validate(await request.json())
        new_tokens = req.max_tokens or 64
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True)

        def run():
            with lock, torch.no_grad():
                inputs, prompt_len = prepare(req)
                kwargs = dict(max_new_tokens=new_tokens, do_sample=False, streamer=streamer,
                              pad_token_id=tokenizer.pad_token_id)
                if req.ignore_eos:
                    kwargs["min_new_tokens"] = new_tokens
                out = model.generate(**inputs, **kwargs)
                stats["prompt"], stats["completion"] = prompt_len, out.shape[1] - prompt_len

        stats: dict = {}
        thread = threading.Thread(target=run)
        thread.start()
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        async def events():
            loop = asyncio.get_running_loop()
            async for piece in _drain(streamer):
                if piece:
                    chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served_name,
                             "choices": [{"index": 0, "delta": {"content": piece}}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
            await loop.run_in_executor(None, thread.join)
            usage = {"prompt_tokens": stats["prompt"], "completion_tokens": stats["completion"],
                     "total_tokens": stats["prompt"] + stats["completion"]}
            yield f"data: {json.dumps({'id': rid, 'object': 'chat.completion.chunk', 'created': created, 'model': served_name, 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        if req.stream:
            return StreamingResponse(events(), media_type="text/event-stream")
        text = "".join([p async for p in _drain(streamer)])
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": served_name,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "length"}],
                             "usage": {"prompt_tokens": stats["prompt"], "completion_tokens": stats["completion"],
                                       "total_tokens": stats["prompt"] + stats["completion"]}})

    return app


async def _drain(streamer):
    loop = asyncio.get_running_loop()
    while True:
        piece = await loop.run_in_executor(None, lambda: next(iter(streamer), None))
        if piece is None:
            return
        yield piece


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--served-model-name", default="model")
    p.add_argument("--port", type=int, default=8002)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = p.parse_args(argv)
    app = build_app(args.model, args.served_model_name, args.dtype)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
