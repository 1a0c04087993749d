"""How the demo base model behaves: the numbers its recipe (demo_model.py) was calibrated on.

The README's description of the base (greedy: right on ~54% of held-out problems, always
copies; sampled at T = 1: second attempts copy ~67%, break ~18%, check ~15%) and the
`calibration` test both come from `probe`. Generation and turn glue are rollout's, so the
probe sees exactly the episodes that evaluation and SCoRe training see.

    python -m selfcorrect.demo_probe [--quick] [--seed S] [--set '{"steps": 800}'] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from .config import ModelConfig
from .demo_model import MODES, QUICK_RECIPE, RECIPE, build_demo_base, classify_second_attempt
from .models import cache_root, load
from .rollout import SamplingSettings, rollout, verify
from .tasks.base import Problem, Task


@torch.no_grad()
def probe(model, tokenizer, task: Task, problems: list[Problem], *, sample: bool, seed: int = 0,
          batch_size: int = 512, max_new_tokens: int = 24) -> dict:
    """Two attempts on each problem (greedy, or sampled at T = 1) and the numbers the demo is
    calibrated on: acc_t1, acc_t2, delta, i_to_c, c_to_i (fractions of all problems), the
    shares of second-attempt modes (share_copy / check / break / other), check_acc (the share of
    CHECK second attempts that are right) and a few example episodes."""
    torch.manual_seed(seed)
    model.eval()
    settings = SamplingSettings(greedy=not sample, temperature=1.0, max_new_tokens=max_new_tokens)
    ro = rollout(model, tokenizer, task, problems, n_attempts=2, samples_per_problem=1,
                 settings=settings, batch_size=batch_size)
    verify(task, ro)
    y1, y2 = [t[0] for t in ro.texts], [t[1] for t in ro.texts]
    r1, r2 = [v[0].reward for v in ro.verdicts], [v[1].reward for v in ro.verdicts]
    modes = [classify_second_attempt(a, b) for a, b in zip(y1, y2)]
    checks = [r for r, m in zip(r2, modes) if m == "check"]
    n = len(problems)
    return {
        "n": n, "sample": sample,
        "acc_t1": sum(r1) / n, "acc_t2": sum(r2) / n, "delta": (sum(r2) - sum(r1)) / n,
        "i_to_c": sum(1 for a, b in zip(r1, r2) if a == 0 and b == 1) / n,
        "c_to_i": sum(1 for a, b in zip(r1, r2) if a == 1 and b == 0) / n,
        **{f"share_{m}": modes.count(m) / n for m in (*MODES, "other")},
        "check_acc": sum(checks) / len(checks) if checks else float("nan"),
        "examples": [(p.question, a, b) for p, a, b in list(zip(problems, y1, y2))[:8]],
    }


def main(argv: list[str] | None = None) -> None:
    """Build (or reuse) the demo base and print its calibration on the held-out test split,
    greedy and sampled at T = 1."""
    parser = argparse.ArgumentParser(prog="python -m selfcorrect.demo_probe", description=main.__doc__)
    parser.add_argument("--cache-dir", type=Path, default=cache_root() / "demo-base",
                        help="where builds live (default: the one `selfcorrect demo` uses)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the seconds-long test recipe")
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")
    parser.add_argument("--set", default="{}", help='recipe overrides as JSON, e.g. \'{"steps": 800}\'')
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    recipe = replace(QUICK_RECIPE if args.quick else RECIPE, **json.loads(args.set))
    started = time.time()
    folder = build_demo_base(args.cache_dir, seed=args.seed, force=args.force, recipe=recipe)
    results = {"folder": str(folder), "seconds": round(time.time() - started, 1),
               "build": json.loads((folder / "recipe.json").read_text())}
    model, tokenizer = load(ModelConfig(name=str(folder)))
    task = recipe.task()
    for sample in (False, True):
        t = time.time()
        result = probe(model, tokenizer, task, task.load("test"), sample=sample, seed=args.seed)
        result["seconds"] = round(time.time() - t, 1)
        results["sampled" if sample else "greedy"] = result
        print(json.dumps({k: v for k, v in result.items() if k != "examples"}), flush=True)
        print("  examples:", result["examples"][:4], flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
