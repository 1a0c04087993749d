"""VerifierPool: results in order, soft and hard deadlines, crashes, errors, no zombies."""

import gc
import operator
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from selfcorrect.verify.workers import CRASH, EXCEPTION, TIMEOUT, VerifierPool


# Helpers run inside the workers: module-level so they are importable there (the pool hands
# its workers this process's sys.path).
def sleep_ignoring_alarm(seconds: float) -> str:
    """A check the soft deadline cannot stop: only the parent's kill can."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    time.sleep(seconds)
    return "finished"


def return_unpicklable():
    return lambda: None


def allocate(megabytes: int) -> int:
    return len(bytearray(megabytes * 1024 * 1024))


def failing_initializer():
    raise RuntimeError("initializer says no")


def assert_reaped(pid: int) -> None:
    """The process is gone and was waited for: no zombie left behind."""
    assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} still exists (alive or zombie)"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def exited(pid: int) -> bool:
    """Gone, or a zombie waiting for init (whose reaping is not ours to do)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1].startswith("Z")
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(2) as p:
        yield p


def test_map_returns_values_in_item_order(pool):
    results = pool.map(operator.add, [(i, 10) for i in range(7)], deadline_s=10)
    assert [r.value for r in results] == [i + 10 for i in range(7)]
    assert all(r.ok and r.error is None for r in results)
    assert pool.map(operator.add, [], deadline_s=1) == []


def test_soft_deadline_interrupts_and_keeps_the_worker(pool):
    pool.map(os.getpid, [(), ()], deadline_s=10)  # both workers up
    before = set(pool.pids)
    kills = pool.stats["kills"]
    start = time.monotonic()
    slow, quick = pool.map(time.sleep, [(30,), (0.01,)], deadline_s=0.5)
    assert time.monotonic() - start < 10
    assert (slow.ok, slow.error) == (False, TIMEOUT) and "soft deadline" in slow.detail
    assert quick.ok
    assert set(pool.pids) == before and pool.stats["kills"] == kills  # nobody was killed


def test_hard_deadline_kills_a_stuck_worker_and_replaces_it():
    with VerifierPool(1, kill_grace_s=0.3) as p:
        first_pid = p.call(os.getpid, deadline_s=10).value
        start = time.monotonic()
        result = p.call(sleep_ignoring_alarm, 60, deadline_s=0.5)
        elapsed = time.monotonic() - start
        assert (result.ok, result.error) == (False, TIMEOUT) and "killed" in result.detail
        assert 0.5 <= elapsed < 10
        assert_reaped(first_pid)
        assert p.stats["kills"] == 1
        # The pool carries on with a fresh worker.
        second = p.call(os.getpid, deadline_s=10)
        assert second.ok and second.value != first_pid


def test_crash_and_exception_are_results_not_raises(pool):
    crash = pool.call(os._exit, 3, deadline_s=10)
    error = pool.call(int, "x", deadline_s=10)
    fine = pool.call(abs, -4, deadline_s=10)
    assert (crash.ok, crash.error) == (False, CRASH) and "exit code 3" in crash.detail
    assert (error.ok, error.error) == (False, EXCEPTION) and "ValueError" in error.detail
    assert fine.value == 4


def test_unpicklable_result_is_an_exception_result(pool):
    result = pool.call(return_unpicklable, deadline_s=10)
    assert (result.ok, result.error) == (False, EXCEPTION)
    assert pool.call(abs, -1, deadline_s=10).value == 1


def test_calls_run_in_parallel(pool):
    pool.map(os.getpid, [(), ()], deadline_s=10)  # warm: start-up is not what we time
    start = time.monotonic()
    results = pool.map(time.sleep, [(1.0,)] * 4, deadline_s=20)
    elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    assert elapsed < 3.5, f"4 x 1 s on 2 workers took {elapsed:.1f} s: not parallel"


def test_memory_cap_turns_a_huge_allocation_into_an_exception():
    with VerifierPool(1, max_memory_mb=200) as p:
        big, small = p.call(allocate, 2000, deadline_s=20), p.call(allocate, 10, deadline_s=20)
    assert (big.ok, big.error) == (False, EXCEPTION) and "MemoryError" in big.detail
    assert small.ok


def test_lazy_start_close_reaps_and_is_idempotent():
    p = VerifierPool(2)
    assert p.pids == []  # nothing started before the first map
    p.map(time.sleep, [(0.01,), (0.01,)], deadline_s=10)
    pids = p.pids
    assert len(pids) == 2
    p.close()
    p.close()
    assert p.pids == []
    for pid in pids:
        assert_reaped(pid)
    with pytest.raises(RuntimeError, match="after close"):
        p.map(abs, [(1,)], deadline_s=1)


def test_dropping_the_pool_without_close_stops_its_workers():
    p = VerifierPool(1)
    pid = p.call(os.getpid, deadline_s=10).value
    del p
    gc.collect()
    assert_reaped(pid)


def test_workers_exit_when_the_parent_dies(tmp_path):
    script = textwrap.dedent("""
        import os, sys
        from selfcorrect.verify.workers import VerifierPool
        pool = VerifierPool(1)
        print(pool.call(os.getpid, deadline_s=30).value, flush=True)
        os._exit(0)  # no close(), no finalizers: the worker must notice on its own
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 10
    while not exited(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert exited(pid), f"worker {pid} outlived its parent"


def test_bad_arguments_fail_loudly(pool):
    with pytest.raises(TypeError, match="module-level"):
        pool.map(lambda: 1, [()], deadline_s=1)
    with pytest.raises(TypeError, match="item 1"):
        pool.map(abs, [(1,), 2], deadline_s=1)
    with pytest.raises(ValueError, match="deadline_s"):
        pool.map(abs, [(1,)], deadline_s=0)
    with pytest.raises(ValueError, match="size"):
        VerifierPool(0)


def test_broken_start_up_raises_with_the_cause():
    with VerifierPool(1, initializer=failing_initializer) as p:
        with pytest.raises(RuntimeError, match="initializer says no"):
            p.map(abs, [(1,)], deadline_s=5)
        assert p.pids == []  # stopped, not left half-started
    with VerifierPool(1, preload=("no_such_module_xyz",)) as p:
        with pytest.raises(RuntimeError, match="no_such_module_xyz"):
            p.map(abs, [(1,)], deadline_s=5)
