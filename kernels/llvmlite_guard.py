"""Keeps numba's backend (llvmlite) from breaking a vLLM engine started in the same process.

When a vLLM 0.32 worker starts on a CPU it rebinds some kernels by scanning every loaded
module's attributes and reading ``vars(value).get("kernel")`` wherever ``value`` has a
``__dict__``. llvmlite's library handle, ``llvmlite.binding.ffi.lib``, answers any
attribute, ``__dict__`` included, with a function wrapper, so once numba is imported
(our exact resampler, or any library a user loaded) that scan raises ``AttributeError``
and the engine never starts. The handle caches what it answers: caching an empty dict
under ``__dict__`` makes it look like any object without instance attributes. Nothing
of llvmlite or vLLM is changed, and llvmlite never looks ``__dict__`` up itself.
"""

import sys


def guard() -> None:
    """Apply the fix if llvmlite is loaded (idempotent, cheap; called by our vLLM plugin in
    every worker and by ``kernels.resample_jit`` when it loads numba)."""
    ffi = sys.modules.get("llvmlite.binding.ffi")
    table = getattr(getattr(ffi, "lib", None), "_fntab", None)
    if isinstance(table, dict):
        table.setdefault("__dict__", {})
