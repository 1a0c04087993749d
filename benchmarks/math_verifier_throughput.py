"""Throughput of math answer checking: math-verify in-process vs through the VerifierPool.

Workload: every MATH500 reference answer against itself and against a perturbed answer
(integers + 1, equations "x=5+1", anything else "(a)+1"), i.e. 2 x 500 math-verify checks, the string fast path
skipped so that each check really reaches sympy. Prints checks/second for

    in-process      sympy_equivalent called in a loop (no deadline: unsafe on model output)
    pool, 1 worker  the same calls through one worker (so the difference is the pool's cost)
    pool, W workers the same calls spread over W workers
    task.score      MathTask.score on the paper's answer format (extraction, pre-check,
                    string fast path, dedup cache, pool), as training uses it

and the per-check overhead of the pool = (pool 1-worker time - in-process time) / checks,
plus the bare round trip of a trivial call (abs) through the pool, which is that overhead
without sympy's timing noise.
Worker start-up is timed separately (it happens once, before the first check).

    python benchmarks/math_verifier_throughput.py --data ../shared/data/math500_test.jsonl --workers 4
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from selfcorrect.tasks.base import Problem
from selfcorrect.tasks.math import MathTask
from selfcorrect.verify import math_answers
from selfcorrect.verify.workers import VerifierPool, default_size

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "math500_test.jsonl"


def perturb(answer: str) -> str:
    """A different answer of the same shape: 41 -> 42, x=5 -> x=5+1, else (a)+1."""
    if re.fullmatch(r"-?\d+", answer.strip()):
        return str(int(answer) + 1)
    return f"{answer}+1" if "=" in answer else f"({answer})+1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MATH500 jsonl (fields problem, answer)")
    parser.add_argument("--workers", type=int, default=default_size(), help="pool size for the parallel run")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N answers")
    parser.add_argument("--deadline", type=float, default=30.0, help="per-check deadline in seconds")
    args = parser.parse_args()

    with args.data.open() as f:
        golds = [json.loads(line)["answer"] for line in f if line.strip()][: args.limit]
    pairs = [(g, g) for g in golds] + [(g, perturb(g)) for g in golds]
    n = len(pairs)
    print(f"{n} checks ({len(golds)} answers vs themselves and vs a perturbed answer)")

    math_answers.warmup()
    start = time.perf_counter()
    inproc = [math_answers.sympy_equivalent(g, c) for g, c in pairs]
    t_inproc = time.perf_counter() - start
    print(f"in-process        {n / t_inproc:8.1f} checks/s   ({t_inproc:.2f} s)")

    timings = {}
    for size in sorted({1, args.workers}):
        with VerifierPool(size, preload=("math_verify",), initializer=math_answers.warmup) as pool:
            start = time.perf_counter()
            pool.map(abs, [(0,)] * size, deadline_s=args.deadline)  # start every worker
            t_start = time.perf_counter() - start
            start = time.perf_counter()
            results = pool.map(math_answers.sympy_equivalent, pairs, deadline_s=args.deadline)
            timings[size] = time.perf_counter() - start
            start = time.perf_counter()
            pool.map(abs, [(i,) for i in range(n)], deadline_s=args.deadline)
            trip_us = (time.perf_counter() - start) / n * 1e6
        failed = sum(not r.ok for r in results)
        agree = sum(r.ok and r.value == v for r, v in zip(results, inproc))
        print(f"pool, {size} worker(s) {n / timings[size]:8.1f} checks/s   ({timings[size]:.2f} s; start-up "
              f"{t_start:.2f} s; {failed} failed; {agree}/{n} agree with in-process; "
              f"bare round trip {trip_us:.0f} us/call)")
    overhead_ms = (timings[1] - t_inproc) / n * 1000
    print(f"pool overhead     {overhead_ms:8.2f} ms per check (1 worker vs in-process)")

    self_ok = sum(v is True for v in inproc[: len(golds)])
    perturbed_equal = sum(v is True for v in inproc[len(golds):])
    print(f"verdicts: {self_ok}/{len(golds)} references equal themselves; "
          f"{perturbed_equal}/{len(golds)} perturbed answers judged equal (should be 0)")

    problems = [Problem(str(i), "", g) for i, g in enumerate(golds)] * 2
    responses = [f"Final Answer: The final answer is ${c}$. I hope it is correct." for _, c in pairs]
    with MathTask("math500", workers=args.workers, timeout_s=args.deadline) as task:
        task.score(problems[:1], responses[:1])  # start the pool
        start = time.perf_counter()
        verdicts = task.score(problems, responses)
        t_task = time.perf_counter() - start
    print(f"task.score        {n / t_task:8.1f} checks/s   ({t_task:.2f} s; "
          f"{sum(v.reward == 1.0 for v in verdicts)} correct, stats {dict(task.stats)})")


if __name__ == "__main__":
    main()
