"""``build_app(settings)``: the FastAPI application. No side effects at import time.

The lifespan owns the engine (``EngineContext``) and the image loader, so both are
shut down however the server stops.
"""

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import errors
from server.config import ServerSettings
from server.ops.metrics import Metrics
from server.ops.middleware import Gate, InflightLimiter, RequestContext


def _services(app: FastAPI, settings: ServerSettings, engine) -> None:
    from llava_model.anyres import ImageTokenCount, is_anyres
    from llava_model.image_processing import ImageProcessingConfig
    from llava_model.next_processing import anyres_image_config
    from server.chat.serving import ChatService
    from server.chat.templates import choose_template
    from server.media.loader import ImageLoader

    state = app.state
    hf_config = engine.llm.model_config.hf_config
    anyres = is_anyres(hf_config)
    if anyres:  # tiled by the engine's processor: the front end only decodes and orients
        processing = anyres_image_config(_preprocessor_config(settings), hf_config)
    else:
        processing = ImageProcessingConfig.from_hf_dict(
            _preprocessor_config(settings), image_size=hf_config.vision_config.image_size
        )
    if processing.resampler == "exact":
        from kernels.resample import warm_up

        warm_up()  # the resampler's loops compiled (or loaded from numba's cache) before any request
    state.images = ImageLoader(settings, processing, state.metrics, geometry=not anyres)
    template = choose_template(settings.chat_template, engine.llm.get_tokenizer(), hf_config.text_config.model_type)
    state.chat = ChatService(
        engine=engine, template=template, images=state.images, metrics=state.metrics,
        limiter=state.limiter, settings=settings, image_tokens=ImageTokenCount.for_config(hf_config),
    )


def _preprocessor_config(settings: ServerSettings) -> dict:
    import json

    path = settings.model_dir() / "preprocessor_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def build_app(settings: ServerSettings, engine_context=None) -> FastAPI:
    """``engine_context``: an async context manager yielding the engine (tests may pass one)."""
    from server.chat.router import router as chat_router
    from server.engine import EngineContext
    from server.ops.routes import router as ops_router

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        context = engine_context or EngineContext(settings)
        async with context as engine:
            app.state.engine = engine
            _services(app, settings, engine)
            try:
                yield
            finally:
                await app.state.images.aclose()
                app.state.engine = app.state.chat = app.state.images = None

    app = FastAPI(title="llava-serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.api_keys = settings.api_keys()
    app.state.metrics = Metrics.get()
    app.state.limiter = InflightLimiter(settings.max_inflight, app.state.metrics.inflight)
    app.state.engine = None
    app.state.started = int(time.time())
    errors.install(app)
    app.include_router(chat_router)
    app.include_router(ops_router)
    if settings.runtime_lora_dir is not None:
        from server.ops.lora_admin import router as lora_admin_router

        app.include_router(lora_admin_router)
    # Added last = outermost: RequestContext (ids, logs, counts) wraps the Gate (key, body cap).
    app.add_middleware(
        Gate, keys=app.state.api_keys, max_body_bytes=settings.max_body_bytes,
        health_needs_key=settings.health_needs_key, metrics_needs_key=settings.metrics_needs_key,
    )
    app.add_middleware(RequestContext, metrics=app.state.metrics)
    return app
