"""CPU training speed: keep freed memory in the process instead of handing it back to the system.

glibc's ``malloc`` serves blocks above a threshold (at most 32 MB) with ``mmap`` and returns them with ``munmap``
when freed. A training step on 192x192 slices allocates activations of that size (e.g. 8x32x192x192 float32 =
38 MB) and frees them again, so every step maps fresh pages that the kernel must fault in and zero, a large share of
a CPU step (``benchmarks/results/train_step_options.md``). Turning off ``mmap`` and heap trimming makes the allocator
reuse freed memory, as jemalloc / tcmalloc (PyTorch's CPU tuning advice) do. The price: the process keeps its peak
memory until it exits.

The bundles call :func:`retain_freed_memory` at start on CPU (``initialize`` of ``pretrain.json`` / ``train.json``);
the same effect without code is ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=18446744073709551615`` in the environment.
It does nothing on a C library other than glibc, and it is irrelevant to GPU memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["retain_freed_memory"]

logger = logging.getLogger(__name__)

# mallopt parameters of glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep and reuse freed memory (no ``mmap`` for large blocks, no trimming).

    Process-wide and permanent: call it once at the start of a CPU training run. Data-loader workers forked later
    inherit it.

    Returns:
        ``True`` when glibc accepted both settings, ``False`` on another C library (nothing changed).

    Example:
        >>> retain_freed_memory()  # on Linux with glibc
        True
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.info("retain_freed_memory: no glibc mallopt here; the allocator is unchanged.")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the largest int trim threshold: freed memory at the top of the heap is never returned
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    logger.info("retain_freed_memory: %s", "glibc keeps freed memory" if ok else "mallopt refused the settings")
    return ok
