"""Writing folders and small files so that a crash never leaves a half-written one in place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_folder(target: Path):
    """Yield a temporary folder beside `target`; when the block succeeds, its files are fsynced
    and it takes `target`'s place by rename (an old `target` is first renamed aside, then
    deleted). When the block fails, `target` is untouched and the temporary folder removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        for path in tmp.rglob("*"):
            if path.is_file():
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            # os.replace cannot move a folder onto a non-empty one: retire the old one first
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, retired / "old")
            os.replace(tmp, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, after an fsync."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
