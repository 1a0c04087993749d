"""Code-task verification: verdicts that the program's own output, forks or hooks
could bend, and HumanEval programs assembled so that a correct answer did not run."""

import sys

import pytest

from selfcorrect.tasks.code import _compiles, build, humaneval_program
from selfcorrect.verify.sandbox import (FAILED, PASSED, TIERS, Program, Sandbox,
                                        SandboxUnavailable)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _usable(tier):
    try:
        Sandbox(tier=tier, timeout_s=10).tier
        return True
    except SandboxUnavailable:
        return False


@pytest.fixture(scope="module", params=list(TIERS))
def box(request):
    if not _usable(request.param):
        pytest.skip(f"the {request.param} tier does not work on this host")
    sandbox = Sandbox(tier=request.param, timeout_s=8, workers=2)
    yield sandbox
    sandbox.close()


WRONG = "def f(x):\n    return 0\n"
TESTS = "assert f(1) == 2\n"


# ----------------------------------------------------------------------------- protocol forgery
def test_program_output_cannot_forge_a_sandbox_error(box):
    # A sandbox error scores None (excluded from training): a wrong program must not be able
    # to claim one by printing the harness's line.
    forged = ('print(\'\\n@@selfcorrect:error:{"message": "not my fault"}\')\n'
              'import sys\nsys.stderr.write(\'@@selfcorrect:error:{"message": "x"}\\n\')\n')
    result = box.run([Program(forged + WRONG, TESTS, exports=("f",))])[0]
    assert result.status == FAILED, result
    assert "assert f(1) == 2" in result.detail
    assert "not my fault" in result.output  # it is the program's output, kept as such


def test_a_daemon_cannot_forge_the_supervisors_last_word(box):
    # In the bwrap tier a double-forked daemon escapes the supervisor's kill until the PID
    # namespace dies: it must not be able to append a forged `exit` line (timeout: True).
    daemon = ("import os, time\n"
              "if os.fork() == 0:\n"
              "    os.setsid()\n"
              "    if os.fork() == 0:\n"
              "        line = b'\\n@@selfcorrect:exit:{\"timeout\": true}\\n'\n"
              "        while True:\n"
              "            try:\n"
              "                os.write(1, line)\n"
              "            except OSError:\n"
              "                pass\n"
              "            time.sleep(0.0005)\n"
              "    os._exit(0)\n"
              "time.sleep(0.2)\n")
    results = box.run([Program(daemon + WRONG, TESTS, exports=("f",))] * 3)
    assert [r.status for r in results] == [FAILED] * 3, [r.detail for r in results]


# ----------------------------------------------------------------------------- forks and hooks
def test_a_fork_of_the_program_does_not_run_the_tests(box):
    # Only the process the harness started may print the pass token: a forked copy that
    # computes the right answer (or guesses it) must not pass for the one that did not.
    at_top = "import os\npid = os.fork()\ndef f(x):\n    return x + 1 if pid == 0 else 0\n"
    in_call = ("import os\ndef f(x):\n    if os.fork() == 0:\n        return x + 1\n"
               "    os.wait()\n    return 0\n")
    honest = "import os\nif os.fork() == 0:\n    os._exit(0)\nos.wait()\ndef f(x):\n    return x + 1\n"
    results = box.run([Program(code, TESTS, exports=("f",)) for code in (at_top, in_call, honest)])
    assert [r.status for r in results] == [FAILED, FAILED, PASSED], [r.detail for r in results]


def test_a_replaced_settrace_does_not_keep_the_programs_trace_hook(box):
    code = ("import sys\n"
            "def hook(frame, event, arg):\n"
            "    if event == 'call' and frame.f_code.co_filename == '<tests>':\n"
            "        frame.f_locals['v'] = (1, 1)\n"
            "sys.settrace(hook)\n"
            "sys.settrace = lambda *a: None\n"
            "sys.setprofile = lambda *a: None\n")
    result = box.run([Program(code + WRONG, TESTS, exports=("f",))])[0]
    assert result.status == FAILED, result


def test_multiprocessing_works_in_every_tier(box):
    # A correct program that uses a multiprocessing lock or pool must not fail because the
    # sandbox's /dev/shm is not writable by the program's uid.
    code = ("import multiprocessing as mp\n"
            "def square(x):\n    return x * x\n"
            "def f(n):\n    with mp.Pool(2) as pool:\n        return pool.map(square, range(n))\n")
    result = box.run([Program(code, "assert f(3) == [0, 1, 4]\n", exports=("f",))])[0]
    assert result.status == PASSED, result.detail


# ----------------------------------------------------------------------------- HumanEval assembly
PROMPT = ('from typing import List\n\n\ndef close(numbers: List[float], threshold: float) -> bool:\n'
          '    """ Whether two numbers are closer than threshold. """\n')
LOOP_BODY = ("    for i, a in enumerate(numbers):\n"
             "        for b in numbers[i + 1:]:\n"
             "            if abs(a - b) < threshold:\n"
             "                return True\n"
             "    return False\n")
CHECK = "def check(candidate):\n    assert candidate([1.0, 1.05], 0.1)\n    assert not candidate([1.0, 2.0], 0.5)\n"


@pytest.mark.parametrize("code", [
    LOOP_BODY.lstrip(),  # a stripped response: the first line lost its indentation
    LOOP_BODY.replace("    ", "   "),  # three-space indentation (sentencepiece decoding)
    "# check every pair\n" + LOOP_BODY,  # a comment at column 0 before an indented body
    "from __future__ import annotations\nfrom typing import List\n\n"
    "def close(numbers: List[float], threshold: float) -> bool:\n" + LOOP_BODY,
])
def test_humaneval_program_runs_correct_code_as_written(code):
    program = humaneval_program(PROMPT, code, "close")
    assert _compiles(program), program
    namespace = {}
    exec(compile(program + "\n" + CHECK, "<program>", "exec"), namespace)
    namespace["check"](namespace["close"])


def test_humaneval_program_keeps_the_usual_shapes():
    for code in (LOOP_BODY, "return False", "def close(numbers, threshold):\n    return False\n"):
        assert _compiles(humaneval_program(PROMPT, code, "close")), code
    # a body that cannot compile however it is indented stays as it was
    broken = "    return (\n"
    assert humaneval_program(PROMPT, broken, "close") == PROMPT + broken + "\n"


def test_humaneval_future_import_scores_correct():
    if not (_usable("bwrap") or _usable("rlimit")):
        pytest.skip("no sandbox tier works here")
    with build("humaneval", timeout_s=8, workers=1) as task:
        problem = next(p for p in task.load("test") if p.id == "HumanEval/0")
        response = ("```python\nfrom __future__ import annotations\nfrom typing import List\n\n"
                    "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                    "    return any(abs(a - b) < threshold for i, a in enumerate(numbers)\n"
                    "               for b in numbers[i + 1:])\n```")
        verdict = task.score([problem], [response])[0]
    assert verdict.reward == 1.0, verdict.detail


def test_the_tier_check_is_not_held_to_a_short_user_timeout(monkeypatch):
    """One slow start of the canary under a 0.5 s timeout must not settle the run on the weaker tier."""
    from selfcorrect.verify import sandbox as sb

    seen = []
    real = sb.Sandbox._execute

    def spy(self, program, tier, timeout_s=None):
        seen.append(timeout_s)
        return real(self, program, tier, timeout_s)

    monkeypatch.setattr(sb.Sandbox, "_execute", spy)
    box = sb.Sandbox(sb.SandboxConfig(tier="rlimit", timeout_s=0.5))
    assert box.tier == "rlimit"
    assert seen and seen[0] == sb.PROBE_TIMEOUT_S
