"""vLLM's async engine, owned by an async context manager that always shuts it down."""

import logging
import os
from dataclasses import dataclass

from server.config import ServerSettings

log = logging.getLogger("server.engine")


class ModelMissingError(RuntimeError):
    """No model directory where the settings point."""


def check_model_dir(settings: ServerSettings) -> None:
    path = settings.model_dir()
    if not (path / "config.json").is_file():
        if settings.model is None:
            raise ModelMissingError(
                f"no model given and the built-in default model is not at {path}/. "
                "Build it with `make model` (or `llava-train default-model --out models/default`; "
                "`make serve` does this for you), or serve a model directory (llava-hf layout) "
                "with --model DIR or LLAVA_MODEL=DIR."
            )
        raise ModelMissingError(f"--model {path}: no config.json there; expected a llava-hf model directory")


@dataclass
class Engine:
    """What the routes need from the engine."""

    llm: object  # vllm.v1.engine.async_llm.AsyncLLM
    model_name: str
    max_model_len: int

    @property
    def dead(self) -> bool:
        return bool(getattr(self.llm, "errored", False))


def _closing_class(base):
    """vLLM's AsyncLLM shuts down again in ``__del__``; when that runs at interpreter exit,
    after module globals are gone, it prints a traceback on every Ctrl-C. Once we have shut
    it down ourselves, there is nothing left for ``__del__`` to do."""

    class ClosingAsyncLLM(base):
        closed = False

        def __del__(self):
            if not self.closed:
                super().__del__()

    return ClosingAsyncLLM


class EngineContext:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.engine: Engine | None = None

    async def __aenter__(self) -> Engine:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        check_model_dir(s)
        # Read by vLLM's CPU worker when it binds its threads: the flag wins, then the
        # environment, then our small-machine default.
        if s.cpu_reserved_cores is not None:
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(s.cpu_reserved_cores)
        elif (os.cpu_count() or 1) <= 4:
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        args = AsyncEngineArgs(
            model=str(s.model_dir()),
            served_model_name=[s.model_name()],
            dtype=s.dtype,
            max_model_len=s.max_model_len,
            max_num_seqs=s.max_num_seqs,
            kv_cache_memory_bytes=int(s.kv_cache_gb * 2**30),
            tensor_parallel_size=s.tensor_parallel_size,
            pipeline_parallel_size=s.pipeline_parallel_size,
            enforce_eager=s.enforce_eager,
            limit_mm_per_prompt={"image": s.limit_images_per_prompt},
            disable_log_stats=False,
            # Compact JSON for response_format: no free whitespace, which weak models loop on.
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
        )
        llm = _closing_class(AsyncLLM).from_engine_args(args)
        self.engine = Engine(llm, s.model_name(), llm.model_config.max_model_len)
        log.info("engine ready: model=%s max_model_len=%d", s.model_dir(), self.engine.max_model_len)
        return self.engine

    async def __aexit__(self, *exc) -> None:
        if self.engine is not None:
            log.info("shutting the engine down")
            self.engine.llm.shutdown()
            self.engine.llm.closed = True
            self.engine = None
