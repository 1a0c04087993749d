"""Keep freed host memory for reuse: training on a CPU without the kernel's page faults.

A CPU training step allocates and frees the same large buffers every time (activations,
gradients, the output layer's logits). glibc's malloc serves a large allocation with fresh
pages from the kernel (mmap) and hands big frees back (munmap, or trimming its heap), so every
step the kernel zeroes those pages again and faults them in one by one on first touch. Told to
serve everything from its heap and never trim it, malloc reuses the memory instead: a SmolLM2
update on 2 cores ran 1.04x faster in benchmarks/host_memory_speed.py (7-9% in two earlier A/B
runs; docs/PERFORMANCE.md). The price: the process keeps its peak memory until it exits, which a
training process reaches every step anyway. Only a CPU-resident model sets it (a GPU run's host
memory is mostly the load, which should go back).
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV = "SELFCORRECT_KEEP_FREED_MEMORY"  # "0" turns it off
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (no mmap for large blocks, no trimming) for the
    rest of the process. Returns whether it applied: Linux with glibc, and not turned off with
    SELFCORRECT_KEEP_FREED_MEMORY=0. Elsewhere (macOS, musl) it does nothing."""
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the man page's values: 0 mmaps disables them, a trim threshold of -1 disables trimming
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))
