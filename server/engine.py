"""vLLM's async engine, owned by an async context manager that always shuts it down.

Also the start-up checks that run before any engine exists (``check_startup``): a model
this server cannot load, or a parallel layout the platform cannot run, is refused with a
message that says why, instead of a stack trace from inside vLLM.
"""

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from llava_model.parent_watch import arm_engine_processes
from llava_model.vision import TOWERS
from server.config import ServerSettings
from server.quantization import (
    QuantSupport,
    UnsupportedQuantization,
    check_quantization,
    find_quantization,
    has_cpu_op,
)

log = logging.getLogger("server.engine")

RESERVED_ENV = "VLLM_CPU_NUM_OF_RESERVED_CPU"
# KV-cache block on CPU engines: multi-turn chats reuse their cached history in steps of this
# many tokens (vLLM's CPU default is 128). On `small`, c=16: 2.19 req/s at 32 vs 2.14 at 128;
# turn 2 of a conversation: 0.35x turn 1's TTFT at 32, 0.44x at 128 (benchmarks/README.md).
CPU_BLOCK_SIZE = 32
BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"
PLUGIN_NAME = "llava_model"  # our entry point in pyproject's vllm.general_plugins
# Vision towers ``llava_model.vision.build_vision_tower`` builds, by ``vision_config.model_type``
# (transformers' LlavaConfig reads a vision config without one as CLIP's).
SUPPORTED_VISION_TOWERS = tuple(TOWERS)


class StartupError(RuntimeError):
    """Settings or a model this server cannot run; the message says why."""


class ModelMissingError(StartupError):
    """No model directory where the settings point."""


class UnsupportedModelError(StartupError):
    """The model directory's config.json asks for something our model class cannot load."""


def check_model_dir(settings: ServerSettings) -> None:
    path = settings.model_dir()
    if not (path / "config.json").is_file():
        if settings.model is None:
            raise ModelMissingError(
                f"no model given and the built-in default model is not at {path}/ (the repository "
                "ships it there; run from the repository's root, or restore it with `git checkout models/default`), "
                "or serve a model directory (llava-hf layout) with --model DIR or LLAVA_MODEL=DIR."
            )
        raise ModelMissingError(f"--model {path}: no config.json there; expected a llava-hf model directory")


def _our_plugin_loads(environ: Mapping[str, str]) -> bool:
    """vLLM loads every plugin unless ``VLLM_PLUGINS`` lists the ones to load."""
    return "VLLM_PLUGINS" not in environ or PLUGIN_NAME in environ["VLLM_PLUGINS"].split(",")


def check_model_config(
    settings: ServerSettings, environ: Mapping[str, str] = os.environ, cpu: bool | None = None,
    cpu_op: Callable[[str], bool] = has_cpu_op,
) -> QuantSupport | None:
    """Refuse, by name, what the model's config.json asks for and our model class cannot load:
    its architecture, its vision tower, a quantisation method this engine cannot run
    (``server.quantization``; ``cpu``: whether the engine is vLLM's CPU one, by default what
    the platform says), or a ``--dtype`` its kernels do not take. Returns what quantisation
    the checkpoint has, if any. With ``VLLM_PLUGINS`` leaving out ``llava_model`` (vLLM's
    own LLaVA class) only the architecture is checked."""
    from llava_model import ARCHITECTURES

    path = settings.model_dir() / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedModelError(f"{path}: cannot read it as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{path}: expected a JSON object, got {type(config).__name__}")

    architectures = config.get("architectures")
    if not architectures or not isinstance(architectures, list):
        raise UnsupportedModelError(
            f"{path} names no model architecture (\"architectures\": {architectures!r}); "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    unsupported = [a for a in architectures if a not in ARCHITECTURES]
    if unsupported:
        raise UnsupportedModelError(
            f"{path}: architecture {', '.join(map(str, unsupported))} is not supported; "
            f"this server serves LLaVA models only: {', '.join(ARCHITECTURES)}"
        )
    _check_context_length(settings, config, path, environ)
    if not _our_plugin_loads(environ):
        return None

    vision = config.get("vision_config")
    if vision is not None:
        if not isinstance(vision, dict):
            raise UnsupportedModelError(f"{path}: vision_config must be an object, got {vision!r}")
        tower = vision.get("model_type", SUPPORTED_VISION_TOWERS[0])
        if tower not in SUPPORTED_VISION_TOWERS:
            raise UnsupportedModelError(
                f"{path}: vision tower model_type {tower!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_VISION_TOWERS)}"
            )
    _check_anyres(settings, config, path)

    found = find_quantization(config)
    if found is None:
        return None
    where, quant = found
    cpu = is_cpu_engine() if cpu is None else cpu
    try:
        support = check_quantization(quant, cpu=cpu)
    except UnsupportedQuantization as exc:
        raise UnsupportedModelError(f"{path}: {where}: {exc}") from None
    if cpu and settings.dtype not in ("auto", *support.dtypes):
        raise UnsupportedModelError(
            f"{path}: {support.method} {support.variant} runs in {' or '.join(support.dtypes)} on a CPU "
            f"engine (vLLM's CPU kernels for it), not --dtype {settings.dtype}; use --dtype auto or "
            f"{support.dtypes[0]}"
        )
    if cpu and support.cpu_op and not cpu_op(support.cpu_op):
        raise UnsupportedModelError(
            f"{path}: {support.method} {support.variant} needs vLLM's CPU kernel {support.cpu_op}, which the "
            "kernel library vLLM loads on this CPU lacks (its AVX2 build, for CPUs without AVX-512); "
            "serve an unquantised or a W8A8 int8 checkpoint here"
        )
    return support


# Where a config states its longest sequence (vLLM reads the same keys and takes the smallest).
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")


def _check_context_length(settings: ServerSettings, config: dict, path: Path, environ: Mapping[str, str]) -> None:
    """``--max-model-len`` above what the LLM's positions cover, refused by name before vLLM
    would fail on it deep inside the engine's start. Models whose RoPE scaling stretches the
    limit, and ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``, are left to vLLM."""
    wanted = settings.max_model_len
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    if wanted is None or environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN") == "1":
        return
    if text.get("rope_scaling") or (text.get("rope_parameters") or {}).get("factor"):
        return
    limits = {key: text[key] for key in _LENGTH_KEYS if isinstance(text.get(key), int)}
    if not limits:
        return
    key = min(limits, key=limits.get)
    if wanted > limits[key]:
        raise UnsupportedModelError(
            f"--max-model-len {wanted} is longer than this model's {key} ({limits[key]} in {path}); "
            f"use --max-model-len {limits[key]} or less"
        )


def _check_anyres(settings: ServerSettings, config: dict, path: Path) -> None:
    """A LLaVA-NeXT config's grid and preprocessing, checked as the model will read them."""
    from llava_model.anyres import AnyresLayout, is_anyres

    if not is_anyres(config):
        return
    from transformers import AutoConfig

    from llava_model.next_processing import anyres_image_config

    try:
        hf_config = AutoConfig.from_pretrained(settings.model_dir())
        AnyresLayout.from_config(hf_config)
        pre = settings.model_dir() / "preprocessor_config.json"
        anyres_image_config(json.loads(pre.read_text()) if pre.is_file() else {}, hf_config)
    except (ValueError, OSError) as exc:
        raise UnsupportedModelError(f"{path}: LLaVA-NeXT settings cannot be served: {exc}") from None


def is_cpu_engine() -> bool:
    """What vLLM decides: its platform (the vllm-cpu build, or VLLM_TARGET_DEVICE=cpu)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def compact_ids(ids: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (the CPU list format vLLM parses)."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def split_cores(allowed: Iterable[int], reserved: int, ranks: int) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``ranks`` workers: the allowed cores, less the last
    ``reserved`` (left to the front end and scheduler), split evenly in order; cores that do
    not divide evenly stay unbound (workers of one model run in lockstep, so an uneven
    split would only make the others wait for the smallest)."""
    cores = sorted(allowed)
    reserved = max(reserved, 0)
    usable = cores[: max(len(cores) - reserved, 0)]
    if len(usable) < ranks:
        raise StartupError(
            f"not enough CPU cores for {ranks} parallel ranks (tensor × pipeline parallel size): "
            f"this process may use {len(cores)} core(s) ({compact_ids(cores) or 'none'}), "
            f"{min(reserved, len(cores))} of them reserved for the front end (--cpu-reserved-cores), "
            f"leaving {len(usable)}; each rank needs at least one. Lower --tensor-parallel-size, "
            "lower --cpu-reserved-cores, or bind threads yourself with VLLM_CPU_OMP_THREADS_BIND."
        )
    per_rank = len(usable) // ranks
    return "|".join(compact_ids(usable[r * per_rank : (r + 1) * per_rank]) for r in range(ranks))


def allowed_cores() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux
        return set(range(os.cpu_count() or 1))


SMALL_MACHINE_CORES = 4


def _small_machine(cpu_count: int | None = None) -> bool:
    return (cpu_count if cpu_count is not None else os.cpu_count() or 1) <= SMALL_MACHINE_CORES


def model_in_engine_process(
    settings: ServerSettings, environ: Mapping[str, str] = os.environ, cpu_count: int | None = None
) -> bool:
    """Whether a CPU engine runs the model in the engine's own process (vLLM's ``uni``
    executor, its default on GPUs) rather than in the worker process vLLM's CPU platform
    always starts to bind OpenMP threads: with one rank on a small machine, unless the
    user binds threads (``VLLM_CPU_OMP_THREADS_BIND``). There the hand-off between the two
    processes and the pinned threads cost more than they give: `small` at concurrency 16
    on 2 cores served 2.36 and 2.42 req/s this way against 2.23 and 2.30 (same requests;
    benchmarks/README.md)."""
    ranks = settings.tensor_parallel_size * settings.pipeline_parallel_size
    return ranks == 1 and _small_machine(cpu_count) and BIND_ENV not in environ


def _engine_in_one_process(cls, args):
    """``cls.from_engine_args(args)``, with the model in the engine's process (see
    ``model_in_engine_process``): the CPU platform's choice of executor is replaced after
    it made it, since no argument reaches past it."""
    from vllm.v1.executor import Executor

    config = args.create_engine_config()
    config.parallel_config.distributed_executor_backend = "uni"
    return cls(vllm_config=config, executor_class=Executor.get_class(config),
               log_requests=args.enable_log_requests, log_stats=not args.disable_log_stats)


def cpu_engine_env(
    settings: ServerSettings,
    environ: Mapping[str, str] = os.environ,
    allowed: Iterable[int] | None = None,
    cpu_count: int | None = None,
) -> dict[str, str]:
    """Environment for vLLM's CPU workers, read when they bind their threads.

    Reserved cores: the flag wins, then the environment, then 0 on small machines (else
    vLLM's default, one core per rank). With more than one rank vLLM's automatic binding
    gives each rank a NUMA node, which fails on one-node machines; unless the user set
    ``VLLM_CPU_OMP_THREADS_BIND``, the ranks get an even split of the cores this process
    may use (``split_cores``).
    """
    env: dict[str, str] = {}
    if settings.cpu_reserved_cores is not None:
        env[RESERVED_ENV] = str(settings.cpu_reserved_cores)
    elif RESERVED_ENV not in environ and _small_machine(cpu_count):
        env[RESERVED_ENV] = "0"
    ranks = settings.tensor_parallel_size * settings.pipeline_parallel_size
    if ranks <= 1:
        return env
    if BIND_ENV in environ:
        given = environ[BIND_ENV]
        if given not in ("auto", "nobind") and len(given.split("|")) != ranks:
            raise StartupError(
                f"{BIND_ENV}={given!r} gives {len(given.split('|'))} core list(s) for {ranks} parallel "
                "ranks (tensor × pipeline parallel size); give one per rank, separated by '|', "
                "e.g. '0-3|4-7'"
            )
        return env
    reserved = int(env.get(RESERVED_ENV, environ.get(RESERVED_ENV, ranks)))
    env[BIND_ENV] = split_cores(allowed_cores() if allowed is None else allowed, reserved, ranks)
    return env


def check_parallelism(settings: ServerSettings, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Refuse parallel layouts the platform cannot run; return the CPU workers' environment."""
    if settings.tensor_parallel_size < 1 or settings.pipeline_parallel_size < 1:
        raise StartupError(
            f"--tensor-parallel-size ({settings.tensor_parallel_size}) and --pipeline-parallel-size "
            f"({settings.pipeline_parallel_size}) must be at least 1"
        )
    if not is_cpu_engine():
        return {}
    if settings.pipeline_parallel_size > 1:
        raise StartupError(
            f"--pipeline-parallel-size {settings.pipeline_parallel_size} is not supported on a CPU engine: "
            "vLLM 0.32's CPU scheduler fails with pipeline parallelism (KeyError on a request id, "
            "with any model class). It works on GPUs; on CPUs use --tensor-parallel-size instead."
        )
    return cpu_engine_env(settings, environ)


def check_block_size(settings: ServerSettings) -> None:
    """vLLM's CPU attention takes KV blocks of a multiple of 32 tokens; any other size
    would load the whole model and then fail inside the engine."""
    size = settings.block_size
    if size is None:
        return
    if size < 1:
        raise StartupError(f"--block-size must be at least 1 token, got {size}")
    if is_cpu_engine() and size % CPU_BLOCK_SIZE:
        raise StartupError(
            f"--block-size {size} cannot run on a CPU engine: vLLM's CPU attention takes KV-cache blocks "
            f"of a multiple of {CPU_BLOCK_SIZE} tokens (the default here is {CPU_BLOCK_SIZE})"
        )


def check_startup(settings: ServerSettings) -> dict[str, str]:
    """Every check that can refuse to start before an engine exists; returns the environment
    the engine's CPU workers need (empty on GPUs)."""
    check_model_dir(settings)
    check_block_size(settings)
    check_model_config(settings)
    adapters(settings)
    return check_parallelism(settings)


def adapters(settings: ServerSettings) -> dict:
    """The LoRA adapters to serve, by name (``server.lora``), checked."""
    from server.lora import AdapterError, parse_lora_modules

    if settings.max_loras < 1 or settings.max_lora_rank < 1:
        raise AdapterError("--max-loras and --max-lora-rank must be at least 1")
    runtime = settings.runtime_lora_dir
    if runtime is not None:
        if not settings.api_keys():
            raise AdapterError(
                "--runtime-lora-dir needs an API key (--api-key or --api-key-file): loading and unloading "
                "adapters changes what the server answers with"
            )
        if not runtime.is_dir():
            raise AdapterError(f"--runtime-lora-dir {runtime}: not a directory")
    return parse_lora_modules(settings.lora_modules, settings.model_name(), settings.max_lora_rank)


def apply_engine_env(env: Mapping[str, str], environ: MutableMapping[str, str] = os.environ) -> None:
    environ.update(env)
    if BIND_ENV in env:
        log.info("CPU thread binding per rank: %s=%s (derived from the cores this process may use)",
                 BIND_ENV, env[BIND_ENV])
    elif BIND_ENV in environ:
        log.info("CPU thread binding per rank: %s=%s (set by the user)", BIND_ENV, environ[BIND_ENV])


@dataclass
class Engine:
    """What the routes need from the engine."""

    llm: object  # vllm.v1.engine.async_llm.AsyncLLM
    model_name: str
    max_model_len: int
    adapters: dict = field(default_factory=dict)  # served LoRA adapters by name (server.lora.Adapter)
    base_lora: object = None  # what base-model requests carry, if anything (server.lora.base_standin)
    scratch: Path | None = None  # where a base stand-in made at run time goes (CPU engines with LoRA)
    last_lora_id: int = 0  # the highest id handed out at run time (unloaded adapters' ids stay used)

    def next_lora_id(self) -> int:
        """An id no adapter of this engine has had (vLLM's ids are integers from 1)."""
        self.last_lora_id = max(self.last_lora_id, *(a.lora_id for a in self.adapters.values()),
                                self.base_lora.lora_id if self.base_lora is not None else 0) + 1
        return self.last_lora_id

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
        self._scratch: tempfile.TemporaryDirectory | None = None

    async def __aenter__(self) -> Engine:
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.settings
        # Read by vLLM's CPU workers when they bind their threads (see ``cpu_engine_env``).
        apply_engine_env(check_startup(s))
        dtype = s.dtype
        quant = check_model_config(s)
        if quant is not None:
            log.info("quantised checkpoint: %s %s (the LLM only)", quant.method, quant.variant)
        if dtype == "auto" and is_cpu_engine():
            from server.cpu_dtype import cpu_auto_dtype

            dtype, why = cpu_auto_dtype(s.model_dir(), allow_float32=quant is None or "float32" in quant.dtypes)
            log.info(why)
        served_adapters = adapters(s)
        lora, standin = {}, None
        if served_adapters or s.runtime_lora_dir is not None:
            lora = {"enable_lora": True, "max_loras": s.max_loras, "max_lora_rank": s.max_lora_rank}
            if is_cpu_engine():  # see server.lora.base_standin: one more slot, for the zero adapter
                from server.lora import base_standin

                self._scratch = tempfile.TemporaryDirectory(prefix="llava-lora-")
                if served_adapters:  # else made when the first adapter is loaded at run time
                    standin = base_standin(served_adapters, Path(self._scratch.name) / "base")
                lora["max_loras"] += 1
        args = AsyncEngineArgs(
            model=str(s.model_dir()),
            served_model_name=[s.model_name()],
            dtype=dtype,
            max_model_len=s.max_model_len,
            max_num_seqs=s.max_num_seqs,
            block_size=s.block_size or (CPU_BLOCK_SIZE if is_cpu_engine() else None),
            kv_cache_memory_bytes=int(s.kv_cache_gb * 2**30),
            tensor_parallel_size=s.tensor_parallel_size,
            pipeline_parallel_size=s.pipeline_parallel_size,
            enforce_eager=s.enforce_eager,
            limit_mm_per_prompt={"image": s.limit_images_per_prompt},
            disable_log_stats=False,
            # Compact JSON for response_format: no free whitespace, which weak models loop on.
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True),
            **lora,
        )
        arm_engine_processes()  # the engine's processes end with this one, even on SIGKILL
        if is_cpu_engine() and model_in_engine_process(s):
            log.info("CPU engine: the model runs in the engine's process (one rank, %d cores; "
                     "set %s to bind threads in a worker process instead)", os.cpu_count() or 1, BIND_ENV)
            llm = _engine_in_one_process(_closing_class(AsyncLLM), args)
        else:
            llm = _closing_class(AsyncLLM).from_engine_args(args)
        self.engine = Engine(llm, s.model_name(), llm.model_config.max_model_len, served_adapters, standin,
                             Path(self._scratch.name) if self._scratch is not None else None)
        log.info("engine ready: model=%s max_model_len=%d", s.model_dir(), self.engine.max_model_len)
        for adapter in served_adapters.values():
            log.info("LoRA adapter %s (rank %d) from %s", adapter.name, adapter.rank, adapter.path)
        return self.engine

    async def __aexit__(self, *exc) -> None:
        if self.engine is not None:
            log.info("shutting the engine down")
            self.engine.llm.shutdown()
            self.engine.llm.closed = True
            self.engine = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
