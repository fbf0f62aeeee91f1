"""Server settings: one pydantic-settings class; every field also reads ``LLAVA_<NAME>``.

Command-line flags (``server.cli``) override the environment. Defaults are the safe
ones: loopback only, private image destinations refused, no local files.
"""

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_DIR = Path("models/default")


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLAVA_", extra="ignore", protected_namespaces=())

    # model and engine
    model: Path | None = None  # None: the built-in default model (models/default)
    served_model_name: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    max_num_seqs: int = 64
    kv_cache_gb: float = 2.0
    # KV-cache block (tokens), the grain of prefix-cache reuse; None: 32 on CPUs (vLLM's 128 there
    # reuses a re-sent chat history in 128-token steps), vLLM's 16 on GPUs
    block_size: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    enforce_eager: bool = False
    chat_template: str | None = None  # a built-in name or a Jinja file
    # Ids of sent replies kept so that a reply sent back as history reads as the tokens the model
    # generated (server.chat.reply_memory); 0: history is always tokenised afresh
    reply_memory_tokens: int = 1_000_000
    # LoRA adapters of the LLM, NAME=PATH each (env: comma-separated); see server.lora
    lora_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_loras: int = 4  # adapters one engine step may mix
    max_lora_rank: int = 64
    # POST /v1/load_lora_adapter and /v1/unload_lora_adapter, loading adapters from below this
    # directory only; None: the endpoints do not exist. Needs an API key (they change what is served).
    runtime_lora_dir: Path | None = None

    # HTTP
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Annotated[list[str], NoDecode] = Field(default_factory=list)  # env: comma-separated
    api_key_file: Path | None = None
    # Refuse to listen on a non-loopback address without an API key unless this is set.
    allow_unauthenticated: bool = False
    health_needs_key: bool = False
    metrics_needs_key: bool = False
    max_inflight: int = 128  # beyond it: 429 with Retry-After
    request_timeout_s: float = 600.0  # fetching + preprocessing + generation
    shutdown_grace_s: float = 30.0
    max_body_bytes: int = 64 * 2**20
    log_level: str = "info"

    # images
    limit_images_per_prompt: int = 4
    max_image_bytes: int = 20 * 2**20
    max_image_pixels: int = 40_000_000
    # Request-wide: all images of one request together (400 past them).
    max_request_image_bytes: int = 40 * 2**20
    max_request_image_pixels: int = 64_000_000
    # Server-wide: image bytes held by requests in flight, encoded plus decoded (3 bytes
    # per pixel); past it, 429 with Retry-After.
    max_image_bytes_in_flight: int = 2 * 2**30
    image_connect_timeout_s: float = 5.0
    image_timeout_s: float = 20.0  # the whole fetch of one image, redirects included
    image_max_redirects: int = 3
    # hosts / CIDRs allowed even if private (env: comma-separated)
    allowed_image_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    allowed_local_image_dir: Path | None = None  # file:// URLs only below this directory
    image_workers: int = 2
    image_cache_bytes: int = 256 * 2**20  # prepared images kept by content hash (0: none)
    # CPU split (CPU engines only): torch threads of the HTTP process (image resizing) and
    # cores vLLM leaves to its front end and scheduler instead of binding them to the model.
    frontend_threads: int = 1
    # None: 0 on machines of at most 4 cores (a whole reserved core out of 2 halves the
    # model's compute; measured in benchmarks/README.md), else vLLM's default (one core).
    cpu_reserved_cores: int | None = None

    @field_validator("api_key", "allowed_image_hosts", "lora_modules", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.lower()
        if value not in ("debug", "info", "warning", "error", "critical"):
            raise ValueError(f"log level {value!r} is not one of debug, info, warning, error, critical")
        return value

    def model_dir(self) -> Path:
        return self.model if self.model is not None else DEFAULT_MODEL_DIR

    def model_name(self) -> str:
        return self.served_model_name or self.model_dir().name

    def api_keys(self) -> list[str]:
        keys = list(self.api_key)
        if self.api_key_file is not None:
            keys += [line.strip() for line in self.api_key_file.read_text().splitlines() if line.strip()]
        return keys
