"""Start a 2-process job for the data-parallel tests: torchrun, or bare processes with its
variables (to read each rank's own exit code and stderr). CPU, gloo, one thread, a free port,
and a hard timeout after which the whole process group is killed, so nothing can hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
               CUDA_VISIBLE_DEVICES="", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank it started
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s:\n{(out or err)[-4000:]}") from None
    return proc.returncode, out if out is not None else err


def torchrun(args: list[str], nproc: int = 2, timeout: float = TIMEOUT_S) -> tuple[int, str]:
    """`torchrun --nproc_per_node nproc ARGS` from the repository root: (exit code, output).
    Not retried: a rank that aborts at exit (see distributed.exit_process) fails the test."""
    cmd = [str(TORCHRUN), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    return _wait(proc, timeout)


def start_bare_ranks(args: list[str], world: int = 2) -> list[subprocess.Popen]:
    """`python ARGS` once per rank with torchrun's variables set, stderr piped."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = base_env(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    return procs


def wait_ranks(procs: list[subprocess.Popen], timeout: float = TIMEOUT_S) -> list[tuple[int, str]]:
    """[(exit code, stderr)] by rank; every rank is killed if the job outlives `timeout`."""
    try:
        return [_wait(p, timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def bare_ranks(args: list[str], world: int = 2, timeout: float = TIMEOUT_S) -> list[tuple[int, str]]:
    return wait_ranks(start_bare_ranks(args, world), timeout)
