"""A pool of killable worker processes that run verifier calls under a hard deadline.

Verifiers hang: sympy can spend minutes inside one C call on `10^{10^{10}}`, a regex can
backtrack forever, and user code does what it likes. A thread cannot be stopped, and
math-verify's own timeout (SIGALRM) only works on a main thread, so checks run here, each on
the main thread of a separate process, under two deadlines:

- soft: the worker arms an interval timer (SIGALRM) for `deadline_s`; a check stuck in Python
  code is interrupted and the worker lives on (cheap);
- hard: the parent kills the worker's process group (SIGKILL) when no answer came
  `kill_grace_s` after the soft deadline (stuck in C code, or the alarm was swallowed by a
  bare `except`), and starts a fresh worker when it next needs one.

Either way the call's `Result` says error="timeout"; a worker that dies says "crash", a
function that raises says "exception". The pool never raises because of what a call did and
never waits longer than deadline + grace for one call.

The pool is generic: any module-level callable importable by name plus a tuple of picklable
arguments (`fn(*args)`), so the math task, the code task and users' tasks share it. Workers
start lazily on the first `map`; their start-up (imports, `initializer`) does not count
against any deadline. The pool owns SIGALRM inside its workers: a called function must not
use `signal.alarm` itself (call math-verify with `timeout_seconds=None`).

Why not `multiprocessing`: its "fork" is unsafe in a multi-threaded (CUDA) training process,
and "spawn"/"forkserver" re-run the user's main script in every worker (a script without an
`if __name__ == "__main__"` guard breaks, one that imports torch pays for it per worker).
A worker here is a fresh interpreter running this file, in its own session (so a kill takes
its children too), handed the parent's sys.path, talking over two pipes.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import Counter, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

TIMEOUT = "timeout"
CRASH = "crash"
EXCEPTION = "exception"
ERRORS = (TIMEOUT, CRASH, EXCEPTION)

_MAX_DETAIL = 2000  # characters of an exception message kept in a Result


@dataclass(frozen=True)
class Result:
    """The outcome of one call.

    ok: the function returned; `value` is what it returned.
    error: None when ok, else "timeout" (deadline hit, worker interrupted or killed),
        "crash" (the worker process died) or "exception" (the function raised, or the call
        could not be sent / its result could not be sent back).
    detail: a human-readable explanation (exception text, exit code, which deadline).
    seconds: wall-clock time from dispatch to answer, as the parent saw it.
    """

    ok: bool
    value: Any = None
    error: str | None = None
    detail: str = ""
    seconds: float = 0.0


def default_size() -> int:
    """min(4, CPU count): verification is a side job next to generation, not the main load."""
    return max(1, min(4, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- worker side


class _SoftDeadline(BaseException):
    """Raised by the worker's SIGALRM handler. A BaseException so that libraries' broad
    `except Exception` (math-verify has several) do not swallow it."""


def _on_alarm(signum, frame):
    raise _SoftDeadline()


def _limit_memory(extra_mb: int) -> None:
    """Cap the address space at current size + extra_mb (relative, so that a worker whose
    interpreter already maps a lot is not starved from the start)."""
    import resource

    current = 0
    try:
        with open("/proc/self/status") as f:
            current = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        pass
    limit = current + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone, even in the middle of a long call (the pipe's EOF is
    only seen between calls)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def _run_one(fn: Callable, args: tuple, deadline_s: float) -> tuple[bool, Any, str | None, str]:
    """Run fn(*args) under the soft deadline; (ok, value, error, detail)."""
    try:
        signal.setitimer(signal.ITIMER_REAL, deadline_s)
        try:
            return True, fn(*args), None, ""
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _SoftDeadline:
        return False, None, TIMEOUT, f"interrupted at the soft deadline ({deadline_s:g} s)"
    except BaseException as exc:  # noqa: BLE001 - SystemExit / MemoryError from a check are results too
        return False, None, EXCEPTION, f"{type(exc).__name__}: {exc}"[:_MAX_DETAIL]


def _worker_loop(inbox: Connection, outbox: Connection, parent_pid: int) -> None:
    """Start up, say "ready", then answer calls until None arrives or the parent goes away.

    Protocol: parent -> worker: sys.path (list), then pickled (preload, initializer,
    max_memory_mb); then per call a header (tag, deadline_s) followed by pickled (fn, args),
    or None to stop. Worker -> parent: ("ready", pid) or ("init_error", traceback), then per
    call (tag, ok, value, error, detail).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        sys.path[:] = inbox.recv()
        preload, initializer, max_memory_mb = pickle.loads(inbox.recv_bytes())
        if max_memory_mb:
            _limit_memory(max_memory_mb)
        for module in preload:
            importlib.import_module(module)
        if initializer is not None:
            initializer()
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        outbox.send(("init_error", traceback.format_exc()))
        return
    signal.signal(signal.SIGALRM, _on_alarm)
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            header = inbox.recv()
            if header is None:
                return
            tag, deadline_s = header
            payload = inbox.recv_bytes()
        except (EOFError, OSError):  # the parent closed us or died: leave, do not linger
            return
        try:
            fn, args = pickle.loads(payload)
        except BaseException as exc:  # noqa: BLE001 - e.g. a function defined in __main__
            outbox.send((tag, False, None, EXCEPTION, f"could not load the call: {exc}"[:_MAX_DETAIL]))
            continue
        try:
            ok, value, error, detail = _run_one(fn, args, deadline_s)
        except _SoftDeadline:  # the alarm landed just after the call returned
            ok, value, error, detail = False, None, TIMEOUT, "interrupted at the soft deadline"
        try:
            outbox.send((tag, ok, value, error, detail))
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - an unpicklable return value
            outbox.send((tag, False, None, EXCEPTION, f"result could not be sent back: {exc}"[:_MAX_DETAIL]))


# ----------------------------------------------------------------------------- parent side


class _Worker:
    """Parent-side handle: the process, both pipe ends, and what it is doing."""

    def __init__(self, process: subprocess.Popen, outbox: Connection, inbox: Connection):
        self.process = process
        self.outbox = outbox  # parent -> worker
        self.inbox = inbox  # worker -> parent
        self.started_at = time.monotonic()
        self.ready = False
        self.tag: int | None = None  # index of the item it is running
        self.sent_at = 0.0
        self.kill_at = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid


def _stop(worker: _Worker) -> None:
    """Kill a worker's process group and reap it (no zombie). Workers hold no state worth a
    graceful goodbye, and skipping sympy's interpreter teardown makes close() instant."""
    if worker.process.poll() is None:
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)  # its own session: takes its children too
        except (ProcessLookupError, PermissionError):
            worker.process.kill()
    worker.process.wait(timeout=10.0)
    worker.outbox.close()
    worker.inbox.close()


def _shutdown(workers: list[_Worker]) -> None:
    while workers:
        _stop(workers.pop())


class VerifierPool:
    """Worker processes that run `fn(*args)` calls in parallel, each under a hard deadline.

    size: number of worker processes (default min(4, CPU count)).
    preload: modules every worker imports before it says ready (e.g. ["math_verify"]), so
        the import is not charged to the first call's deadline.
    initializer: an importable no-argument function each worker runs after the imports
        (e.g. to warm caches); if it raises, `map` raises RuntimeError with its traceback.
    kill_grace_s: how long after the soft deadline the parent waits before killing.
    max_memory_mb: extra address space a worker may allocate (RLIMIT_AS on top of its size
        at start); past it a call fails with MemoryError -> error "exception".
    startup_timeout_s: a worker not ready by then means a broken setup: `map` raises.

    Use as a context manager or call `close()`; both are idempotent. `map` calls from
    several threads are serialised.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        preload: Sequence[str] = (),
        initializer: Callable[[], None] | None = None,
        kill_grace_s: float = 0.5,
        max_memory_mb: int | None = None,
        startup_timeout_s: float = 120.0,
    ):
        self.size = default_size() if size is None else int(size)
        if self.size < 1:
            raise ValueError(f"VerifierPool size must be >= 1, got {size!r}")
        if kill_grace_s < 0:
            raise ValueError(f"VerifierPool kill_grace_s must be >= 0, got {kill_grace_s!r}")
        if max_memory_mb is not None and max_memory_mb <= 0:
            raise ValueError(f"VerifierPool max_memory_mb must be positive or None, got {max_memory_mb!r}")
        self.preload = tuple(preload)
        self.initializer = initializer
        self.kill_grace_s = float(kill_grace_s)
        self.max_memory_mb = max_memory_mb
        self.startup_timeout_s = float(startup_timeout_s)
        # Fail now, not in every worker, when the start-up settings cannot be sent.
        self._init_payload = pickle.dumps((self.preload, initializer, max_memory_mb))
        #: counts: calls, ok, timeout, crash, exception, kills, starts (for logs and tests)
        self.stats: Counter = Counter()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        # A pool dropped without close() still takes its workers with it.
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # -- public API -------------------------------------------------------------------

    def map(self, fn: Callable, items: Sequence[tuple], deadline_s: float) -> list[Result]:
        """Run fn(*item) for every item, in parallel over the workers; results in item order.

        fn must be importable by name in a fresh interpreter (a module-level function or a
        builtin, not a lambda or a function of a script's __main__); each item is a tuple of
        picklable arguments. deadline_s is per call, counted from the moment the call is
        handed to a ready worker.
        """
        if not callable(fn):
            raise TypeError(f"VerifierPool.map: fn must be callable, got {type(fn).__name__}")
        if not deadline_s or deadline_s <= 0:
            raise ValueError(f"VerifierPool.map: deadline_s must be > 0, got {deadline_s!r}")
        try:
            pickle.dumps(fn)
        except Exception as exc:  # a lambda or a closure: a programming error, not a failed call
            raise TypeError(f"VerifierPool.map: fn {fn!r} cannot be sent to a worker process ({exc}); "
                            "use a module-level function") from exc
        items = list(items)
        for i, item in enumerate(items):
            if not isinstance(item, tuple):
                raise TypeError(f"VerifierPool.map: item {i} must be a tuple of arguments, got {type(item).__name__}")
        with self._lock:
            if self._closed:
                raise RuntimeError("VerifierPool.map called after close()")
            if not items:
                return []
            try:
                return self._run(fn, items, float(deadline_s))
            except BaseException:
                # A broken start-up or a KeyboardInterrupt leaves workers mid-call on stale
                # items: stop them all; the next map starts fresh ones.
                _shutdown(self._workers)
                raise

    def call(self, fn: Callable, *args, deadline_s: float) -> Result:
        """One call: map(fn, [args], deadline_s)[0]."""
        return self.map(fn, [args], deadline_s)[0]

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (empty before the first map and after close)."""
        return [w.pid for w in self._workers]

    def close(self) -> None:
        """Stop every worker and reap it. Safe to call twice."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the dispatch loop ------------------------------------------------------------

    def _start_worker(self) -> None:
        to_child_r, to_child_w = os.pipe()
        to_parent_r, to_parent_w = os.pipe()
        # -P (3.11+): do not put this file's folder first on the worker's sys.path.
        flags = ["-P"] if sys.version_info >= (3, 11) else []
        command = [sys.executable, *flags, os.path.abspath(__file__),
                   str(to_child_r), str(to_parent_w), str(os.getpid())]
        try:
            process = subprocess.Popen(command, pass_fds=(to_child_r, to_parent_w), stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w):
                os.close(fd)
            raise
        # Drop our copies of the child's ends, so the pipe reports EOF the moment it dies.
        os.close(to_child_r)
        os.close(to_parent_w)
        worker = _Worker(process, Connection(to_child_w, readable=False), Connection(to_parent_r, writable=False))
        self._workers.append(worker)
        self.stats["starts"] += 1
        try:
            worker.outbox.send(list(sys.path))
            worker.outbox.send_bytes(self._init_payload)
        except OSError:
            pass  # it died at once; the dispatch loop sees the EOF and reports it

    def _discard(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        _stop(worker)

    def _finish(self, results: list, worker: _Worker, result: Result) -> None:
        results[worker.tag] = result
        self.stats["calls"] += 1
        self.stats["ok" if result.ok else result.error] += 1
        worker.tag = None

    def _run(self, fn: Callable, items: list[tuple], deadline_s: float) -> list[Result]:
        results: list[Result | None] = [None] * len(items)
        todo = deque(range(len(items)))

        while todo or any(w.tag is not None for w in self._workers):
            busy = sum(w.tag is not None for w in self._workers)
            while len(self._workers) < min(self.size, len(todo) + busy):
                self._start_worker()

            for worker in list(self._workers):
                if not (worker.ready and worker.tag is None and todo):
                    continue
                index = todo.popleft()
                try:
                    payload = pickle.dumps((fn, items[index]))
                except Exception as exc:  # noqa: BLE001 - unpicklable arguments
                    worker.tag = index
                    self._finish(results, worker, Result(False, None, EXCEPTION,
                                                         f"could not send the call: {exc}"[:_MAX_DETAIL]))
                    continue
                try:
                    worker.outbox.send((index, deadline_s))
                    worker.outbox.send_bytes(payload)
                except OSError:  # died while idle: retry the item on a fresh worker
                    todo.appendleft(index)
                    self._discard(worker)
                    continue
                worker.tag, worker.sent_at = index, time.monotonic()
                worker.kill_at = worker.sent_at + deadline_s + self.kill_grace_s

            # Sleep until a worker speaks, or the nearest hard deadline / start-up limit.
            waiting = [w for w in self._workers if w.tag is not None or not w.ready]
            if not waiting:
                continue
            limits = [w.kill_at if w.tag is not None else w.started_at + self.startup_timeout_s for w in waiting]
            timeout = max(0.0, min(limits) - time.monotonic())
            for conn in wait([w.inbox for w in waiting], timeout):
                self._receive(next(w for w in waiting if w.inbox is conn), results)

            now = time.monotonic()
            for worker in list(self._workers):
                if worker.tag is not None and now >= worker.kill_at:
                    logger.warning("verifier worker %d killed: call %d ran past its %g s deadline",
                                   worker.pid, worker.tag, deadline_s)
                    self._finish(results, worker, Result(False, None, TIMEOUT,
                                                         f"killed after {now - worker.sent_at:.2f} s "
                                                         f"(deadline {deadline_s:g} s)", now - worker.sent_at))
                    self.stats["kills"] += 1
                    self._discard(worker)
                elif not worker.ready and now - worker.started_at > self.startup_timeout_s:
                    raise RuntimeError(f"a verifier worker did not start within {self.startup_timeout_s:g} s "
                                       f"(preload={list(self.preload)})")
        return results  # type: ignore[return-value]  # every slot is filled by now

    def _receive(self, worker: _Worker, results: list) -> None:
        """Handle one message (or the death) of a worker that has something to say."""
        try:
            message = worker.inbox.recv()
        except (EOFError, OSError):
            code = worker.process.wait(timeout=10.0)
            if worker.tag is None:  # died while starting: a broken setup, say so loudly
                raise RuntimeError(f"a verifier worker died while starting (exit code {code})") from None
            logger.warning("verifier worker %d died (exit code %s) during call %d", worker.pid, code, worker.tag)
            self._finish(results, worker, Result(False, None, CRASH, f"worker process died (exit code {code})",
                                                 time.monotonic() - worker.sent_at))
            self._discard(worker)
            return
        except Exception as exc:  # noqa: BLE001 - a value this process cannot unpickle
            if worker.tag is None:
                raise
            detail = f"result could not be read: {exc}"[:_MAX_DETAIL]
            self._finish(results, worker, Result(False, None, EXCEPTION, detail,
                                                 time.monotonic() - worker.sent_at))
            return
        if message[0] == "ready":
            worker.ready = True
        elif message[0] == "init_error":
            raise RuntimeError(f"a verifier worker failed to start:\n{message[1]}")
        else:
            tag, ok, value, error, detail = message
            if tag != worker.tag:  # only a broken protocol gets here: fail loudly
                raise RuntimeError(f"verifier worker {worker.pid} answered call {tag}, expected {worker.tag}")
            self._finish(results, worker, Result(ok, value, error, detail, time.monotonic() - worker.sent_at))


if __name__ == "__main__":  # a worker process: python workers.py <inbox fd> <outbox fd> <parent pid>
    _worker_loop(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False),
                 int(sys.argv[3]))
