"""Soak test: many training steps of the demo model in one process, watching for leaks.

Every `--every` steps it records the resident memory (VmRSS), open file descriptors, threads
and live child processes of this process; at the end it fits a line to the resident memory after
warm-up and prints one summary line:

    steps: 1000, rss_mb: 412.0 -> 415.3, rss_slope_mb_per_1000_steps: 1.2, fds: 9 -> 9, threads: 3 -> 3, children: 0 -> 0

Usage (not a test: minutes of CPU):
    OMP_NUM_THREADS=1 python benchmarks/soak.py --steps 1000 --problems 16

It trains the demo recipe (configs/demo.yaml) with `--problems` problems per step (the step's
work is smaller than the demo's 64, the code path is the same) and checkpoints every 100 steps,
so the checkpoint writer is soaked too. Stages follow the recipe's I/II split of --steps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def children() -> int:
    """Live processes whose parent is this one."""
    me, count = str(os.getpid()), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--problems", type=int, default=16, help="problems per step")
    parser.add_argument("--every", type=int, default=10, help="sample the counters every N steps")
    parser.add_argument("--warmup", type=int, default=100, help="steps left out of the memory slope")
    args = parser.parse_args()

    from selfcorrect.config import load_yaml
    from selfcorrect.tasks import build_task
    from selfcorrect.train import Trainer

    cfg = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    cfg.algo.stage1_steps = args.steps // 2
    cfg.algo.stage2_steps = args.steps - args.steps // 2
    cfg.optim.problems_per_step = args.problems
    cfg.optim.warmup_steps = 0
    cfg.run.progress, cfg.run.save_every, cfg.run.keep_checkpoints = False, 100, 2
    samples: list[tuple[int, float, int, int, int]] = []
    with tempfile.TemporaryDirectory() as folder, build_task(cfg.task.name, cfg.task.options) as task:
        cfg.run.output_dir = folder
        trainer = Trainer(cfg, task)
        start = (rss_mb(), open_fds(), threads(), children())
        real_step = trainer.step

        def watched_step(stage: int) -> dict:
            metrics = real_step(stage)
            done = trainer.state["step"] + 1
            if done % args.every == 0:
                samples.append((done, rss_mb(), open_fds(), threads(), children()))
            return metrics

        trainer.step = watched_step
        trainer.train()
    steps = np.array([s[0] for s in samples if s[0] > args.warmup], dtype=float)
    rss = np.array([s[1] for s in samples if s[0] > args.warmup])
    slope = float(np.polyfit(steps, rss, 1)[0]) * 1000 if len(steps) > 1 else float("nan")
    last = samples[-1]
    print(f"steps: {args.steps}, rss_mb: {start[0]:.1f} -> {last[1]:.1f}, "
          f"rss_slope_mb_per_1000_steps: {slope:.2f}, fds: {start[1]} -> {last[2]}, "
          f"threads: {start[2]} -> {last[3]} (python: {threading.active_count()}), "
          f"children: {start[3]} -> {last[4]}", flush=True)


if __name__ == "__main__":
    main()
