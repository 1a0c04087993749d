"""A matplotlib figure on the Agg canvas, saved as PNG: the one way the report draws.

Figures are built as `matplotlib.figure.Figure` objects on an Agg canvas instead of through
pyplot, so drawing touches no global state: a report can be made from a training process or a
thread without a display, and no open figure is left behind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure as MplFigure

DPI = 110


def new_figure(width: float, height: float) -> MplFigure:
    """A figure of width x height inches with constrained layout (labels never overlap)."""
    fig = MplFigure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: MplFigure, path: Path) -> None:
    fig.savefig(path, format="png", facecolor="white")


def shades(color: str, n: int) -> list[tuple[float, float, float]]:
    """n shades of one colour, from the colour itself towards lighter: one per seed of a method."""
    base = np.asarray(to_rgb(color))
    return [tuple(base + (1.0 - base) * (0.55 * i / max(1, n - 1) if n > 1 else 0.0)) for i in range(n)]
