"""What a training run does when the world misbehaves: preemption signals, a second run in the
same folder, non-finite numbers. (Disk-full and kill -9 safety live in atomic.py / checkpoint.py.)

- `StopSignals`: the first SIGTERM / SIGINT asks the trainer to stop at its next safe point (the
  end of the current step); the second one interrupts at once (`Interrupted`, exit 128 + signal).
- `acquire_lock` / `release_lock`: `<run>/.lock` names the owner's pid and host; a lock whose
  pid is gone on this host is stale and taken over with a warning.
- The exceptions the CLI turns into one line: `TrainingFault` (exit 2) and `TrainingStopped`
  (a clean stop after a checkpoint: exit 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

LOCK_NAME = ".lock"


class TrainingFault(Exception):
    """A fault the trainer detected and stopped on; the message says what happened (one line)."""


class NonFiniteTraining(TrainingFault, FloatingPointError):
    """Too many non-finite steps in a row, or weights that are not finite (never checkpointed)."""


class CheckpointWriteError(TrainingFault, OSError):
    """A checkpoint could not be written (disk full, unwritable folder); the previous one is intact."""


class RunLocked(FileExistsError):
    """Another live run owns the run folder. A FileExistsError, so data-parallel ranks share it."""


class TrainingStopped(Exception):
    """Training stopped cleanly on a signal after checkpointing step `step` (not a failure)."""

    def __init__(self, signal_name: str, step: int, total: int, checkpoint: Path | None):
        self.signal_name, self.step, self.total, self.checkpoint = signal_name, step, total, checkpoint
        super().__init__(f"stopped by {signal_name} after step {step} of {total}; checkpoint "
                         f"{checkpoint}; continue with --run.resume true")


class Interrupted(KeyboardInterrupt):
    """The second stop signal: leave now (finally blocks still remove temporaries and the lock)."""

    def __init__(self, signal_name: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(f"second {signal_name}: stopped at once, without a checkpoint of the current step")


class StopSignals:
    """Context manager turning SIGTERM / SIGINT into a stop request read at safe points.

    Why: schedulers send SIGTERM some seconds before killing a preempted job; dying mid-step
    loses the step, and dying mid-write used to be the only outcome. Handlers can only be
    installed from the main thread; elsewhere this is a no-op (`received` stays None)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            raise Interrupted(name, 128 + signum)
        self.received = name
        try:  # a print inside a print on the same stream can raise: the request stands regardless
            print(f"selfcorrect: {name} received; stopping after the current step with a checkpoint "
                  f"(send it again to stop at once)", file=sys.stderr, flush=True)
        except RuntimeError:
            pass


# ---------------------------------------------------------------- the run-folder lock
def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), so a reused pid is not taken for the owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of the line, counted after the name


def lock_record() -> dict:
    """Who this process is, as written into the lock file."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": process_start_time(pid),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": uuid.uuid4().hex}


def owner_alive(owner: dict) -> bool | None:
    """True / False for an owner on this host; None when it is on another host (cannot tell)."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = owner.get("started")
    return started is None or process_start_time(pid) in (None, started)


def read_lock(path: Path) -> dict:
    """The lock's owner record, {} when the file is unreadable or gone."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def acquire_lock(run_dir: Path) -> dict:
    """Create `<run_dir>/.lock` holding this process's record, or refuse when a live run owns it.

    The file is written aside and hard-linked into place, so it never exists half-written and
    two starters cannot both succeed. Returns the record (its token identifies this holder)."""
    path = Path(run_dir) / LOCK_NAME
    mine = lock_record()
    for _ in range(5):
        tmp = path.with_name(f"{LOCK_NAME}-{mine['pid']}-{mine['token']}.writing")
        tmp.write_text(json.dumps(mine))
        try:
            os.link(tmp, path)
            return mine
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        owner = read_lock(path)
        if not owner and not path.exists():  # released between our link and our read: try again
            continue
        same_process = owner.get("pid") == mine["pid"] and owner.get("host") == mine["host"]
        alive = owner_alive(owner) if owner else False
        if alive is not False and not same_process:
            where = "this host" if alive else f"host {owner.get('host')}"
            raise RunLocked(f"{run_dir} is in use by another run: pid {owner.get('pid')} on {where} since "
                            f"{owner.get('since')} (lock file {path}); wait for it to end or choose another "
                            f"--run.output_dir (delete the lock only if that process is gone)")
        if not same_process:  # an earlier Trainer of this same process may leave its lock behind
            warnings.warn(f"{path}: taking over a stale lock of pid {owner.get('pid')} on "
                          f"{owner.get('host')}, which is no longer running", RuntimeWarning, stacklevel=2)
        _remove_if_still(path, owner, mine["token"])
    raise RunLocked(f"{path}: could not take the lock (another run keeps taking it)")


def _remove_if_still(path: Path, owner: dict, token: str) -> None:
    """Remove the lock at `path` only if it still holds `owner`'s record. Another starter may have
    taken the stale lock over and linked its own since `owner` was read: the file is moved aside
    in one rename, checked, and a newer holder's lock is put back instead of deleted."""
    aside = path.with_name(f"{LOCK_NAME}-{token}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # someone else removed it first
        return
    if read_lock(aside) != owner:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)  # a live holder's lock: back in place
    aside.unlink(missing_ok=True)


def release_lock(run_dir: Path, record: dict | None) -> None:
    """Remove the lock if it is still ours (a later holder's lock is left alone)."""
    if not record:
        return
    path = Path(run_dir) / LOCK_NAME
    if read_lock(path).get("token") == record.get("token"):
        path.unlink(missing_ok=True)
