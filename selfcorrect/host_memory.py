"""Keep freed host memory for reuse during the update: training on a CPU without the kernel's page faults.

A CPU update allocates and frees the same large buffers every step (activations, gradients, the
output layer's logits). glibc's malloc serves a large allocation with fresh pages from the
kernel (mmap) and hands big frees back (munmap, or trimming its heap), so every step the kernel
zeroes those pages again and faults them in one by one on first touch. Told to serve everything
from its heap and never trim it, malloc reuses the memory instead: a SmolLM2 update on 2 cores
ran 1.04x (2026-12-05) and 1.09x (2026-12-07) faster in benchmarks/host_memory_speed.py
(docs/PERFORMANCE.md). The price: the heap keeps the update's peak until the training ends.

Only the update runs that way (`freed_memory_kept`, entered by Trainer._accumulate_gradients).
Outside it large blocks are mmapped again: blocks of other, larger sizes (a rollout, an
evaluation with more rows than training's) served from a heap that never gives memory back
extend it for good. Two evaluations of a 0.5B-parameter LoRA model after training took the
process from 4.0 to 13.5 GB that way, where glibc's default stayed at 3.4 (their large blocks
were head_input.py's copies, since fixed; docs/PERFORMANCE.md). Trimming stays off once an
update has run, so the kept memory is there for the next one; a finished training hands it back
(`release_freed_memory`, called at the end of Trainer.train).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Iterator

ENV = "SELFCORRECT_KEEP_FREED_MEMORY"  # "0" turns it off
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
DEFAULT_MMAP_MAX = 65536  # glibc's DEFAULT_MMAP_MAX: mmapped blocks allowed at once
# where glibc's own sliding threshold ends up once large blocks have been freed (its cap on
# 64-bit): blocks under it come from the heap, larger ones are mmapped
MMAP_THRESHOLD_OFF = 32 << 20


def _glibc(function: str, n_args: int):
    """glibc's `function`, taking `n_args` ints and returning one, or None (turned off with
    SELFCORRECT_KEEP_FREED_MEMORY=0, not Linux, not glibc)."""
    if os.environ.get(ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return None
    try:
        found = getattr(ctypes.CDLL("libc.so.6"), function)
    except (OSError, AttributeError):  # not glibc (musl)
        return None
    found.argtypes, found.restype = [ctypes.c_int] * n_args, ctypes.c_int
    return found


def keep_freed_memory(on: bool) -> bool:
    """on: serve every block from malloc's heap and never trim it; off: blocks of 32 MB or more
    mmapped again (setting any of these stops glibc's sliding threshold: this is where it would
    sit), trimming still off. Returns whether glibc took it."""
    mallopt = _glibc("mallopt", 2)
    if mallopt is None:
        return False
    if not on:
        return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_OFF)) and bool(mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX))
    # the man page's values: 0 mmaps disables them, a trim threshold of -1 disables trimming
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


@contextlib.contextmanager
def freed_memory_kept(enabled: bool = True) -> Iterator[bool]:
    """Inside: freed memory kept for reuse (keep_freed_memory(True)); after: large blocks
    mmapped again. Yields whether it applied; `enabled` False (a model off the CPU) does nothing."""
    applied = enabled and keep_freed_memory(True)
    try:
        yield applied
    finally:
        if applied:
            keep_freed_memory(False)


def release_freed_memory() -> bool:
    """Hand the heap's free pages back to the kernel (glibc's malloc_trim(0)), for the end of a
    training on a CPU: the update's kept memory would otherwise stay resident through whatever
    the process does next (an evaluation, `compare`'s next method). Returns whether it ran."""
    trim = _glibc("malloc_trim", 1)
    if trim is None:
        return False
    trim(0)  # its result says only whether anything went back
    return True
