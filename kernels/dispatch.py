"""Which implementation each kernel operation uses.

Operations: ``projector`` (runs where the model runs, in its dtype) and ``preprocess``
(image normalisation, on the CPU where the multimodal processor runs). Backends:

- ``auto``: Triton for CUDA tensors where the operation prefers it, the fused CPU path
  for CPU tensors where the CPU supports the dtype, the PyTorch reference otherwise;
- ``reference``: plain PyTorch, runs anywhere;
- ``fused``: the CPU path (CPU tensors only);
- ``triton``: CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (how tests run it).

``LLAVA_KERNELS`` names one backend for every operation (``triton``) or one per
operation (``projector=triton,preprocess=fused``; unnamed ones stay ``auto``). A single
backend applies to each operation that can run it where that operation runs, the
others stay ``auto`` (logged once); if no operation can run it, or a per-operation
choice cannot run where its operation runs, ``resolve_backends`` refuses it. It is
called once at start-up (model build, processor set-up), so a bad setting stops the
engine there, never a request. Per call, ``choose_backend`` uses the resolved choice
if it can run on the tensors' device, else ``auto``'s pick for that device: it never
raises.
"""

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

from kernels.cpu_projector import cpu_fused_available, cpu_fused_preferred

logger = logging.getLogger(__name__)

ENV = "LLAVA_KERNELS"
BACKENDS = ("auto", "reference", "fused", "triton")
OPERATIONS = ("projector", "preprocess")
CPU = torch.device("cpu")

# Whether ``auto`` picks Triton on CUDA, per operation. The projector keeps cuBLAS + a
# separate GELU: on an H200 that measured 1.10-1.18x faster than our Triton
# epilogue-fused GEMM (benchmarks/results/projector_h200.md).
TRITON_PREFERRED = {"projector": False, "preprocess": True}

_logged: set[str] = set()


class KernelConfigError(ValueError):
    """``LLAVA_KERNELS`` names something unknown, or a backend that cannot run."""


@dataclass(frozen=True)
class _Site:
    """Where one operation runs, and what its CPU path supports there."""

    op: str
    device: torch.device
    dtype: torch.dtype | None

    @property
    def fused_ok(self) -> bool:
        return self.op != "projector" or cpu_fused_available(self.dtype or torch.float32)

    @property
    def fused_preferred(self) -> bool:
        return self.op != "projector" or cpu_fused_preferred(self.dtype or torch.float32)

    def describe(self) -> str:
        dtype = f" ({str(self.dtype).removeprefix('torch.')})" if self.dtype is not None else ""
        return f"{self.op} on {self.device.type}{dtype}"


def parse_kernels(value: str | None = None) -> dict[str, str] | str:
    """``LLAVA_KERNELS`` (or ``value``): one backend (a str) or ``{op: backend}``."""
    raw = os.environ.get(ENV, "") if value is None else value
    text = raw.strip().lower()
    if "=" not in text:
        choice = text or "auto"
        if choice not in BACKENDS:
            raise KernelConfigError(
                f"{ENV}={raw!r}: {choice!r} is not one of {', '.join(BACKENDS)} "
                f"(or per operation, e.g. projector=triton,preprocess=fused)"
            )
        return choice
    choices: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        op, sep, backend = (s.strip() for s in part.partition("="))
        if not sep:
            raise KernelConfigError(
                f"{ENV}={raw!r}: {part!r} has no operation; give one backend for all, or op=backend pairs"
            )
        if op not in OPERATIONS:
            raise KernelConfigError(f"{ENV}={raw!r}: operation {op!r} is not one of {', '.join(OPERATIONS)}")
        if backend not in BACKENDS:
            raise KernelConfigError(
                f"{ENV}={raw!r}: backend {backend!r} for {op} is not one of {', '.join(BACKENDS)}"
            )
        if op in choices:
            raise KernelConfigError(f"{ENV}={raw!r}: {op} is named twice")
        choices[op] = backend
    return choices


def triton_usable(device: torch.device) -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def _runnable(backend: str, device: torch.device, fused_ok: bool) -> bool:
    if backend in ("auto", "reference"):
        return True
    if backend == "fused":
        return device.type == "cpu" and fused_ok
    return triton_usable(device)


def _auto(device: torch.device, fused_preferred: bool, triton_preferred: bool) -> str:
    if device.type == "cuda" and triton_preferred and triton_usable(device):
        return "triton"
    if device.type == "cpu" and fused_preferred:
        return "fused"
    return "reference"


def _pick(site: _Site, choice: str) -> str:
    if choice != "auto" and _runnable(choice, site.device, site.fused_ok):
        return choice
    return _auto(site.device, site.fused_preferred, TRITON_PREFERRED[site.op])


def _what_works(site: _Site) -> str:
    usable = [b for b in BACKENDS[1:] if _runnable(b, site.device, site.fused_ok)]
    return f"{site.describe()} can use {', '.join(['auto', *usable])}"


def _needs(backend: str) -> str:
    return {
        "triton": " (triton needs a CUDA device, or TRITON_INTERPRET=1 on CPU)",
        "fused": " (fused needs CPU tensors in a dtype this CPU supports)",
    }.get(backend, "")


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.warning(message)


def resolve_backends(
    projector_device: torch.device,
    projector_dtype: torch.dtype,
    preprocess_device: torch.device = CPU,
) -> dict[str, str]:
    """``{op: backend}`` for this engine, from ``LLAVA_KERNELS``; call once at start-up.

    Raises ``KernelConfigError`` for unknown names, a per-operation backend that cannot
    run where its operation runs, or a single backend that no operation can run.
    """
    sites = {
        "projector": _Site("projector", torch.device(projector_device), projector_dtype),
        "preprocess": _Site("preprocess", torch.device(preprocess_device), None),
    }
    setting = parse_kernels()
    if isinstance(setting, dict):
        for op, backend in setting.items():
            if not _runnable(backend, sites[op].device, sites[op].fused_ok):
                raise KernelConfigError(
                    f"{ENV}: {op}={backend} cannot run for {sites[op].describe()}; "
                    f"{_what_works(sites[op])}{_needs(backend)}"
                )
        return {op: _pick(site, setting.get(op, "auto")) for op, site in sites.items()}
    if setting != "auto":
        runs = [op for op, site in sites.items() if _runnable(setting, site.device, site.fused_ok)]
        if not runs:
            works = "; ".join(_what_works(site) for site in sites.values())
            raise KernelConfigError(
                f"{ENV}={setting} cannot run for any operation here: {works}{_needs(setting)}"
            )
        if len(runs) < len(sites):
            rest = ", ".join(site.describe() for op, site in sites.items() if op not in runs)
            _log_once(f"{ENV}={setting} applies to {', '.join(runs)}; {rest} stays auto")
    return {op: _pick(site, setting) for op, site in sites.items()}


def choose_backend(
    op: str,
    device: torch.device,
    dtype: torch.dtype | None = None,
    choice: str | None = None,
) -> str:
    """The backend for one call of ``op`` on tensors on ``device``; never raises for a
    backend that cannot run there (``auto``'s pick replaces it).

    ``choice``: the backend resolved at start-up (``resolve_backends``); ``None`` reads
    ``LLAVA_KERNELS`` now (direct callers such as benchmarks).
    """
    if op not in OPERATIONS:
        raise ValueError(f"unknown kernel operation {op!r}; one of {', '.join(OPERATIONS)}")
    site = _Site(op, torch.device(device), dtype)
    if choice is None:
        setting = parse_kernels()
        choice = setting.get(op, "auto") if isinstance(setting, dict) else setting
    picked = _pick(site, choice)
    if choice not in ("auto", picked):
        _log_once(f"kernel backend {choice} cannot run for {site.describe()}; using {picked}")
    return picked
