"""LoRA adapters served beside the base model: ``--lora-modules NAME=PATH`` (repeatable).

An adapter is a PEFT directory (``adapter_config.json`` + ``adapter_model.safetensors``)
of the base model's language model: one written by ``llava-train stage2 --lora-r`` (its
``lora/`` folder, served over ``lora/base``, which holds the projector that run trained:
what the adapter changed outside the LLM travels with the base), or one PEFT saved for
transformers' ``LlavaForConditionalGeneration`` (``...language_model.model.layers...`` or
transformers 5's ``...model.language_model.layers...``; our model class maps both).

Each adapter is a model of its own in ``/v1/models``, picked by a request's ``model``;
requests for different adapters share engine steps (up to ``--max-loras`` adapters in
one step). Everything here is checked at startup, so a bad adapter never gets as far
as a request.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from server.engine import StartupError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterError(StartupError):
    """An adapter this server cannot serve; the message says which and why."""


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    rank: int
    lora_id: int  # vLLM's integer id, 1-based

    def request(self):
        from vllm.lora.request import LoRARequest

        return LoRARequest(self.name, self.lora_id, str(self.path))


def _read(name: str, path: Path, max_rank: int) -> int:
    """The adapter's rank, after checking what can be checked without an engine."""
    if not path.is_dir():
        raise AdapterError(f"LoRA adapter {name!r}: {path} is not a directory")
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise AdapterError(f"LoRA adapter {name!r}: {path} has no adapter_config.json (a PEFT adapter directory)")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise AdapterError(f"LoRA adapter {name!r}: {path} has none of {', '.join(WEIGHT_FILES)}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError(f"LoRA adapter {name!r}: {config_file} is not readable JSON ({exc})") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"LoRA adapter {name!r}: peft_type {config.get('peft_type')!r} is not LORA")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"LoRA adapter {name!r}: adapter_config.json has no positive integer rank 'r'")
    if rank > max_rank:
        raise AdapterError(
            f"LoRA adapter {name!r} has rank {rank}, above --max-lora-rank {max_rank}; raise --max-lora-rank"
        )
    saved = config.get("modules_to_save") or []
    if saved:
        raise AdapterError(
            f"LoRA adapter {name!r} also stores whole modules ({', '.join(map(str, saved))}); serve it over a "
            "base that has them merged in (llava-train exports that base as lora/base)"
        )
    return rank


def check_name(name: str, served: list[str], what: str) -> None:
    """An adapter name a request can use: new, and in the allowed characters."""
    if not _NAME.match(name):
        raise AdapterError(f"{what}: the name may use letters, digits and ._:/- (128 at most)")
    if name in served:
        raise AdapterError(f"{what}: the name {name!r} is already a served model")


def read_adapter(name: str, path: Path, max_rank: int) -> int:
    """The rank of the PEFT adapter at ``path``, after every check possible without an engine."""
    return _read(name, path, max_rank)


def parse_lora_modules(specs: list[str], base_name: str, max_rank: int) -> dict[str, Adapter]:
    """``NAME=PATH`` specs -> adapters by name, in the order given."""
    adapters: dict[str, Adapter] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise AdapterError(f"--lora-modules {spec!r}: expected NAME=PATH")
        check_name(name, [base_name, *adapters], f"--lora-modules {spec!r}")
        rank = _read(name, Path(path), max_rank)
        adapters[name] = Adapter(name, Path(path).resolve(), rank, len(adapters) + 1)
    return adapters


# The name of the all-zero adapter that base-model requests carry on CPU engines (never listed).
BASE_STANDIN = "__base__"


def base_standin(adapters: dict[str, Adapter], into: Path, lora_id: int | None = None) -> Adapter:
    """An adapter of exact zeros, shaped as the first served one, written to ``into``.

    vLLM 0.32's CPU LoRA kernels (``lora/ops/torch_ops``) pick each token's adapter by
    indexing the stacked adapter slots with its adapter index, and a request without an
    adapter has index -1, which Python reads as the *last* slot: once every slot holds an
    adapter, base-model requests that share an engine step with adapter requests are
    computed with the last slot's adapter. Base requests on CPU engines therefore carry
    this adapter (its deltas are exact zeros, so the output is the base's to the bit) and
    never the index -1. It takes one engine slot of its own.
    """
    from safetensors.torch import load_file, save_file

    first = next(iter(adapters.values()))
    into.mkdir(parents=True, exist_ok=True)
    source = first.path / "adapter_model.safetensors"
    if source.is_file():
        state = load_file(str(source))
    else:
        import torch

        state = torch.load(first.path / "adapter_model.bin", map_location="cpu", weights_only=True)
    save_file({k: v.new_zeros(v.shape).contiguous() for k, v in state.items()}, str(into / "adapter_model.safetensors"))
    (into / "adapter_config.json").write_text((first.path / "adapter_config.json").read_text())
    return Adapter(BASE_STANDIN, into, first.rank, lora_id if lora_id is not None else len(adapters) + 1)
