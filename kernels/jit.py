"""Where the numba-compiled loops come from, for every kernel that has them.

``compiled("resample_jit")`` imports ``kernels.resample_jit`` once (importing compiles its
loops, or loads them from numba's cache on disk) and returns the module, or ``None`` where
numba is missing; callers then take their plain path, which gives the same results.
"""

import functools
import importlib


@functools.cache
def compiled(module: str):
    """``kernels.<module>``, or ``None`` without numba."""
    try:
        return importlib.import_module(f"kernels.{module}")
    except ImportError:  # pragma: no cover (numba is a dependency)
        return None
