"""Writing folders and small files so that a crash never leaves a half-written one in place.

Temporary names are `.NAME.sc-tmp-XXXXXXXX` (a folder being written), `.NAME.sc-tmp` (a file
being written) and `.NAME.sc-old-XXXXXXXX` (a replaced folder being deleted): a kill -9 can leave
one behind, and `remove_temporaries` (run at start-up, under the run lock) recognises and deletes
exactly those. The `sc-` and mkdtemp's eight random characters keep a user's own hidden
`.env.old` or `.data.tmp` in an output folder out of that match."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

TEMPORARY = re.compile(r"\..+\.sc-(?:tmp|old)(?:-[a-z0-9_]{8})?")


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.sc-tmp-", dir=target.parent))
    retired = None
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        # the names of files and sub-folders live in their folders: fsync those too, deepest first
        for folder in sorted((p for p in tmp.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            fsync_dir(folder)
        fsync_dir(tmp)
        if target.exists():
            # os.replace cannot move a folder onto a non-empty one: retire the old one first
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.sc-old-", dir=target.parent))
        try:
            if retired is not None:
                os.replace(target, retired / "old")
            os.replace(tmp, target)
        finally:
            # whatever interrupted the two renames (an error, a signal's exception between them),
            # the target is never left missing while a copy of it exists
            if not target.exists() and retired is not None and (retired / "old").exists():
                os.replace(retired / "old", target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if retired is not None and target.exists():
            shutil.rmtree(retired, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, after an fsync; nothing is left on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.sc-tmp")
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
