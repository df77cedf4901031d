"""Host-memory settings that change peak RSS on CPU, not results.

glibc serves allocations below its mmap threshold from the heap, and the threshold grows
dynamically up to 32 MiB once large blocks are freed. The chunked objectives allocate and
free several (rows, V) buffers per chunk; served from the heap, freed chunks fragment it
and peak RSS climbs (BENCHMARKS.md: 128-row chunks peaked at 3.3x the memory of 256-row
chunks). A fixed, low threshold makes every large buffer its own mapping, returned to the
OS on free. `run.mmap_threshold_kib` sets it for the process through mallopt.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3          # from glibc's malloc.h


def set_mmap_threshold(kib: int) -> bool:
    """mmap every allocation of at least `kib` KiB; False when the C library is not glibc."""
    if kib <= 0:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, kib * 1024))
