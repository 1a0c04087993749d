"""The report's figures that compare methods (transitions, edit ratios, attempts, scaling), as PNG.

Every function returns the `document.Figure`s it wrote (none when there is nothing to draw), and
every method keeps its colour from `styles.method_color` in every figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D

from .canvas import new_figure, save
from .collect import Comparison, Run
from .curves import training_figure
from .derived import TRANSITIONS, EditRatioCache, accuracy_by_attempt, transition_counts
from .document import Figure
from .styles import TRANSITION_COLORS, method_color

FIGURE_PREFIXES = ("training-", "transitions", "edit-ratio", "accuracy-by-attempt", "scaling")
"""Names of the files this module writes, so a new report can remove the stale ones."""


def draw_all(comparison: Comparison, out_dir: Path, cache: EditRatioCache) -> list[Figure]:
    """Every figure the comparison has data for, in report order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    figures += transitions_figure(comparison, out_dir)
    figures += edit_ratio_figure(comparison, out_dir, cache)
    figures += accuracy_by_attempt_figure(comparison, out_dir)
    figures += scaling_figure(comparison, out_dir)
    for method in comparison.methods:
        figures += training_figure(method, out_dir)
    return figures


# ---------------------------------------------------------------------------------------------
# Transitions between attempt 1 and attempt 2
# ---------------------------------------------------------------------------------------------

def transitions_figure(comparison: Comparison, out_dir: Path) -> list[Figure]:
    """Stacked bars: how each method's problems moved from attempt 1 to attempt 2 (mean over seeds)."""
    rows = []
    for method in comparison.methods:
        fractions = []
        for run in method.finished_runs:
            if run.outcomes is not None and run.outcomes.attempts >= 2:
                counts = transition_counts(run.outcomes.correct)
                total = sum(counts.values())
                fractions.append([counts[t] / total for t in TRANSITIONS])
        if fractions:
            rows.append((method, 100.0 * np.mean(fractions, axis=0), len(fractions)))
    if not rows:
        return []
    fig = new_figure(10.5, 1.2 + 0.55 * len(rows))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    meanings = {"c→c": "right, stays right", "i→c": "wrong, fixed", "c→i": "right, broken", "i→i": "wrong, stays wrong"}
    for k, transition in enumerate(TRANSITIONS):
        left = np.array([r[1][:k].sum() for r in rows])
        width = np.array([r[1][k] for r in rows])
        ax.barh(y, width, left=left, color=TRANSITION_COLORS[transition], edgecolor="white",
                label=f"{transition} ({meanings[transition]})")
        for yi, l, w in zip(y, left, width):
            if w >= 5.0:
                ax.text(l + w / 2, yi, f"{w:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if transition != "i→i" else "#222222")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{m.label} ({n} seed{'s' if n > 1 else ''})" for m, _, n in rows])
    for tick, (method, _, _) in zip(ax.get_yticklabels(), rows):
        tick.set_color(method_color(method.name))
        tick.set_fontweight("bold")
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of test problems")
    ax.set_title("Attempt 1 → attempt 2: what self-correction did to each problem", fontsize=12)
    fig.legend(ncols=4, fontsize=8.5, loc="outside lower center", frameon=False)
    path = out_dir / "transitions.png"
    save(fig, path)
    caption = ("Share of test problems by correctness at attempt 1 and attempt 2, from the evaluation records "
               "(mean over finished seeds; a verifier failure counts as wrong). i→c is Δi→c, c→i is Δc→i.")
    return [Figure(path, "Transitions between attempts", caption)]


# ---------------------------------------------------------------------------------------------
# Edit distance between attempts (the collapse diagnostic)
# ---------------------------------------------------------------------------------------------

def edit_ratio_figure(comparison: Comparison, out_dir: Path, cache: EditRatioCache) -> list[Figure]:
    """Histograms of the attempt-1 vs attempt-2 edit-distance ratio, one panel per method."""
    panels = []
    for method in comparison.methods:
        values = [cache.ratios(run) for run in method.finished_runs]
        values = [v for v in values if v is not None and len(v)]
        if values:
            panels.append((method, np.concatenate(values)))
    if not panels:
        return []
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = new_figure(4.2 * columns, 2.9 * rows + 0.6)
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True).ravel()
    bins = np.linspace(0.0, 1.0, 21)
    for ax, (method, ratios) in zip(axes, panels):
        ax.hist(ratios, bins=bins, weights=np.full(len(ratios), 100.0 / len(ratios)),
                color=method_color(method.name), edgecolor="white")
        identical = 100.0 * float(np.mean(ratios == 0.0))
        ax.set_title(f"{method.label}\nidentical: {identical:.0f}%, mean ratio {ratios.mean():.2f}", fontsize=10)
        ax.set_xlabel("edit distance ratio, attempt 1 vs 2")
        ax.set_ylabel("% of problems")
        ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("How much the second attempt changes the first", fontsize=13)
    path = out_dir / "edit-ratio.png"
    save(fig, path)
    caption = ("Character-level Levenshtein distance between attempt 1 and attempt 2 divided by their total "
               "length (0 = unchanged), over test problems of all finished seeds. A spike at 0 is the "
               "collapse to not editing that SCoRe's Stage I is meant to prevent.")
    return [Figure(path, "Edit distance between attempts", caption)]


# ---------------------------------------------------------------------------------------------
# Accuracy over more attempts, and inference-time scaling
# ---------------------------------------------------------------------------------------------

def accuracy_by_attempt_figure(comparison: Comparison, out_dir: Path) -> list[Figure]:
    """Accuracy at attempt 1..A per method (records with > 2 attempts, or scaling.json by_attempt)."""
    fig = new_figure(7.5, 4.6)
    ax = fig.subplots()
    drawn = False
    for method in comparison.methods:
        by_source: dict[str, list] = {}
        for found in filter(None, (accuracy_by_attempt(run) for run in method.runs)):
            by_source.setdefault(found[2], []).append(found[:2])
        for source, series in by_source.items():
            sampled = source.startswith("sampled")
            for x, y, sd, label in _mean_over_seeds(series, f"{method.label} ({source})"):
                _line_with_band(ax, x, y, sd, method_color(method.name), ":" if sampled else "-",
                                "^" if sampled else "o", label)
                drawn = True
    if not drawn:
        return []
    ax.set_title("Accuracy at each attempt", fontsize=12)
    ax.set_xlabel("attempt")
    ax.set_ylabel("accuracy (% of test problems)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out_dir / "accuracy-by-attempt.png"
    save(fig, path)
    caption = ("Accuracy after each further self-correction attempt (mean over seeds, band ± sd): from the greedy "
               "evaluation when it made more than two attempts (solid), else from the sampled attempts of the "
               "inference-scaling run (dotted); the two are not comparable with each other. The paper's base model "
               "never beats its first attempt; SCoRe improves slightly past attempt 2, then plateaus.")
    return [Figure(path, "Accuracy by attempt", caption)]


def scaling_figure(comparison: Comparison, out_dir: Path) -> list[Figure]:
    """Accuracy against samples per problem: parallel + majority vote vs sequential self-correction + vote."""
    fig = new_figure(8.0, 4.8)
    ax = fig.subplots()
    styles = {"parallel": ("--", "s"), "sequential": ("-", "o")}
    methods_drawn = []
    for method in comparison.methods:
        drawn = False
        for mode, (linestyle, marker) in styles.items():
            series = [s for s in (_scaling_series(run, mode) for run in method.runs) if s is not None]
            for x, y, sd, _ in _mean_over_seeds(series, method.label):
                _line_with_band(ax, x, y, sd, method_color(method.name), linestyle, marker, None)
                drawn = True
        if drawn:
            methods_drawn.append(method)
    if not methods_drawn:
        return []
    ax.set_xscale("log", base=2)
    ticks = sorted({float(s) for m in methods_drawn for run in m.runs for mode in styles
                    for s in (_scaling_series(run, mode) or ([], []))[0]})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_title("Inference-time scaling", fontsize=12)
    ax.set_xlabel("samples per problem (log scale)")
    ax.set_ylabel("accuracy (% of test problems)")
    ax.grid(alpha=0.3, which="both")
    method_handles = [Line2D([], [], color=method_color(m.name), linewidth=2.5, label=m.label) for m in methods_drawn]
    style_handles = [Line2D([], [], color="#555555", linestyle="--", marker="s", label="parallel + majority vote"),
                     Line2D([], [], color="#555555", linestyle="-", marker="o", label="sequential: + self-correction, vote")]
    first = ax.legend(handles=method_handles, fontsize=8, loc="lower right")
    ax.add_artist(first)
    ax.legend(handles=style_handles, fontsize=8, loc="upper left")
    path = out_dir / "scaling.png"
    save(fig, path)
    caption = ("With a budget of 2K samples per problem: 2K parallel attempts with a majority vote (dashed) against "
               "K attempts each followed by one self-correction, voting over the corrected answers (solid). "
               "Mean over seeds, band ± sd.")
    return [Figure(path, "Inference-time scaling", caption)]


def _scaling_series(run: Run, mode: str) -> tuple[list[float], list[float]] | None:
    part = (run.scaling or {}).get(mode)
    if not isinstance(part, dict):
        return None
    samples, acc = part.get("samples"), part.get("acc")
    if not (isinstance(samples, list) and isinstance(acc, list) and len(samples) == len(acc) > 0):
        return None
    try:
        return [float(s) for s in samples], [float(a) for a in acc]
    except (TypeError, ValueError):
        return None


def _mean_over_seeds(series: list[tuple[list, list]], label: str):
    """Yield (x, mean y, sd or None, label): one line when all seeds share x, else one per seed."""
    if not series:
        return
    if all(list(s[0]) == list(series[0][0]) for s in series):
        ys = np.asarray([s[1] for s in series], dtype=np.float64)
        sd = ys.std(axis=0, ddof=1) if len(series) > 1 else None
        yield np.asarray(series[0][0], dtype=np.float64), ys.mean(axis=0), sd, label
        return
    for i, (x, y) in enumerate(series):
        yield np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64), None, f"{label} ({i + 1})"


def _line_with_band(ax, x, y, sd, color, linestyle, marker, label) -> None:
    ax.plot(x, 100.0 * y, linestyle=linestyle, marker=marker, color=color, linewidth=1.8, markersize=4.5, label=label)
    if sd is not None:
        ax.fill_between(x, 100.0 * (y - sd), 100.0 * (y + sd), color=color, alpha=0.15, linewidth=0)
