"""Adversarial programs, one attack per test, under every sandbox tier that works here.

Each attack is written so that it *passes* only if the attack succeeded (its tests assert
the attack's effect); every test asserts the verdict is not "passed" and that the host is
unharmed. At the end of the module: no leftover processes, no stray files. Where the rlimit
tier cannot stop an attack by design (docs/SANDBOX.md), the test says so and is skipped.
"""

import glob
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from selfcorrect.verify.sandbox import FAILED, PASSED, TIERS, TIMEOUT, Program, Sandbox
from test_sandbox import USABLE

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

ROOT = os.geteuid() == 0
REPO = Path(__file__).resolve().parents[1]
MARK = f"4242.{os.getpid()}"  # a `sleep` argument that names this run's stray processes
TIMEOUT_S = 3.0
SANDBOX_PREFIX = os.path.join(os.path.realpath(os.environ.get("TMPDIR", "/tmp")), "selfcorrect-sbx-")


def leftovers() -> list[str]:
    """Processes this suite could have left behind: our marked `sleep`s, or anything whose
    working folder is (was) a sandbox folder."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            cwd = ""
        if MARK in cmdline or cwd.startswith("/tmp/selfcorrect-sbx-") or \
                cwd.startswith(SANDBOX_PREFIX):
            found.append(f"{entry}: {cmdline[:80]} (cwd {cwd})")
    return found


@pytest.fixture(scope="module", autouse=True)
def host_is_clean_afterwards():
    folders = set(glob.glob(SANDBOX_PREFIX + "*"))
    yield
    deadline = time.monotonic() + 5
    while leftovers() and time.monotonic() < deadline:  # SIGKILLed processes take a moment
        time.sleep(0.1)
    assert leftovers() == []
    assert set(glob.glob(SANDBOX_PREFIX + "*")) <= folders
    assert glob.glob(f"/tmp/*{MARK}*") == []
    assert not list(REPO.glob(f"*{MARK}*"))


@pytest.fixture(scope="module", params=list(TIERS))
def box(request):
    if request.param not in USABLE:
        pytest.skip(f"the {request.param} tier does not work on this host")
    sandbox = Sandbox(tier=request.param, timeout_s=TIMEOUT_S, workers=1)
    yield sandbox
    sandbox.close()


def attack(box, code, tests="", exports=()):
    """Run one attack; it must not pass, and must end within the time limit + backstop."""
    start = time.monotonic()
    result = box.run([Program(code, tests, exports=tuple(exports))])[0]
    assert result.status != PASSED, result
    assert time.monotonic() - start < TIMEOUT_S + 4
    return result


def weak_tier(box, why):
    if box.tier == "rlimit" and not ROOT:
        pytest.skip(f"rlimit tier as an ordinary user cannot stop {why} (docs/SANDBOX.md)")


def test_infinite_loop(box):
    assert attack(box, "while True:\n    pass\n").status == TIMEOUT


def test_fork_bomb(box):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert attack(box, code).status == TIMEOUT
    assert leftovers() == []


def test_process_limit_bounds_forks(box):
    code = (f"import os\nn = 0\nfor _ in range(400):\n    try:\n        pid = os.fork()\n"
            f"    except OSError:\n        break\n    if pid == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '{MARK}'])\n    n += 1\nprint('forks', n)\n")
    result = attack(box, code, "assert n == 400\n", ["n"])
    assert result.status == FAILED
    assert int(result.output.split()[-1]) < 200  # RLIMIT_NPROC stopped it
    assert leftovers() == []  # the sleeping children were killed with the run


def test_ten_gigabyte_allocation(box):
    result = attack(box, "block = bytearray(10 * 2**30)\nok = True\n", "assert ok\n", ["ok"])
    assert result.status == FAILED and "MemoryError" in result.detail


def test_write_and_delete_outside_the_working_folder(box, tmp_path):
    weak_tier(box, "writes to the user's own files")
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    targets = [str(tmp_path / f"new-{MARK}"), str(REPO / f"stray-{MARK}")]
    code = (f"import os\ndone = []\ntry:\n    os.remove({str(sentinel)!r})\n    done.append('rm')\n"
            f"except OSError as exc:\n    print(exc)\nfor target in {targets!r}:\n    try:\n"
            f"        open(target, 'w').write('x')\n        done.append(target)\n"
            f"    except OSError as exc:\n        print(exc)\n")
    result = attack(box, code, "assert done\n", ["done"])
    assert result.status == FAILED
    assert sentinel.read_text() == "keep me"
    assert not any(os.path.exists(t) for t in targets)


def test_write_to_the_hosts_tmp(box):
    if box.tier == "rlimit":
        pytest.skip("the rlimit tier cannot stop writes to world-writable /tmp (docs/SANDBOX.md)")
    target = f"/tmp/stray-{MARK}"
    code = f"open({target!r}, 'w').write('x')\nimport os\nok = os.path.exists({target!r})\n"
    result = box.run([Program(code, "assert ok\n", exports=("ok",))])[0]
    assert result.status == PASSED  # it wrote to the sandbox's private /tmp ...
    assert not os.path.exists(target)  # ... which is not the host's


def test_read_the_parents_environment_secrets(box, monkeypatch):
    weak_tier(box, "reading /proc/<pid>/environ of the user's own processes")
    monkeypatch.setenv("SELFCORRECT_ATTACK_SECRET", "hunter2-" + MARK)
    code = ("import os\nfound = [k for k, v in os.environ.items() if 'hunter2' in v]\n"
            "for pid in os.listdir('/proc'):\n    try:\n"
            "        data = open(f'/proc/{pid}/environ', 'rb').read()\n    except OSError:\n"
            "        continue\n    if b'hunter2' in data:\n        found.append(pid)\nprint(found)\n")
    result = attack(box, code, "assert found\n", ["found"])
    assert result.status == FAILED and "hunter2" not in result.output


def test_open_a_network_connection(box):
    if box.tier == "rlimit":
        pytest.skip("the rlimit tier has no network isolation (docs/SANDBOX.md)")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = (f"import socket\nreached = []\nfor address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:\n"
            f"    try:\n        socket.create_connection(address, timeout=1).close()\n"
            f"        reached.append(address)\n    except OSError as exc:\n        print(exc)\n")
    try:
        result = attack(box, code, "assert reached\n", ["reached"])
    finally:
        server.close()
    assert result.status == FAILED and "unreachable" in result.output.lower()


@pytest.mark.parametrize("exit_call", ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n",
                                       "raise SystemExit\n"])
def test_exit_zero_before_the_asserts(box, exit_call):
    code = "def f(x):\n    return 0\n" + exit_call
    result = attack(box, code, "assert f(1) == 1\n", ["f"])
    assert result.status == FAILED


def test_exit_zero_from_inside_the_tested_function(box):
    code = "import os\ndef f(x):\n    os._exit(0)\n"
    assert attack(box, code, "assert f(1) == 1\n", ["f"]).status == FAILED


def test_forged_pass_line(box):
    code = "import os\nos.write(1, b'\\n@@selfcorrect:pass:' + os.urandom(16).hex().encode() + b'\\n')\n" \
           "os._exit(0)\n"
    assert attack(box, code).status == FAILED


YES_MAN = ("class Yes:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
           "    def __bool__(self): return True\n    def __lt__(self, o): return True\n"
           "    def __sub__(self, o): return self\n    def __abs__(self): return self\n"
           "    __hash__ = object.__hash__\n")


@pytest.mark.parametrize("code,tests", [
    (YES_MAN + "def f(x):\n    return Yes()\n", "assert f(1) == 2\n"),
    (YES_MAN + "def f(x):\n    return [1, Yes()]\n", "assert f(1) == [1, 2]\n"),
    (YES_MAN + "def f(x):\n    return Yes()\n", "assert abs(f(1) - 2.5) < 1e-6\n"),
    (YES_MAN + "def f(x):\n    return Yes()\n", "assert f(1)\nassert f(2) != 3\n"),
    ("class Int(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
     "def f(x):\n    return Int(0)\n", "assert f(1) == 2\n"),
    ("import collections\ncollections.Counter.__eq__ = lambda s, o: True\n"
     "def f(x):\n    return collections.Counter('zz')\n", "assert f(1) == {'a': 1}\n"),
    ("import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n"
     "builtins.abs = lambda x: 0\ndef f(x):\n    return 7\n", "assert abs(f(1) - 2) == 0\n"),
])
def test_an_object_that_says_yes_to_everything(box, code, tests):
    result = attack(box, code, tests, ["f"])
    assert result.status == FAILED and "assert" in result.detail


def test_kill_the_parent_process(box):
    weak_tier(box, "a program signalling the user's own processes")
    host, group = os.getpid(), os.getpgrp()
    # The supervisor (its parent) is tried too, but only the host counts as a success: in a
    # bwrap user namespace killing the supervisor just ends the sandbox.
    code = (f"import os, signal\nkilled = []\nfor pid in (os.getppid(), {host}, -{group}):\n"
            f"    try:\n        os.kill(pid, signal.SIGKILL)\n        killed.append(pid)\n"
            f"    except OSError as exc:\n        print(exc)\nkilled = [p for p in killed if p in "
            f"({host}, -{group})]\n")
    result = attack(box, code, "assert killed\n", ["killed"])
    assert result.status == FAILED
    assert os.getpid() == host  # still here; and the sandbox still works:
    assert box.run([Program("x = 1\n", "assert x == 1\n", exports=("x",))])[0].passed


def test_a_daemon_that_outlives_the_run(box):
    code = (f"import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '{MARK}'])\n    os._exit(0)\n"
            f"import time\ntime.sleep(0.2)\ndef f(x):\n    return 0\n")
    attack(box, code, "assert f(1) == 1\n", ["f"])
    assert leftovers() == []


def test_a_daemon_outlives_a_timeout(box):
    code = (f"import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '{MARK}'])\n    os._exit(0)\n"
            f"while True:\n    pass\n")
    assert attack(box, code).status == TIMEOUT
    assert leftovers() == []


def test_a_flood_of_output(box):
    start = time.monotonic()
    result = attack(box, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert result.status == FAILED and "output exceeded" in result.detail
    assert len(result.output) <= 4000 and time.monotonic() - start < TIMEOUT_S


def test_cannot_read_hidden_task_data(shared_data):
    if "bwrap" not in USABLE:
        pytest.skip("hiding files needs the bwrap tier")
    data = str(shared_data / "mbpp.jsonl")
    code = f"text = open({data!r}).read()\nprint(len(text))\n"
    with Sandbox(tier="bwrap", hidden_paths=(data,), timeout_s=TIMEOUT_S) as hidden:
        result = attack(hidden, code, "assert 'similar_elements' in text\n", ["text"])
    # /dev/null is bound over the file: unreadable (a nodev mount) or empty; when the data lies
    # under a folder the sandbox masks anyway (/tmp, $HOME), it is simply not there
    assert result.status == FAILED
    assert ("Permission denied" in result.detail or "No such file" in result.detail
            or result.output == "0"), result.detail
