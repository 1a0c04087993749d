"""Soak the code sandbox: many hostile programs, no leaked processes.

    python benchmarks/sandbox_soak.py [--count 10000] [--tier auto] [--workers 4] [--timeout 2]

A mix of correct, wrong and crashing programs, infinite loops (busy and sleeping), fork bombs,
memory hogs, output floods and daemons that double-fork and setsid. Leaks are checked two
ways after the run (with a few seconds' grace for killed processes to vanish):
- descendants of this process that were not there before;
- any process on the host carrying this run's marker (a random PYTHONHASHSEED given only to
  this run's programs) in its environment, wherever it was re-parented.
Prints: programs: N, leaked_processes: L, verdicts: {...}, per_s: X
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfcorrect.verify.sandbox import Program, Sandbox  # noqa: E402
from selfcorrect.verify.sandbox_harness import _children_of  # noqa: E402  (the harness's /proc child walk)

F = ("f",)
KINDS = {  # kind: (weight, program)
    "correct": (40, Program("def f(x):\n    return x * 2\n", "assert f(3) == 6\n", exports=F)),
    "wrong": (20, Program("def f(x):\n    return x + 2\n", "assert f(3) == 6\n", exports=F)),
    "crash": (12, Program("def f(x):\n    return 1 // 0\n", "assert f(3) == 6\n", exports=F)),
    "exit": (4, Program("import os\nos._exit(0)\ndef f(x):\n    return x * 2\n",
                        "assert f(3) == 6\n", exports=F)),
    "busy_loop": (1, Program("while True:\n    pass\n")),
    "sleep_loop": (1, Program("import time\nwhile True:\n    time.sleep(0.1)\n")),
    "fork_bomb": (2, Program("import os\nwhile True:\n    try:\n        os.fork()\n"
                             "    except OSError:\n        pass\n")),
    "memory_hog": (6, Program("blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 24))\n")),
    "output_flood": (6, Program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")),
    "daemon": (4, Program("import os, time\nif os.fork() == 0:\n    os.setsid()\n"
                          "    if os.fork() == 0:\n        time.sleep(300)\n    os._exit(0)\n"
                          "def f(x):\n    return x * 2\n", "assert f(3) == 6\n", exports=F)),
    "child_sleeps": (4, Program("import subprocess\nsubprocess.Popen(['sleep', '300'])\n"
                                "def f(x):\n    return x * 2\n", "assert f(3) == 6\n",
                                exports=F)),
}


def programs(count: int, seed: int = 0) -> list[tuple[str, Program]]:
    rng = random.Random(seed)
    names = list(KINDS)
    weights = [KINDS[n][0] for n in names]
    return [(kind, KINDS[kind][1]) for kind in rng.choices(names, weights, k=count)]


def descendants(pid: int | None = None) -> set[int]:
    found, frontier = set(), [pid or os.getpid()]
    while frontier:
        kids = _children_of(frontier.pop())
        found.update(kids)
        frontier += kids
    return found


def marked(marker: bytes) -> set[int]:
    """Processes whose environment holds this run's marker (readable as root or same uid)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as handle:
                    if marker in handle.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                pass
    return found


def run(count: int = 10000, tier: str = "auto", workers: int = 4, timeout_s: float = 2.0,
        seed: int = 0, batch: int = 200) -> dict:
    hash_seed = random.SystemRandom().randrange(1, 2**32 - 1)
    marker = f"PYTHONHASHSEED={hash_seed}".encode()
    before = descendants()
    verdicts: Counter = Counter()
    mismatches: Counter = Counter()
    expected = {"correct": "passed", "daemon": "passed", "child_sleeps": "passed",
                "busy_loop": "timeout", "sleep_loop": "timeout"}
    items = programs(count, seed)
    start = time.monotonic()
    with Sandbox(tier=tier, workers=workers, timeout_s=timeout_s, memory_mb=512,
                 hash_seed=hash_seed) as box:
        for at in range(0, count, batch):
            chunk = items[at:at + batch]
            for (kind, _), result in zip(chunk, box.run([p for _, p in chunk])):
                verdicts[result.status] += 1
                want = expected.get(kind, "failed")
                if result.status != want:
                    mismatches[f"{kind}->{result.status}"] += 1
        used_tier = box.tier
    elapsed = time.monotonic() - start
    leaked: set[int] = set()
    give_up = time.monotonic() + 5.0
    while True:
        leaked = (descendants() - before) | marked(marker)
        leaked.discard(os.getpid())
        if not leaked or time.monotonic() > give_up:
            break
        time.sleep(0.2)
    for pid in sorted(leaked):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:100]
        except OSError:
            cmd = b"?"
        print(f"leaked process {pid}: {cmd!r}", file=sys.stderr)
    return {"programs": count, "leaked_processes": len(leaked),
            "verdicts": dict(sorted(verdicts.items())), "per_s": round(count / elapsed, 1),
            "tier": used_tier, "unexpected": dict(mismatches)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--tier", default="auto", choices=["auto", "bwrap", "rlimit"])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    s = run(args.count, args.tier, args.workers, args.timeout, args.seed)
    print(f"programs: {s['programs']}, leaked_processes: {s['leaked_processes']}, "
          f"verdicts: {s['verdicts']}, per_s: {s['per_s']} (tier {s['tier']}; "
          f"unexpected verdicts by kind: {s['unexpected']})")
    sys.exit(1 if s["leaked_processes"] else 0)


if __name__ == "__main__":
    main()
