"""Freed host memory kept for the update only: inside `freed_memory_kept` large blocks come from
malloc's heap and stay there after a free, after it they are mmapped again while the heap keeps
what it holds (checked with glibc's own counters, in a fresh process each way); the trainer
keeps it on for the update and off for the rollout; off with SELFCORRECT_KEEP_FREED_MEMORY=0."""

import ctypes
import json
import os
import subprocess
import sys

import pytest

from selfcorrect import host_memory
from selfcorrect.host_memory import ENV, freed_memory_kept, keep_freed_memory

PROBE = r"""
import ctypes, json, sys
from selfcorrect.host_memory import freed_memory_kept

class Info(ctypes.Structure):  # struct mallinfo2 (glibc >= 2.33)
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20

def mapped_by_a_block(size):
    # bytes malloc took with mmap for one touched block while it is live; then it is freed
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    mapped = libc.mallinfo2().hblkhd - before
    libc.free(block)
    return mapped

with freed_memory_kept() as applied:
    inside = mapped_by_a_block(SIZE)
    heap_inside = libc.mallinfo2().arena
after_smaller = mapped_by_a_block(SIZE // 2)  # fits in what the heap kept
after_larger = mapped_by_a_block(2 * SIZE)  # does not
print(json.dumps({"applied": applied, "inside": inside, "heap_inside": heap_inside, "after_smaller": after_smaller,
                  "after_larger": after_larger, "heap_after": libc.mallinfo2().arena}))
"""


def _probe(env_value: str) -> dict:
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
def test_large_blocks_stay_in_the_heap_only_inside_the_block():
    on, off = _probe("1"), _probe("0")
    assert on["applied"] and not off["applied"]
    assert off["inside"] >= 256 << 20 and off["after_larger"] >= 512 << 20  # glibc's default: its own mmap
    assert on["inside"] == 0 and on["heap_inside"] >= 256 << 20  # from the heap, kept after the free
    # after the block the heap keeps the update's memory (trimming stays off) and serves what
    # fits in it, while a block that does not fit is mmapped instead of growing the heap: work
    # of other shapes cannot ratchet it up
    assert on["after_smaller"] == 0 and on["after_larger"] >= 512 << 20
    assert on["heap_inside"] <= on["heap_after"] < 512 << 20


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert keep_freed_memory(True) is False
    with freed_memory_kept() as applied:
        assert applied is False


def test_trainer_keeps_freed_memory_for_the_update_only(tmp_path, monkeypatch):
    """The rollout (and whatever runs after a step, an evaluation say) allocates with large blocks
    mmapped; each micro-batch of the update runs with freed memory kept."""
    from test_train import make_trainer, tiny_config

    state = {"on": False}

    def fake(on: bool) -> bool:
        state["on"] = on
        return True

    monkeypatch.setattr(host_memory, "keep_freed_memory", fake)
    trainer = make_trainer(tiny_config(tmp_path, stage1_steps=1, stage2_steps=1))
    seen = {"draw": [], "micro_batch": []}
    for name in seen:
        inner = getattr(trainer, name if name == "draw" else "_micro_batch")

        def watched(*args, _inner=inner, _name=name, **kwargs):
            seen[_name].append(state["on"])
            return _inner(*args, **kwargs)

        setattr(trainer, name if name == "draw" else "_micro_batch", watched)
    trainer.train()
    assert seen["draw"] == [False, False]
    assert seen["micro_batch"] and all(seen["micro_batch"])
    assert state["on"] is False


RELEASE_PROBE = r"""
import ctypes, json
from selfcorrect.host_memory import freed_memory_kept, release_freed_memory

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096  # pages of 4 KiB

with freed_memory_kept():
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
kept = resident()
released = release_freed_memory()
print(json.dumps({"kept": kept, "after": resident(), "released": released}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc_with_mallinfo2(),
                    reason="needs glibc >= 2.33")
@pytest.mark.parametrize("env_value", ["1", "0"])
def test_release_hands_the_kept_memory_back(env_value):
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE], env={**os.environ, ENV: env_value},
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if env_value == "0":  # glibc's default: the block was mmapped and went back at its free
        assert result["released"] is False and result["kept"] < 128 << 20
    else:
        assert result["released"] is True
        assert result["kept"] - result["after"] >= 200 << 20


def test_trainer_releases_freed_memory_when_training_ends(tmp_path, monkeypatch):
    from test_train import make_trainer, tiny_config
    import selfcorrect.train as train_module

    calls = []
    monkeypatch.setattr(train_module, "release_freed_memory", lambda: calls.append(True) or True)
    trainer = make_trainer(tiny_config(tmp_path, stage1_steps=1, stage2_steps=1))
    micro_batch = trainer._micro_batch

    def watched(*args, **kwargs):
        assert not calls  # not before the last update
        return micro_batch(*args, **kwargs)

    trainer._micro_batch = watched
    trainer.train()
    assert calls == [True]
