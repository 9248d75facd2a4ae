"""Hand memory freed after startup and policy loads back to the kernel.

Building a policy (pydantic validation, loading Hyperscan databases and the classifier files)
allocates and frees tens of megabytes of small blocks. glibc keeps freed blocks in its heaps,
so the process's resident size stays at its startup peak although the memory is free: about
9 MB of the sidecar's idle RSS with the default guardrails (``benchmarks.sidecar_proxy``).
``malloc_trim(0)`` returns the free pages of every arena. It is glibc-only; elsewhere (musl,
macOS) :func:`trim` does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from collections.abc import Callable

log = logging.getLogger("aiguard.sidecar")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim_fn: Callable[[int], int] = fn
    return trim_fn


def trim() -> bool:
    """Return free heap memory to the kernel; True if the C library can (glibc).

    Takes a few milliseconds on a heap of ~100 MB: call it from a worker thread once the
    process is serving."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
