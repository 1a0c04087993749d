"""The update with freed host memory kept for reuse (the trainer's default on a CPU) against
glibc's default, side by side in one run.

    OMP_NUM_THREADS=2 python benchmarks/host_memory_speed.py             # SmolLM2, the vs_trl settings
    python benchmarks/host_memory_speed.py --rounds 3 --model tiny

The heap the setting leaves behind cannot be undone (selfcorrect/host_memory.py), so each way
runs in processes of its own: `update_speed.py --ways shared` with SELFCORRECT_KEEP_FREED_MEMORY=1,
then =0, alternating for --rounds rounds (one process at a time). Each process draws the same
seeded rollout and times --repeats updates after a warm-up; a way's time is the median of all
its timed updates. Extra arguments go to update_speed.py (its --model, --problems, ...).

The last line printed is one JSON object: seconds per way, their ratio (default / kept) and
every update's time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WAYS = {"kept": "1", "default": "0"}  # SELFCORRECT_KEEP_FREED_MEMORY


def one_process(setting: str, repeats: int, extra: list[str]) -> dict:
    """update_speed.py's JSON result for one process with the setting."""
    env = {**os.environ, "SELFCORRECT_KEEP_FREED_MEMORY": setting}
    proc = subprocess.run([sys.executable, str(HERE / "update_speed.py"), "--ways", "shared", "--repeats",
                           str(repeats), *extra], env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"update_speed.py failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="processes per way, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="timed updates per process (after a warm-up)")
    args, extra = parser.parse_known_args()
    runs: dict[str, list[float]] = {way: [] for way in WAYS}
    tokens = set()
    for round_ in range(args.rounds):
        for way, setting in WAYS.items():
            result = one_process(setting, args.repeats, extra)
            runs[way] += result["shared_runs"]
            tokens.add(result["shared_tokens"])
            print(f"round {round_ + 1}, {way:7}: {', '.join(f'{s:.2f}' for s in result['shared_runs'])} s", flush=True)
    if len(tokens) != 1:
        raise SystemExit(f"the processes drew different rollouts ({sorted(tokens)} positions): not comparable")
    median = {way: statistics.median(seconds) for way, seconds in runs.items()}
    ratio = median["default"] / median["kept"]
    print(f"update: memory kept {median['kept']:.2f} s, glibc's default {median['default']:.2f} s: {ratio:.2f}x")
    print(json.dumps({"kept_seconds": round(median["kept"], 4), "default_seconds": round(median["default"], 4),
                      "ratio": round(ratio, 4), "runs": runs, "positions": tokens.pop(), "rounds": args.rounds,
                      "repeats": args.repeats, "args": extra}))


if __name__ == "__main__":
    main()
