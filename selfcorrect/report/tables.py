"""The paper-format tables (SCORE.md Tables 1, 2 and 4): metrics in percent, and the budget.

Only finished runs (trained and evaluated) count; a method with none shows 'pending'. Over
seeds the tables give mean ± sd, sd being the sample standard deviation (n - 1), because the
question is how much a rerun with a new seed would move the number. With one seed the cell shows
that seed's 95% bootstrap interval over problems instead.
"""

from __future__ import annotations

import math

import numpy as np

from .collect import Comparison, Method, Run
from .document import Table

METRIC_COLUMNS = (
    ("Acc@t1", "acc_t1"),
    ("Acc@t2", "acc_t2"),
    ("Δ(t1,t2)", "delta"),
    ("Δi→c", "delta_i_to_c"),
    ("Δc→i", "delta_c_to_i"),
)
SIGNED = {"delta"}  # a change: shown with its sign, as the paper does
BUDGET_COLUMNS = (
    ("episodes sampled", "episodes_sampled"),
    ("gradient updates", "gradient_updates"),
    ("train time", "train_seconds"),
)
PENDING = "pending"
NOT_APPLICABLE = "n/a"
MISSING = "–"


def percent(fraction: float, signed: bool = False) -> str:
    """A fraction as a percentage with one decimal; never '-0.0'; '+' before a positive change."""
    value = round(100.0 * fraction, 1) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{value:+.1f}" if signed and value != 0.0 else f"{value:.1f}"


def mean_sd(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def summary_table(comparison: Comparison) -> Table:
    """One row per method: seeds counted, then each metric as mean ± sd over finished seeds."""
    rows = []
    for method in comparison.methods:
        runs = method.finished_runs
        if method.not_applicable:
            rows.append([method.label, NOT_APPLICABLE] + [NOT_APPLICABLE] * len(METRIC_COLUMNS))
            continue
        rows.append([method.label, _seed_count(method)] + [_over_seeds(runs, key) for _, key in METRIC_COLUMNS])
    return Table(["Approach", "seeds"] + [h for h, _ in METRIC_COLUMNS], rows)


def seed_table(comparison: Comparison) -> Table:
    """One row per finished run: each metric with its 95% bootstrap interval, and the problem count.
    (The budget per run is in budget_table, as mean and range: this table is wide already.)"""
    rows = []
    for method in comparison.methods:
        for run in method.finished_runs:
            cells = [_with_interval(run, key) for _, key in METRIC_COLUMNS]
            n = run.metrics.get("n")
            rows.append([method.label, str(run.seed)] + cells + [MISSING if n is None else str(int(n))])
    return Table(["Approach", "seed"] + [f"{h} [95% CI]" for h, _ in METRIC_COLUMNS] + ["problems"], rows)


def budget_table(comparison: Comparison) -> Table:
    """What each method actually spent per run (mean over finished seeds; the range when seeds differ)."""
    rows = []
    for method in comparison.methods:
        runs = method.finished_runs
        if method.not_applicable:
            rows.append([method.label, NOT_APPLICABLE] + [NOT_APPLICABLE] * len(BUDGET_COLUMNS))
            continue
        cells = []
        for _, key in BUDGET_COLUMNS:
            values = [v for v in (run.budget(key) for run in runs) if v is not None]
            cells.append(_budget_cell(values, key) if runs else PENDING)
        rows.append([method.label, _seed_count(method)] + cells)
    return Table(["Approach", "seeds"] + [h + " (per run)" for h, _ in BUDGET_COLUMNS], rows)


def _seed_count(method: Method) -> str:
    done, total = len(method.finished_runs), len(method.runs)
    return str(done) if done == total else f"{done} of {total}"


def _over_seeds(runs: list[Run], key: str) -> str:
    if not runs:
        return PENDING
    values = [run.metrics[key] for run in runs if key in run.metrics]
    if not values:
        return MISSING
    if len(values) == 1:  # one seed, or only one of several has this metric (a NaN dropped)
        [run] = [r for r in runs if key in r.metrics]
        cell = _with_interval(run, key)
        return cell if len(runs) == 1 else f"{cell} (1 seed)"
    mean, sd = mean_sd(values)
    cell = f"{percent(mean, key in SIGNED)} ± {percent(sd)}"
    return cell if len(values) == len(runs) else f"{cell} ({len(values)} seeds)"


def _with_interval(run: Run, key: str) -> str:
    value = run.metrics.get(key)
    if value is None:
        return MISSING
    cell = percent(value, key in SIGNED)
    if key in run.intervals:
        lo, hi = run.intervals[key]
        cell += f" [{percent(lo)}, {percent(hi)}]"
    return cell


def _budget_cell(values: list[float], key: str) -> str:
    if not values:
        return MISSING
    mean = _budget_value(float(np.mean(values)), key)
    if min(values) == max(values):
        return mean
    return f"{mean} ({_budget_value(min(values), key)}–{_budget_value(max(values), key)})"


def _budget_value(value: float | None, key: str) -> str:
    if value is None:
        return MISSING
    return duration(value) if key == "train_seconds" else f"{value:,.0f}"


def duration(seconds: float) -> str:
    """Seconds as '42 s', '12.5 min' or '3.2 h'."""
    if not math.isfinite(seconds):
        return MISSING
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
