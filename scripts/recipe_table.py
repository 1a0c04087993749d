"""The README's SmolLM2 table from scripts/smollm2_recipe.sh's runs: the base model, each seed's
trained model (Acc@t1, Acc@t2, Δ, Δi→c, Δc→i with 95% bootstrap intervals, in %), the wall
time of each seed, and the issue's three targets checked per seed.

    python scripts/recipe_table.py [runs/smollm2-recipe]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i")


def load(folder: Path) -> dict:
    """metrics.json of the one evaluation under `folder` (eval/<model>/metrics.json)."""
    found = sorted(folder.glob("eval/*/metrics.json"))
    if len(found) != 1:
        raise SystemExit(f"{folder}: expected one eval/*/metrics.json, found {len(found)}")
    return json.loads(found[0].read_text())


def cell(result: dict, key: str) -> str:
    lo, hi = result["intervals"][key]
    return f"{100 * result['metrics'][key]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def targets(result: dict, base: dict) -> str:
    """The three targets: Δ > 0 with its interval above 0, Δi→c > Δc→i, Acc@t2 >= base Acc@t2 + 5."""
    m = result["metrics"]
    checks = [result["intervals"]["delta"][0] > 0, m["delta_i_to_c"] > m["delta_c_to_i"],
              m["acc_t2"] >= base["metrics"]["acc_t2"] + 0.05 - 1e-9]
    return " ".join("yes" if ok else "no" for ok in checks)


def main(root: Path) -> None:
    base = load(root / "base")
    print("| model | Acc@t1 | Acc@t2 | Δ | Δi→c | Δc→i | minutes | targets met (Δ CI > 0, Δi→c > Δc→i, t2 ≥ base + 5) |")
    print("|---|---|---|---|---|---|---|---|")
    print("| base | " + " | ".join(cell(base, k) for k in KEYS) + " | | |")
    for seed in sorted(root.glob("seed*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else 0):
        if not list(seed.glob("eval/*/metrics.json")):
            continue
        result = load(seed)
        seconds = seed / "seconds.txt"
        minutes = f"{int(seconds.read_text().split()[-2]) / 60:.1f}" if seconds.exists() else "?"
        print(f"| SCoRe, {seed.name.replace('seed', 'seed ')} | " + " | ".join(cell(result, k) for k in KEYS)
              + f" | {minutes} | {targets(result, base)} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/smollm2-recipe"))
