"""The in-sandbox half of the code sandbox: a trusted harness around one untrusted program.

The host (sandbox.py) starts a fresh interpreter as `python -S -B -c <this file's source>`
(inside bubblewrap or not) and writes one marshal payload to its stdin: a dict with the
program, the tests (as source, and usually as code the host compiled), the token, limits and
uid. This file must therefore stay self-contained: standard library only, no selfcorrect
imports, and few of those (each import is paid on every check).

Two processes, so that someone is left to clean up whatever the program does:
- the supervisor (this process) reads the payload, loads the trusted test code, becomes a
  child subreaper (orphaned descendants are re-parented to it, even after `setsid`), forks
  and waits for the child until the deadline, then SIGKILLs every remaining descendant and
  writes an exit line. When the host runs as root it keeps its privileges (the program
  cannot signal or trace it); the child drops to the sandbox uid.
- the child drops privileges, sets rlimits, runs the program, then the tests, and prints the
  pass token only after the last test.

Protocol on stdout (stderr is the same pipe), one line each, prefix `@@selfcorrect:<token>:`
(the host drops the token; a line without it is the program's output):
  start            written before any untrusted code runs (its absence = sandbox failure)
  error:<json>     the harness could not set the child up (a sandbox failure, not the program's)
  fail:<json>      the program or a test failed: {"kind", "message", "line", "source"}
  pass:<token>     every test passed (the token arrived on stdin and is printed nowhere else)
  exit:<json>      the supervisor's last word: {"code", "signal", "timeout", "stragglers"}

Soundness of the tests against the program they test (see docs/SANDBOX.md for the limits):
- the tests run in their own namespace with a copy of the builtins taken before the program
  ran, plus only the names the task exports from the program (the entry point);
- every `assert` is rewritten so that the values it compares or tests are first checked to
  be plain data (builtin scalars and containers, recursively, or objects whose comparison
  dunders all come from C types): an object whose `__eq__` always returns True fails;
- stdlib modules the tests import are snapshotted before the program runs and restored
  before the tests run, and any trace/profile hook the program set is removed.
A program that inspects the harness's own frames or memory (sys._getframe, gc) can still
defeat this; the sandbox keeps such a program contained, it does not make its verdict sound.
"""

# Imports are paid on every check (~1-6 ms each on a loaded machine): `_signal`, not
# `signal` (which imports enum); ctypes only in the rlimit tier; ast only without host code.
import _signal as signal
import builtins
import collections
import marshal
import os
import select
import sys
import time

SimpleNamespace = type(sys.implementation)
MappingProxyType = type(type.__dict__)

PREFIX = b"@@selfcorrect:"
_CHECK = "_selfcorrect_checked_"  # the assert guard's name in the test namespace
_MAX_MESSAGE = 600
_MAX_NODES = 5_000_000  # values bigger than this are not worth proving honest

# Captured before any untrusted code runs: the program may rebind os.write, os._exit, print.
_write = os.write
_exit = os._exit
_monotonic = time.monotonic
_getpid = os.getpid
_settrace = sys.settrace
_setprofile = sys.setprofile

# Set once the payload is read: every protocol line carries the run's token, so a line the
# program prints (or a daemon it left behind writes after the supervisor's last word) cannot
# pass for the harness's own (e.g. a forged `error`, which would score None instead of 0).
_TAG = b""
# The pid of the child that runs the program: a fork of it (os.fork in the program or in
# the function under test) must neither run the tests nor report for it.
_CHILD_PID = 0

# Comparison and truth dunders: a class that defines one of these in Python can lie in an assert.
_DANGEROUS = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__",
              "__len__", "__contains__", "__iter__", "__getitem__", "__missing__")
# Stdlib classes written in Python that programs legitimately return (MBPP tasks 40, 88 and
# 902 return Counters): trusted while their dunders are still the ones seen at start-up.
_TRUSTED_CLASSES = {klass: {name: klass.__dict__[name] for name in _DANGEROUS
                            if name in klass.__dict__}
                    for klass in (collections.Counter,)}
# Always restored before the tests: builtins (the guard and Counter.__eq__ use them) and
# collections (Counter.__eq__'s globals).
_ALWAYS_RESTORED = ("builtins", "collections")
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set for classes defined in Python code
_ATOMIC = (int, float, complex, bool, str, bytes, bytearray, type(None), range,
           type(Ellipsis), type(NotImplemented))


def _emit(kind, body=b""):
    """Write one protocol line straight to fd 1 (no Python-level buffering to lose)."""
    if isinstance(body, str):
        body = body.encode("utf-8", "replace")
    line = b"\n" + PREFIX + _TAG + kind.encode() + (b":" + body if body else b"") + b"\n"
    while line:
        try:
            line = line[_write(1, line):]
        except InterruptedError:
            continue
        except OSError:
            return


def _json(flat):
    """JSON for a flat dict of str / int / bool / None (the json module costs ~6 ms to import)."""
    def value(v):
        if v is None or isinstance(v, bool):
            return {None: "null", True: "true", False: "false"}[v]
        if isinstance(v, int):
            return str(v)
        text = str(v)
        return '"' + "".join(c if c >= " " and c not in '"\\' else "\\u%04x" % ord(c)
                             for c in text) + '"'
    return "{" + ", ".join(f"{value(str(k))}: {value(v)}" for k, v in flat.items()) + "}"


def _clip(text, limit=_MAX_MESSAGE):
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- honest values

def _dishonest_reason(value):
    """None when `value` is plain data whose comparisons run only C code, else why not."""
    stack, seen, nodes = [value], set(), 0
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _ATOMIC:
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        nodes += 1
        if nodes > _MAX_NODES:
            return "value too large to check"
        for klass in kind.__mro__:
            if klass.__flags__ & _HEAPTYPE:
                hit = [name for name in _DANGEROUS if name in klass.__dict__]
                # identity, not dict lookup: a metaclass could fake __eq__/__hash__
                trusted = next((t for k, t in _TRUSTED_CLASSES.items() if k is klass), None)
                if hit and trusted is not None and all(
                        klass.__dict__.get(name) is trusted.get(name) for name in _DANGEROUS):
                    continue
                if hit:
                    return f"{kind.__module__}.{kind.__qualname__} defines {hit[0]} in Python"
        # Containers whose C comparison calls their elements' comparisons: check those too,
        # iterating with the C methods (a subclass may override the Python-visible ones).
        # issubclass on type(item), not isinstance: isinstance trusts a forged __class__.
        if issubclass(kind, dict):
            for key, val in dict.items(item):
                stack.append(key)
                stack.append(val)
        elif issubclass(kind, list):
            stack.extend(list.__iter__(item))
        elif issubclass(kind, tuple):
            stack.extend(tuple.__iter__(item))
        elif issubclass(kind, set):
            stack.extend(set.__iter__(item))
        elif issubclass(kind, frozenset):
            stack.extend(frozenset.__iter__(item))
        elif issubclass(kind, collections.deque):
            stack.extend(collections.deque.__iter__(item))
        elif issubclass(kind, SimpleNamespace):
            stack.append(object.__getattribute__(item, "__dict__"))
        elif issubclass(kind, slice):
            stack.extend((item.start, item.stop, item.step))
        elif issubclass(kind, MappingProxyType):
            return "mappingproxy values are not checked"
    return None


def _checked(*values):
    """The assert guard: refuse values whose comparison could run the program's own code."""
    for value in values:
        reason = _dishonest_reason(value)
        if reason is not None:
            raise AssertionError(f"untrusted value in assertion: {reason}")
    return values


def _guard(expr):
    """The guarded form of an assert's test expression (see compile_tests)."""
    import ast

    def call_guard(operands):
        return ast.Call(func=ast.Name(id=_CHECK, ctx=ast.Load()), args=operands, keywords=[])

    if isinstance(expr, ast.BoolOp):
        expr.values = [_guard(value) for value in expr.values]
        return expr
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.Not):
        expr.operand = _guard(expr.operand)
        return expr
    if isinstance(expr, ast.Compare):
        operands = [expr.left, *expr.comparators]
        pick = [ast.Subscript(value=ast.Name(id="v", ctx=ast.Load()), slice=ast.Constant(value=i),
                              ctx=ast.Load()) for i in range(len(operands))]
        compare = ast.Compare(left=pick[0], ops=expr.ops, comparators=pick[1:])
        lam = ast.Lambda(args=ast.arguments(posonlyargs=[], args=[ast.arg(arg="v")], vararg=None,
                                            kwonlyargs=[], kw_defaults=[], kwarg=None,
                                            defaults=[]),
                         body=compare)
        return ast.copy_location(ast.Call(func=lam, args=[call_guard(operands)], keywords=[]),
                                 expr)
    guarded = ast.Subscript(value=call_guard([expr]), slice=ast.Constant(value=0), ctx=ast.Load())
    return ast.copy_location(guarded, expr)


def compile_tests(source, filename="<tests>"):
    """Compile trusted test code with every `assert` guarded.

    `assert a == b` becomes `assert (lambda v: v[0] == v[1])(guard(a, b))`: all operands are
    evaluated first (so a later operand cannot slip a liar into an already-checked one),
    checked by `_checked`, then compared with the original operators. `not`, `and`, `or` keep
    their short-circuit and guard each operand; any other expression is guarded as a whole.
    The host usually does this (and ships the code object), so the sandbox skips `import ast`."""
    import ast
    import warnings

    with warnings.catch_warnings():  # "invalid escape sequence" in old test code is noise
        warnings.simplefilter("ignore")
        tree = ast.parse(source, filename)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert):
                node.test = _guard(node.test)
        ast.fix_missing_locations(tree)
        return compile(tree, filename, "exec")


def imported_modules(*sources):
    """Top-level module names that trusted code imports (to snapshot before the program runs)."""
    import ast
    import warnings

    names = set()
    for source in sources:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
    return sorted(names)


def _snapshot_modules(names):
    """(name, module, copy of its dict) for each importable module name."""
    snapshots = []
    for name in names:
        try:
            __import__(name)
        except BaseException:  # a test import that fails will fail the test itself
            continue
        module = sys.modules[name]
        snapshots.append((name, module, dict(module.__dict__)))
    return snapshots


def _restore_modules(snapshots):
    for name, module, saved in snapshots:
        sys.modules[name] = module
        current = module.__dict__
        for key in [key for key in current if key not in saved]:
            del current[key]
        current.update(saved)


# ----------------------------------------------------------------------------- the child

def _leave_if_fork(status):
    """In a fork of the child (made by the program), end here with `status`: only the child
    itself runs the tests and reports."""
    if _getpid() != _CHILD_PID:
        _flush_program_output()
        _exit(status)


def _failure(kind, message, exc=None, sources=None):
    """Report why the program failed (the innermost trusted line first) and exit nonzero."""
    _leave_if_fork(1)  # a fork of the program: the child's own verdict is the one that counts
    info = {"kind": kind, "message": _clip(message)}
    if exc is not None and sources:
        frames, tb = [], exc.__traceback__
        while tb is not None:
            frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
            tb = tb.tb_next
        for filename in ("<tests>", "<solution>"):
            lines = [lineno for name, lineno in frames if name == filename]
            if lines and filename in sources:
                text = sources[filename].splitlines()
                line = lines[-1]
                key = "line" if filename == "<tests>" else "solution_line"
                info[key] = line
                if 0 < line <= len(text):
                    info[key.replace("line", "source")] = _clip(text[line - 1].strip(), 300)
    _flush_program_output()
    _emit("fail", _json(info))
    _exit(1)


def _flush_program_output():
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass


def _describe(exc):
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:  # a hostile __str__
        return type(exc).__name__


def _prctl(*settings):
    """prctl(option, value) for each (option, value); bwrap does these itself."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return
    if hasattr(libc, "prctl"):
        for option, value in settings:
            libc.prctl(option, value, 0, 0, 0)


def _setup_child(payload):
    """Drop privileges (host ran as root), forbid new privileges, apply rlimits."""
    import resource

    drop = payload.get("drop")
    if drop:
        uid, gid = drop
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise RuntimeError(f"could not drop to uid {uid}")
    if payload["tier"] == "rlimit":  # bwrap already set both (and its namespaces die with it)
        _prctl((38, 1),  # PR_SET_NO_NEW_PRIVS: setuid binaries cannot raise privileges again
               (1, signal.SIGKILL))  # PR_SET_PDEATHSIG (cleared by setuid, so set after it)
    limits = payload["limits"]
    for name, value in (("RLIMIT_AS", limits["address_space"]),
                        ("RLIMIT_CPU", limits["cpu_s"]),
                        ("RLIMIT_NPROC", limits["processes"]),
                        ("RLIMIT_FSIZE", limits["file_size"]),
                        ("RLIMIT_NOFILE", limits["open_files"]),
                        ("RLIMIT_CORE", 0)):
        if value is None or not hasattr(resource, name):
            continue
        hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU first, SIGKILL after
        resource.setrlimit(getattr(resource, name), (value, hard))


def _open_import_dirs():
    """Open every import folder (sys.path and the loaded packages' __path__) while still root.

    In the rlimit tier as root the program runs as uid 65534, which may be unable to reach the
    standard library (a pyenv under root's 0700 home). The descriptors survive the fork and the
    uid change, and `/proc/self/fd/<fd>` reaches the folder without searching the folders above
    it, so the dropped program imports any stdlib module; it still reads nothing it could not
    read before (only these folders, whose files are world-readable, and no way up through
    /root). Non-inheritable: a program's subprocesses do not get them."""
    folders = {}
    paths = list(sys.path)
    for module in list(sys.modules.values()):
        path = getattr(module, "__path__", None)
        if isinstance(path, list):
            paths += [entry for entry in path if isinstance(entry, str)]
    for folder in paths:
        if folder and folder not in folders and os.path.isdir(folder):
            try:
                folders[folder] = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
    return folders


def _use_import_dirs(folders):
    """Point sys.path and the loaded packages' __path__ at the descriptors' /proc links."""
    if not folders:
        return

    def moved(entry):
        fd = folders.get(entry)
        return entry if fd is None else f"/proc/self/fd/{fd}"

    sys.path[:] = [moved(entry) for entry in sys.path]
    for module in list(sys.modules.values()):
        path = getattr(module, "__path__", None)
        if isinstance(path, list):
            path[:] = [moved(entry) if isinstance(entry, str) else entry for entry in path]
    sys.path_importer_cache.clear()


def _run_child(payload, tests_code, prelude_code, snapshots, pristine_builtins, import_dirs):
    global _CHILD_PID
    _CHILD_PID = _getpid()
    try:
        _setup_child(payload)
        _use_import_dirs(import_dirs)
    except BaseException as exc:
        _emit("error", _json({"message": _clip(_describe(exc))}))
        _exit(3)

    sources = {"<solution>": payload["code"], "<tests>": payload["tests"]}
    # A registered module, so that pickle finds the program's functions (multiprocessing)
    module = type(sys)("solution")
    module.__builtins__ = builtins
    sys.modules["solution"] = module
    solution = module.__dict__
    try:
        exec(compile(payload["code"], "<solution>", "exec"), solution)
    except SystemExit as exc:
        _failure("exit", f"the program called sys.exit({exc.code!r}) before the tests ran")
    except BaseException as exc:
        _failure("solution_error", _describe(exc), exc, sources)
    _leave_if_fork(0)  # a fork made at the program's top level has run it to the end

    # From here on the program only runs when the tests call into it. The saved functions:
    # the program may have replaced sys.settrace to keep its hook.
    _settrace(None)
    _setprofile(None)
    _restore_modules(snapshots)
    namespace = {"__name__": "tests", "__builtins__": dict(pristine_builtins), _CHECK: _checked}
    try:
        exec(prelude_code, namespace)
    except BaseException as exc:
        _failure("prelude_error", "the task's trusted prelude failed: " + _describe(exc))
    for name in payload["exports"]:
        if name not in solution:
            _failure("missing_name", f"the program does not define {name!r}")
        namespace[name] = solution[name]
    try:
        exec(tests_code, namespace)
    except AssertionError as exc:
        message = _describe(exc) if exc.args else "AssertionError"
        _failure("assertion", message, exc, sources)
    except SystemExit as exc:
        _failure("exit", f"the program called sys.exit({exc.code!r}) during the tests", exc,
                 sources)
    except BaseException as exc:
        _failure("test_error", _describe(exc), exc, sources)
    _flush_program_output()
    _leave_if_fork(0)  # a fork made inside the function under test: never the child's pass
    _emit("pass", payload["token"])
    _exit(0)


# ----------------------------------------------------------------------------- the supervisor

def _children_of(pid):
    """Pids of `pid`'s children, from /proc/<pid>/task/*/children (CONFIG_PROC_CHILDREN)."""
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                kids += [int(kid) for kid in handle.read().split()]
        except OSError:
            continue
    return kids


def _scan_parents():
    """pid -> ppid for every visible process (the fallback without the children files)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if len(fields) > 1:
                parents[int(entry)] = int(fields[1])
    return parents


def _descendants():
    """Every process below this one (orphans of the program were re-parented here)."""
    me = os.getpid()
    if os.path.exists(f"/proc/{me}/task/{me}/children"):
        found, frontier = [], [me]
        while frontier:
            kids = _children_of(frontier.pop())
            found += kids
            frontier += kids
        return found
    parents = _scan_parents()
    found, frontier = [], [me]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _signal_all(pids, sig):
    me = os.getpid()
    for pid in pids:
        if pid <= 1 or pid == me:  # only ever individual processes below us
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _kill_descendants():
    """Freeze the whole tree (SIGSTOP: a stopped fork bomb stops forking), SIGKILL it, reap.
    Repeats until nothing is left below us; returns how many processes were killed."""
    killed = set()
    for _ in range(100):
        tree = set(_descendants())
        if not tree:
            break
        for _ in range(100):  # stop until a scan finds nothing new (forks racing the stop)
            _signal_all(tree, signal.SIGSTOP)
            grown = tree | set(_descendants())
            if grown == tree:
                break
            tree = grown
        _signal_all(tree, signal.SIGKILL)
        killed |= tree
        pause, give_up = 0.001, _monotonic() + 2.0
        while True:  # reap our (re-parented) children; give the killed ones a moment to die
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                if not set(_descendants()) & tree or _monotonic() > give_up:
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
    return len(killed)


def _wait_child(pid, deadline):
    """The child's wait status, or None when the deadline passed first."""
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    pause = 0.002
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            remaining = deadline - _monotonic()
            if remaining <= 0:
                return None
            if pidfd is not None:
                select.select([pidfd], [], [], remaining)
            else:
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.05)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _read_payload():
    chunks = []
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    null = os.open(os.devnull, os.O_RDONLY)  # the program gets no stdin
    os.dup2(null, 0)
    os.close(null)
    return marshal.loads(b"".join(chunks))


def main():
    global _TAG
    payload = _read_payload()
    _TAG = payload["token"].encode() + b":"
    _emit("start")
    if payload["tier"] == "rlimit":
        _prctl((36, 1),  # PR_SET_CHILD_SUBREAPER: orphans of the program come back to us
               (1, signal.SIGKILL))  # PR_SET_PDEATHSIG: die with the host's worker
    pristine_builtins = dict(builtins.__dict__)
    try:
        if payload.get("compiled"):  # compiled by the host (same interpreter version)
            tests_code, prelude_code = marshal.loads(payload["compiled"])
            imported = payload["modules"]
        else:
            tests_code = compile_tests(payload["tests"], "<tests>")
            prelude_code = compile(payload["prelude"], "<prelude>", "exec")
            imported = imported_modules(payload["tests"], payload["prelude"])
    except (SyntaxError, ValueError, EOFError, TypeError) as exc:
        _emit("error", _json({"message": _clip(f"trusted test code does not load: {exc}")}))
        _exit(3)
    snapshots = _snapshot_modules(sorted({*_ALWAYS_RESTORED, *imported}))
    import_dirs = _open_import_dirs() if payload.get("reopen_imports") else {}
    _flush_program_output()

    pid = os.fork()
    if pid == 0:
        _run_child(payload, tests_code, prelude_code, snapshots, pristine_builtins,
                   import_dirs)
        _exit(4)  # not reached
    status = _wait_child(pid, payload["deadline"])
    timed_out = status is None
    if timed_out:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
    # Never signal pid -1: were this harness ever run outside its PID namespace, that would signal
    # every process of the host. Walk our own tree instead (in bwrap, orphans that escaped it
    # die with the namespace when we exit).
    stragglers = _kill_descendants()
    report = {"timeout": timed_out, "stragglers": stragglers,
              "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
              "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}
    _emit("exit", _json(report))
    _exit(0)


if __name__ == "__main__":
    main()
