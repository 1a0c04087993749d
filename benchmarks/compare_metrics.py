"""Compare two runs' metrics.jsonl step by step (data-parallel vs one process, FSDP vs DDP).

    python benchmarks/compare_metrics.py RUN_A RUN_B [--rel 1e-5]

Prints the headline metrics of both runs per step and the largest difference over every
logged number except the wall-clock ones (time_*, gen_tokens_per_s) and the engine log-prob
gap (engine_logprob_gap*: the difference of two fp32 log-probs of the same tokens, about 1e-6,
which is itself rounding and moves with the batch shapes a rank runs); exits 1 when a number
differs by more than --rel x its size + --abs (the floor covers fp32 noise on numbers near 0,
such as the KL of the first steps). The runs must have drawn the same rows: use rollout.seeding problem
on one process (a launch on several processes uses it by default).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HEADLINE = ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i", "kl_t2", "loss", "grad_norm")
NOT_COMPARED = ("time_", "gen_tokens_per_s", "engine_logprob_gap")  # prefixes


def read(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def excess(a: float, b: float, rel: float, abs_: float) -> float:
    """|a - b| in units of the tolerance rel * max(|a|, |b|) + abs_ (<= 1: within it)."""
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b) / (rel * max(abs(a), abs(b)) + abs_)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--rel", type=float, default=1e-5, help="relative tolerance")
    parser.add_argument("--abs", type=float, default=1e-7, help="absolute tolerance")
    args = parser.parse_args()
    a, b = read(args.run_a), read(args.run_b)
    if len(a) != len(b):
        print(f"different step counts: {len(a)} vs {len(b)}")
        return 1
    worst = (0.0, None, None)
    largest_abs = 0.0
    print("step | " + " | ".join(HEADLINE))
    for x, y in zip(a, b):
        print(f"{x['step']} | " + " | ".join(f"{x[k]:.6g} / {y[k]:.6g}" for k in HEADLINE if k in x))
        for key in x:
            if not key.startswith(NOT_COMPARED):
                u, v = float(x[key]), float(y[key])
                worst = max(worst, (excess(u, v, args.rel, args.abs), key, x["step"]), key=lambda w: w[0])
                if not (math.isnan(u) and math.isnan(v)):
                    largest_abs = max(largest_abs, abs(u - v))
    print(f"largest absolute difference {largest_abs:.2e}; worst against the tolerance: {worst[0]:.2f} x "
          f"(rel {args.rel:g}, abs {args.abs:g}) at {worst[1]}, step {worst[2]}")
    return 0 if worst[0] <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
