"""Adversarial math answers through MathTask.score: no hangs, every verdict within its deadline.

    python benchmarks/math_adversarial.py [--count 1000] [--timeout 3] [--workers 2] [--seed 0]

Each answer is scored alone (one `score` call per item) so that its wall time is measured:
exponent towers, huge factorials and binomials, deeply nested LaTeX, megabyte strings,
pathological regex input (long runs of `\\boxed{`, unclosed braces, `Final Answer` repeated),
unicode junk and ordinary answers. A "hang" is an item whose verdict took longer than its
deadline (the task's timeout_s) + 1 s. A watchdog dumps every thread's stack and exits 2 if a
single item takes longer than deadline + 60 s (a real hang in the parent process).
Prints: answers: N, hangs: H, max_over_deadline_s: X, verdicts: {...}
"""

from __future__ import annotations

import argparse
import faulthandler
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfcorrect.tasks.base import Problem  # noqa: E402
from selfcorrect.tasks.math import MathTask  # noqa: E402

_JUNK = "\u200b\u202e\ufeff\ud7ff\U0001f600\u0301\u00a0\u2212\u221e\u00bd\x00\x7f\u3000\U0010ffff"


def _tower(rng: random.Random) -> str:
    depth = rng.randint(3, 40)
    base = rng.choice(["2", "10", "9", "x", "1.0001"])
    return "^".join([base] * depth) if rng.random() < 0.5 else \
        "".join(f"{base}^{{" for _ in range(depth)) + base + "}" * depth


def _factorial(rng: random.Random) -> str:
    n = rng.choice([10 ** rng.randint(3, 12), rng.randint(1000, 100000)])
    forms = [f"{n}!", f"({n}!)!", f"\\binom{{{n}}}{{{n // 2}}}", f"{n}!^{{{n}}}",
             f"\\Gamma({n})", f"{n}!!" , f"\\frac{{{n}!}}{{{n - 1}!}}"]
    return rng.choice(forms)


def _nested(rng: random.Random) -> str:
    depth = rng.choice([50, 200, 1000, 5000, 20000])
    kind = rng.choice(["frac", "sqrt", "paren", "brace", "left"])
    if kind == "frac":
        return "\\frac{1}{" * depth + "2" + "}" * depth
    if kind == "sqrt":
        return "\\sqrt{" * depth + "2" + "}" * depth
    if kind == "paren":
        return "(" * depth + "1" + ")" * depth
    if kind == "brace":
        return "{" * depth + "x" + "}" * (depth - rng.randint(0, 3))
    return "\\left(" * depth + "x" + "\\right)" * depth


def _megabyte(rng: random.Random) -> str:
    size = rng.choice([100_000, 1_000_000, 2_000_000])
    unit = rng.choice(["9", "x+", "\\frac{1}{2}+", " ", "a" * 7, "{", "\\\\", "1,"])
    return (unit * (size // len(unit) + 1))[:size]


def _regex(rng: random.Random) -> str:
    n = rng.choice([1000, 10000, 100000])
    forms = ["\\boxed{" * n, "\\boxed{" + "{" * n, "Final Answer: " * n, "$" * n,
             "#### " * n, "1" * n + "a", "\\frac" * n, "\\text{" * n + "x",
             ("1," * n) + "x", "." * n + "!", "^" * n, "\\!" * n + "x", "-" * n + "1"]
    return rng.choice(forms)


def _unicode(rng: random.Random) -> str:
    return "".join(rng.choice(_JUNK) for _ in range(rng.choice([5, 100, 5000])))


def _ordinary(rng: random.Random) -> str:
    return rng.choice(["\\frac{1}{2}", "0.5", "x^2+2x+1", "(x+1)^2", "\\sqrt{2}/2",
                       "\\frac{\\sqrt{2}}{2}", "3\\pi", "\\{1,2,3\\}", "[0, 1)", "2^{100}",
                       "e^{i\\pi}", "\\infty", "-\\infty", "\\text{(C)}", "12^\\circ"])


GENERATORS = [_tower, _factorial, _nested, _megabyte, _regex, _unicode, _ordinary]
GOLDS = ["\\frac{1}{2}", "(x+1)^2", "42", "\\sqrt{2}", "2^{10}", "\\{1,2,3\\}", "x"]


def adversarial_items(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(gold, response) pairs: each answer in `\\boxed{}` or after "Final Answer", or raw."""
    rng = random.Random(seed)
    items = []
    for i in range(count):
        answer = GENERATORS[i % len(GENERATORS)](rng)
        wrap = rng.choice(["boxed", "final", "raw", "hashes"])
        if wrap == "boxed":
            response = f"So the answer is $\\boxed{{{answer}}}$."
        elif wrap == "final":
            response = f"Final Answer: The final answer is ${answer}$. I hope it is correct."
        elif wrap == "hashes":
            response = f"#### {answer}"
        else:
            response = answer
        items.append((rng.choice(GOLDS), response))
    return items


def run(count: int = 1000, timeout_s: float = 3.0, workers: int = 2, seed: int = 0) -> dict:
    task = MathTask("math", timeout_s=timeout_s, workers=workers)
    verdicts: Counter = Counter()
    over, hangs = [], 0
    try:
        task.score([Problem("warm", "q", "x + 1")], ["\\boxed{1 + x}"])  # workers up
        for i, (gold, response) in enumerate(adversarial_items(count, seed)):
            faulthandler.dump_traceback_later(timeout_s + 60, exit=True)
            start = time.monotonic()
            verdict = task.score([Problem(f"a{i}", "q", gold)], [response])[0]
            wall = time.monotonic() - start
            faulthandler.cancel_dump_traceback_later()
            verdicts[verdict.reason] += 1
            over.append(wall - timeout_s)
            if wall > timeout_s + 1.0:
                hangs += 1
                print(f"slow item {i}: {wall:.2f} s ({verdict.reason}) {response[:80]!r}",
                      file=sys.stderr)
    finally:
        task.close()
    return {"answers": count, "hangs": hangs, "max_over_deadline_s": round(max(over), 3),
            "verdicts": dict(sorted(verdicts.items()))}


def main() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)  # per-item "could not be verified" warnings are expected here
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = run(args.count, args.timeout, args.workers, args.seed)
    print(f"answers: {summary['answers']}, hangs: {summary['hangs']}, "
          f"max_over_deadline_s: {summary['max_over_deadline_s']}, verdicts: {summary['verdicts']}")
    sys.exit(1 if summary["hangs"] else 0)


if __name__ == "__main__":
    main()
