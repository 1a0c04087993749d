"""Writing folders and small files so that a crash never leaves a half-written one in place.

Temporary names are `.NAME.tmp-XXXX` (being written) and `.NAME.old-XXXX` (a replaced folder
being deleted): a kill -9 can leave one behind, and `remove_temporaries` (run at start-up, under
the run lock) recognises and deletes exactly those."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

TEMPORARY = re.compile(r"\..+\.(tmp|old)(-\w+)?")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a power cut after it would otherwise undo it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(target: Path):
    """Yield a temporary folder beside `target`; when the block succeeds, its files are fsynced
    and it takes `target`'s place by rename (an old `target` is first renamed aside, then
    deleted, and put back if the second rename fails). When the block fails (an exception, a
    full disk), `target` is untouched and the temporary folder removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    retired = None
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            # os.replace cannot move a folder onto a non-empty one: retire the old one first
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, retired / "old")
            try:
                os.replace(tmp, target)
            except BaseException:
                os.replace(retired / "old", target)
                raise
        else:
            os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, after an fsync; nothing is left on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def temporaries(folder: Path) -> list[Path]:
    """The leftovers of interrupted atomic writes directly inside `folder`."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if TEMPORARY.fullmatch(p.name))


def remove_temporaries(folder: Path) -> list[Path]:
    """Delete the leftovers of interrupted atomic writes in `folder`; return what was removed.
    Only safe while no other process writes there (the caller holds the run lock)."""
    removed = temporaries(folder)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return removed
