"""keep_freed_memory: large blocks come from malloc's heap and stay there after a free (checked
with glibc's own counters, in a fresh process each way); off with SELFCORRECT_KEEP_FREED_MEMORY=0."""

import ctypes
import json
import subprocess
import sys

import pytest

from selfcorrect.host_memory import ENV, keep_freed_memory

PROBE = r"""
import ctypes, json, sys
from selfcorrect.host_memory import keep_freed_memory

class Info(ctypes.Structure):  # struct mallinfo2 (glibc >= 2.33)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
applied = keep_freed_memory()
before = libc.mallinfo2().hblkhd  # bytes in blocks malloc took with mmap (some at start-up)
block = libc.malloc(256 << 20)
ctypes.memset(block, 1, 256 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"applied": applied, "mapped": mapped, "heap_after_free": libc.mallinfo2().arena}))
"""


def _probe(env_value: str) -> dict:
    import os

    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, ENV: env_value}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_with_mallinfo2(),
                    reason="needs glibc >= 2.33 (mallinfo2)")
def test_large_blocks_stay_in_the_heap_only_when_on():
    on, off = _probe("1"), _probe("0")
    assert on["applied"] and not off["applied"]
    assert off["mapped"] >= 256 << 20  # glibc's default: a block this large is its own mmap
    assert on["mapped"] == 0 and on["heap_after_free"] >= 256 << 20  # from the heap, kept after the free


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert keep_freed_memory() is False
