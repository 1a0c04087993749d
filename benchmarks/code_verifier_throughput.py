"""Throughput of the code verifier: checks per second and per-check cost of each sandbox tier.

    python benchmarks/code_verifier_throughput.py --n 256 --workers 4

Checks N programs (HumanEval canonical solutions with their tests, repeated to N) under each
method, side by side in one run, interleaved over `--rounds` so a machine whose load drifts
(shared CI runners) hurts every method alike:
  floor   a bare `python -c pass` subprocess: the least any fresh-interpreter check costs
  floorS  `python -S -c pass`: the same without `site` (how the sandbox starts programs)
  plain   `python -c <program + tests>`: a fresh interpreter, no harness, no isolation
  rlimit  the sandbox's rlimit tier (harness, supervisor fork, rlimits, scrubbed env, temp dir)
  bwrap   the sandbox's bubblewrap tier (all of rlimit inside namespaces), when it works here
For each: checks/s with `--workers` in parallel, and the mean latency of one check run alone
(serial) with its overhead over the floor. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from selfcorrect.tasks.code import build
from selfcorrect.verify.sandbox import TIERS, Program, Sandbox, SandboxUnavailable


def programs(n: int) -> list[Program]:
    task = build("humaneval")
    problems = task.load("test")
    chosen = [problems[i % len(problems)] for i in range(n)]
    return [task.program(p, task.reference_response(p)) for p in chosen]


def bare_runner(script_of, *flags: str):
    """Run each program as `python -c script` with no sandbox; returns a batch function."""
    def run(batch: list[Program], workers: int) -> list[bool]:
        def one(program: Program) -> bool:
            done = subprocess.run([sys.executable, *flags, "-c", script_of(program)],
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            return done.returncode == 0
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, batch))
    return run


def sandbox_runner(tier: str, timeout_s: float):
    boxes: dict[int, Sandbox] = {}

    def run(batch: list[Program], workers: int) -> list[bool]:
        if workers not in boxes:
            boxes[workers] = Sandbox(tier=tier, workers=workers, timeout_s=timeout_s)
        return [r.passed for r in boxes[workers].run(batch)]
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="programs per method")
    parser.add_argument("--workers", type=int, default=4, help="programs in parallel")
    parser.add_argument("--serial", type=int, default=16, help="programs timed one at a time")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per method")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    batch = programs(args.n)
    methods = {
        "floor": bare_runner(lambda p: "pass"),
        "floorS": bare_runner(lambda p: "pass", "-S"),
        "plain": bare_runner(lambda p: f"{p.code}\n{p.tests}"),
    }
    for tier in TIERS:
        try:
            Sandbox(tier=tier).tier
            methods[tier] = sandbox_runner(tier, args.timeout)
        except SandboxUnavailable as exc:
            print(f"{tier}: unavailable ({exc})")

    per_round = args.n // args.rounds
    wall = {name: 0.0 for name in methods}
    passed = {name: 0 for name in methods}
    latency: dict[str, list[float]] = {name: [] for name in methods}
    for round_index in range(args.rounds):
        chunk = batch[round_index * per_round:(round_index + 1) * per_round]
        for name, run in methods.items():
            start = time.perf_counter()
            passed[name] += sum(run(chunk, args.workers))
            wall[name] += time.perf_counter() - start
        for name, run in methods.items():
            for program in batch[: args.serial // args.rounds]:
                start = time.perf_counter()
                run([program], 1)
                latency[name].append(time.perf_counter() - start)

    checked = per_round * args.rounds
    floor = statistics.mean(latency["floor"])
    print(f"\n{checked} HumanEval checks per method, {args.workers} workers, "
          f"python {sys.version.split()[0]}")
    print(f"{'method':8s} {'checks/s':>9s} {'passed':>7s} {'serial ms':>10s} {'over floor ms':>14s}")
    for name in methods:
        mean = statistics.mean(latency[name])
        print(f"{name:8s} {checked / wall[name]:9.1f} {passed[name]:7d} {1000 * mean:10.1f} "
              f"{1000 * (mean - floor):14.1f}")


if __name__ == "__main__":
    main()
