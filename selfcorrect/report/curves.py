"""Training curves: one figure per method with a panel for each group of keys its metrics.jsonl logs.

RL methods log acc/reward/KL per attempt and a stage; SFT methods log a loss and an iteration.
Panels appear only for keys some run of the method has, so one function draws both kinds, and a
run still training is drawn as far as it got.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .canvas import new_figure, save, shades
from .collect import Method, Run
from .document import Figure
from .styles import method_color

# (panel title, y-axis label, ((metrics.jsonl key, legend name), ...), values are fractions shown in %)
CURVE_PANELS = (
    ("Accuracy on training samples", "accuracy (%)", (("acc_t1", "attempt 1"), ("acc_t2", "attempt 2")), True),
    ("Δ(t1,t2) on training samples", "Δ (% of problems)", (("delta", "Δ"),), True),
    ("Reward per attempt", "mean reward", (("reward_t1", "attempt 1"), ("reward_t2", "attempt 2")), False),
    ("KL to the reference", "KL per token", (("kl_t1", "attempt 1"), ("kl_t2", "attempt 2")), False),
    ("Training loss", "loss", (("loss", "loss"),), False),
)
ATTEMPT_STYLES = {"attempt 1": "--", "attempt 2": "-"}
SMOOTH_ABOVE = 60  # curves with more points than this are drawn as a moving average


def training_figure(method: Method, out_dir: Path) -> list[Figure]:
    """One figure per method: a panel for each group of logged keys that any of its runs has."""
    runs = [run for run in method.runs if run.curve]
    panels = [p for p in CURVE_PANELS if any(key in row for run in runs for row in run.curve for key, _ in p[2])]
    if not panels:
        return []
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = new_figure(4.6 * columns, 3.4 * rows + 0.5)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    smoothed = False
    for ax, (title, ylabel, keys, is_fraction) in zip(axes, panels):
        for shade, run in zip(shades(method_color(method.name), len(runs)), runs):
            for key, name in keys:
                x, y = _series(run.curve, key)
                if len(y) == 0:
                    continue
                if len(y) > SMOOTH_ABOVE:
                    x, y = _moving_average(x, y)
                    smoothed = True
                y = 100.0 * y if is_fraction else y
                label = f"{name}, seed {run.seed}" + ("" if run.done else " (running)")
                ax.plot(x, y, ATTEMPT_STYLES.get(name, "-"), color=shade, linewidth=1.6, label=label)
        _mark_phases(ax, runs)
        if title.startswith("Δ"):
            ax.axhline(0.0, color="#555555", linewidth=0.8)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="best")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    note = f" (moving average over {_window_note(runs)} steps)" if smoothed else ""
    fig.suptitle(f"{method.label}: training curves{note}", fontsize=13)
    path = out_dir / f"training-{_slug(method.name)}.png"
    save(fig, path)
    caption = f"{method.label} during training, one line per seed"
    if any(len(keys) > 1 for _, _, keys, _ in panels):
        caption += " (attempt 1 dashed, attempt 2 solid)"
    if any(title.startswith(("Accuracy", "Δ")) for title, *_ in panels):
        caption += "; accuracy and Δ are on the problems sampled for training, not the test set"
    caption += ". Dotted vertical lines mark where a new stage or iteration starts."
    return [Figure(path, f"{method.label}: training curves", caption)]


def _series(curve: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) for the rows that log `key` with a finite number; step = row index + 1 if absent."""
    xs, ys = [], []
    for i, row in enumerate(curve):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            step = row.get("step")
            xs.append(step if isinstance(step, (int, float)) else i + 1)
            ys.append(float(value))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def _window(n: int) -> int:
    return max(2, n // 30)


def _window_note(runs: list[Run]) -> str:
    windows = sorted({_window(len(run.curve)) for run in runs if len(run.curve) > SMOOTH_ABOVE})
    return "/".join(str(w) for w in windows)


def _moving_average(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trailing mean over a window that grows with the curve (about 30 windows per curve)."""
    w = _window(len(y))
    kernel = np.ones(w) / w
    return x[w - 1:], np.convolve(y, kernel, mode="valid")


def _mark_phases(ax, runs: list[Run]) -> None:
    """A dotted line where 'stage' or 'iteration' changes (taken from the first run that logs it)."""
    for key, name in (("stage", "stage"), ("iteration", "iteration")):
        for run in runs:
            changes = _changes(run.curve, key)
            if changes:
                for step, value in changes:
                    ax.axvline(step, color="#444444", linestyle=":", linewidth=1.0)
                    ax.annotate(f"{name} {value}", xy=(step, 1.0), xycoords=("data", "axes fraction"),
                                xytext=(3, -12), textcoords="offset points", fontsize=7.5, color="#444444")
                break


def _changes(curve: list[dict], key: str) -> list[tuple[float, object]]:
    out, last = [], None
    for i, row in enumerate(curve):
        if key not in row:
            continue
        value = row[key]
        if last is not None and value != last:
            step = row.get("step")
            out.append((step if isinstance(step, (int, float)) else i + 1, value))
        last = value
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "method"
