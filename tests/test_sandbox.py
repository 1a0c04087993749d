"""The code sandbox: the harness's guards (pure functions), the bwrap command line, the
protocol parser, and end-to-end runs under every tier that works on this host."""

import collections
import glob
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from selfcorrect.verify import sandbox_harness as harness
from selfcorrect.verify.sandbox import (ERROR, FAILED, PASSED, TIERS, TIMEOUT, Program, Sandbox,
                                        SandboxConfig, SandboxUnavailable, _interpret,
                                        run_programs, sandbox_tier)
from selfcorrect.verify.sandbox_bwrap import bwrap_argv

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


# ----------------------------------------------------------------------------- honest values
class Liar:
    def __eq__(self, other):
        return True

    __hash__ = object.__hash__


class LyingInt(int):
    def __eq__(self, other):
        return True

    __hash__ = int.__hash__


class LyingDict(dict):
    def __getitem__(self, key):
        return 0


Point = collections.namedtuple("Point", "x y")


class Plain:
    pass


@pytest.mark.parametrize("value", [
    1, 2.5, "s", b"b", None, True, 3j, range(3), [1, [2, (3, {4: "x"})]], {1, 2},
    frozenset({1}), Point(1, 2), collections.OrderedDict(a=1), collections.defaultdict(int),
    collections.deque([1, 2]), collections.Counter("aab"), Plain(), int, len,
])
def test_plain_data_is_honest(value):
    assert harness._dishonest_reason(value) is None


@pytest.mark.parametrize("value", [
    Liar(), LyingInt(3), [1, [2, Liar()]], {"k": Liar()}, {Liar(): 1}, (Liar(),),
    LyingDict(a=1), Point(1, Liar()), collections.deque([Liar()]), collections.Counter(a=Liar()),
])
def test_values_that_can_lie_are_refused(value):
    reason = harness._dishonest_reason(value)
    assert reason is not None and "defines" in reason


def test_a_patched_counter_is_no_longer_trusted(monkeypatch):
    assert harness._dishonest_reason(collections.Counter("ab")) is None
    monkeypatch.setattr(collections.Counter, "__eq__", lambda self, other: True)
    assert "Counter defines __eq__" in harness._dishonest_reason(collections.Counter("ab"))


def test_a_forged_class_attribute_does_not_fool_the_check():
    class Forged:
        __class__ = list  # isinstance(Forged(), list) is True; type() is not fooled

        def __eq__(self, other):
            return True

    assert isinstance(Forged(), list)
    assert harness._dishonest_reason(Forged()) is not None


def test_self_referencing_values_terminate():
    loop = [1]
    loop.append(loop)
    assert harness._dishonest_reason(loop) is None


def _run_tests(source, **names):
    namespace = {harness._CHECK: harness._checked, **names}
    exec(harness.compile_tests(source), namespace)


def test_guarded_asserts_keep_python_semantics():
    _run_tests("assert 1 < 2 < 3\nassert not 0\nassert 1 and 'x'\nassert 0 or [1]\n"
               "assert 2 in [1, 2]\nassert (1, 2) == (1, 2) != (2, 1)\n"
               "def check(f):\n    for i in range(3):\n        assert f(i) == i + 1\n"
               "check(lambda x: x + 1)\n")
    for bad in ("assert 1 > 2", "assert 1 < 2 > 3", "assert not 1", "assert 0 and 1", "assert []",
                "assert 3 in [1, 2]"):
        with pytest.raises(AssertionError):
            _run_tests(bad)


@pytest.mark.parametrize("test", ["assert f() == 2", "assert f() != 3", "assert f()",
                                  "assert not f()", "assert abs(f() - 2) < 1e-9",
                                  "assert 1 < f() < 3", "assert f() in [2]"])
def test_guarded_asserts_refuse_an_object_that_says_yes_to_everything(test):
    class Yes:
        def __eq__(self, o): return True
        def __ne__(self, o): return False
        def __lt__(self, o): return True
        def __gt__(self, o): return True
        def __bool__(self): return True
        def __sub__(self, o): return self
        def __abs__(self): return self
        def __contains__(self, o): return True
        __hash__ = object.__hash__

    with pytest.raises(AssertionError, match="untrusted value"):
        _run_tests(test, f=Yes)


def test_guard_evaluates_every_operand_before_checking():
    # A later operand may not slip a liar into an earlier, already evaluated one.
    shared = [1]

    def later():
        shared.append(Liar())
        return [1, 2]

    with pytest.raises(AssertionError, match="untrusted value"):
        _run_tests("assert a == b()", a=shared, b=later)


# ----------------------------------------------------------------------------- bwrap argv
def test_bwrap_argv_hides_homes_and_reexposes_the_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/root")
    data = tmp_path / "answers.jsonl"
    data.write_text("{}")
    argv = bwrap_argv("bwrap", ["python", "-c", "x"], workdir=str(tmp_path),
                      keep_visible=["/root/.pyenv/versions/3.11.7"], hidden=[str(data)],
                      as_root=True)
    joined = " ".join(argv)
    assert argv[:4] == ["bwrap", "--ro-bind", "/", "/"]
    assert "--tmpfs /root" in joined and "--perms 1777 --tmpfs /tmp" in joined
    assert "--perms 0755 --dir /root/.pyenv --perms 0755 --dir /root/.pyenv/versions" in joined
    assert "--ro-bind /root/.pyenv/versions/3.11.7 /root/.pyenv/versions/3.11.7" in joined
    assert f"--ro-bind /dev/null {os.path.realpath(data)}" in joined
    assert "--unshare-net" in argv and "--unshare-pid" in argv and "--die-with-parent" in argv
    assert "--cap-drop ALL" in joined and "--unshare-user" not in argv
    # The working folder is bound after the /tmp tmpfs (or the tmpfs would hide it).
    assert argv.index(os.path.realpath(tmp_path)) > argv.index("/tmp")
    assert argv[-4:] == ["--", "python", "-c", "x"]
    user = bwrap_argv("bwrap", ["python"], workdir=str(tmp_path), keep_visible=[], hidden=[],
                      as_root=False)
    assert "--unshare-user" in user and "--disable-userns" in user and "--cap-add" not in user


# ----------------------------------------------------------------------------- protocol
CFG = SandboxConfig(timeout_s=5)


def _lines(*lines):
    return ("\n".join(lines) + "\n").encode()


def test_only_the_runs_token_passes():
    start = "@@selfcorrect:start"
    ok = _interpret(_lines(start, "@@selfcorrect:pass:abc"), "abc", "bwrap", CFG, False, False, 0, 0.1)
    assert ok.status == PASSED
    forged = _interpret(_lines(start, "@@selfcorrect:pass:abd", "@@selfcorrect:pass:"), "abc",
                        "bwrap", CFG, False, False, 0, 0.1)
    assert forged.status == FAILED
    late = _interpret(_lines("hello", start, "@@selfcorrect:pass:abc"), "abc", "rlimit", CFG,
                      True, False, 0, 0.1)
    assert late.status == FAILED and "output exceeded" in late.detail


@pytest.mark.parametrize("lines,backstop,status,words", [
    (["bwrap: Can't mount proc"], False, ERROR, "failed to start"),
    (["@@selfcorrect:start", '@@selfcorrect:error:{"message": "setuid"}'], False, ERROR, "setuid"),
    (["@@selfcorrect:start", '@@selfcorrect:exit:{"timeout": true}'], False, TIMEOUT, "wall-clock"),
    (["@@selfcorrect:start"], True, TIMEOUT, "wall-clock"),
    (["@@selfcorrect:start", f'@@selfcorrect:exit:{{"signal": {int(signal.SIGXCPU)}}}'], False,
     TIMEOUT, "CPU"),
    (["@@selfcorrect:start", '@@selfcorrect:exit:{"code": 0, "signal": null}'], False, FAILED,
     "exit code 0"),
    (["@@selfcorrect:start", '@@selfcorrect:fail:{"kind": "assertion", "message": "AssertionError",'
      ' "line": 2, "source": "assert f(1) == 2"}'], False, FAILED, "test line 2: assert f(1) == 2"),
])
def test_protocol_outcomes(lines, backstop, status, words):
    result = _interpret(_lines(*lines), "tok", "rlimit", CFG, False, backstop, 1, 0.1)
    assert result.status == status and words in result.detail
    assert "@@selfcorrect" not in result.output


# ----------------------------------------------------------------------------- end to end
def _tiers():
    """Every tier that works here (bwrap may not in some containers)."""
    usable = []
    for tier in TIERS:
        try:
            Sandbox(tier=tier, timeout_s=10).tier
            usable.append(tier)
        except SandboxUnavailable:
            pass
    return usable


USABLE = _tiers()


@pytest.fixture(scope="module", params=list(TIERS))
def box(request):
    if request.param not in USABLE:
        pytest.skip(f"the {request.param} tier does not work on this host")
    sandbox = Sandbox(tier=request.param, timeout_s=10, workers=3)
    yield sandbox
    sandbox.close()


def test_programs_pass_and_fail_for_the_right_reasons(box):
    programs = [
        Program("def f(x):\n    return x + 1\n", "assert f(1) == 2\n", exports=("f",)),
        Program("def f(x):\n    return x\n", "assert f(0) == 1\nassert f(1) == 2\n", exports=("f",)),
        Program("def f(x):\n    return [][x]\n", "assert f(1) == 2\n", exports=("f",)),
        Program("def f(x) return x\n", "assert f(1) == 2\n", exports=("f",)),
        Program("def g(x):\n    return x\n", "assert f(1) == 2\n", exports=("f",)),
        Program("print('from the program')\nx = 1\n"),
        Program("raise ValueError('boom')\n"),
        Program("x = input()\n"),
    ]
    results = box.run(programs)
    assert [r.status for r in results] == [PASSED] + [FAILED] * 4 + [PASSED] + [FAILED] * 2
    assert all(r.tier == box.tier for r in results)
    assert "test line 1: assert f(0) == 1" in results[1].detail
    assert "IndexError" in results[2].detail and "assert f(1) == 2" in results[2].detail
    assert "SyntaxError" in results[3].detail
    assert "does not define 'f'" in results[4].detail
    assert results[5].output == "from the program"
    assert "ValueError: boom" in results[6].detail
    assert "EOFError" in results[7].detail  # stdin is closed


def test_tests_see_pristine_builtins_and_only_the_exports(box):
    shadow = "def abs(x):\n    return 0\nlen = lambda x: 3\ndef f(x):\n    return x\n"
    results = box.run([
        Program(shadow, "assert abs(f(-2)) == 2\nassert len([1]) == 1\n", exports=("f",)),
        Program("import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return -5\n",
                "assert abs(f(1)) == 0\n", exports=("f",)),
        Program("import math\nmath.isclose = lambda *a, **k: True\ndef f():\n    return 1.0\n",
                "import math\nassert math.isclose(f(), 2.0)\n", exports=("f",)),
        Program("def f():\n    return 1\nsecret = 42\n", "assert secret == 42\n", exports=("f",)),
        Program("def f():\n    return helper(2)\n", "assert f() == 4\n",
                prelude="def helper(x):\n    return x * x\n", exports=("f",)),
    ])
    assert [r.status for r in results] == [PASSED, FAILED, FAILED, FAILED, FAILED]
    assert "NameError" in results[3].detail  # `secret` was not exported
    assert "NameError" in results[4].detail  # the prelude feeds the tests, not the program


def test_results_keep_input_order_and_the_folder_is_removed(box):
    before = set(glob.glob("/tmp/selfcorrect-sbx-*"))
    programs = [Program(f"import os\nx = {i}\nopen('f.txt', 'w').write('x')\n",
                        f"assert x == {i}\n", exports=("x",)) for i in range(6)]
    programs[3] = Program("x = -1\n", "assert x == 3\n", exports=("x",))
    results = box.run(programs)
    assert [r.passed for r in results] == [True, True, True, False, True, True]
    assert set(glob.glob("/tmp/selfcorrect-sbx-*")) <= before


def test_hash_seed_makes_set_order_reproducible(box):
    code = "order = list({'apple', 'pear', 'fig', 'kiwi', 'plum'})\nprint(order)\n"
    outputs = {r.output for r in box.run([Program(code)] * 3)}
    assert len(outputs) == 1


def test_the_program_runs_in_a_scrubbed_environment(box, monkeypatch):
    monkeypatch.setenv("SELFCORRECT_TEST_SECRET", "hunter2")
    code = "import os\nenv = dict(os.environ)\nprint(sorted(env))\n"
    result = box.run([Program(code)])[0]
    names = json.loads(result.output.replace("'", '"'))
    assert "PATH" in names and "HOME" in names and not any("SECRET" in n for n in names)
    assert set(names) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONHASHSEED",
                          "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "LC_CTYPE", "PWD"}


def test_run_programs_and_sandbox_tier():
    tier = sandbox_tier()
    assert tier in TIERS
    results = run_programs(["x = 1\n", "x = 1 / 0\n"], timeout_s=10)
    assert [r.status for r in results] == [PASSED, FAILED]
    assert {r.tier for r in results} == {tier}


def test_require_strong_without_bwrap_raises_and_auto_falls_back(tmp_path):
    missing = str(tmp_path / "no-bwrap")
    with pytest.raises(SandboxUnavailable, match="bwrap"):
        Sandbox(require_strong=True, bwrap_path=missing).tier
    fallback = Sandbox(bwrap_path=missing)
    if "rlimit" in USABLE:
        assert fallback.tier == "rlimit" and "bwrap unavailable" in fallback.tier_note
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="Permission denied"):
        Sandbox(tier="bwrap", bwrap_path=str(fake)).tier


@pytest.mark.parametrize("field,value", [("timeout_s", 0), ("memory_mb", -1), ("tier", "docker"),
                                         ("workers", -2), ("max_output_bytes", 0)])
def test_bad_config_is_refused_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})
    with pytest.raises(ValueError, match="contradicts"):
        SandboxConfig(tier="rlimit", require_strong=True)


def test_the_supervisor_only_ever_signals_single_processes_below_it(monkeypatch):
    # kill(-1) / kill(0) / kill(1) from a root supervisor outside a PID namespace would hit
    # the whole host: the harness must filter them out whatever /proc says.
    sent = []
    monkeypatch.setattr(harness.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    harness._signal_all([-1, 0, 1, os.getpid(), 999999], signal.SIGKILL)
    assert sent == [(999999, signal.SIGKILL)]
    source = (Path(harness.__file__)).read_text()
    assert "kill(-" not in source and "killpg" not in source
