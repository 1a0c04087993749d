"""How each method looks in the report: its place in the tables, display name and colour.

Colours are fixed per method name (not per position in one comparison), so SCoRe is the same
blue in every figure of every report and a reader can compare two reports side by side.
Families share a hue: the SCoRe ablations are blues and greens, STaR oranges, Pair-SFT purples.
"""

from __future__ import annotations

# The paper's row order (SCORE.md Table 2, then the Table 4 ablations); unknown methods follow.
KNOWN_METHODS = (
    # name, display label, colour
    ("base", "Base", "#7f7f7f"),
    ("self_refine", "Self-Refine", "#8c564b"),
    ("star", "STaR w/ D_STaR", "#ff7f0e"),
    ("star_plus", "STaR w/ D⁺_STaR", "#f5b041"),
    ("pair_sft", "Pair-SFT w/ D_SFT", "#9467bd"),
    ("pair_sft_plus", "Pair-SFT w/ D⁺_SFT", "#c5a3e0"),
    ("single_turn", "Single-turn RL", "#bcbd22"),
    ("score", "SCoRe", "#1f4e9c"),
    ("score_no_stage1", "SCoRe w/o Stage I", "#4fa3e0"),
    ("score_no_shaping", "SCoRe w/o reward shaping", "#17becf"),
    ("score_star_stage2", "SCoRe w/ STaR in Stage II", "#2ca02c"),
    ("score_offline_turn1", "SCoRe w/o online turn-1 samples", "#d62728"),
)
_ORDER = {name: i for i, (name, _, _) in enumerate(KNOWN_METHODS)}
_LABELS = {name: label for name, label, _ in KNOWN_METHODS}
_COLORS = {name: color for name, _, color in KNOWN_METHODS}
# for methods the table above does not know: distinct from the known colours, then repeating
_SPARE_COLORS = ("#e377c2", "#000000", "#aec7e8", "#98df8a", "#ff9896", "#c49c94", "#dbdb8d", "#9edae5")

# one colour per transition, meaning the same in every report
TRANSITION_COLORS = {"c→c": "#4c9a5e", "i→c": "#3b75c4", "c→i": "#d0453b", "i→i": "#b8b8b8"}


def method_label(name: str) -> str:
    """The paper's name for a known method; otherwise the folder name made readable."""
    return _LABELS.get(name, name.replace("_", " "))


def method_sort_key(name: str) -> tuple[int, str]:
    return (_ORDER.get(name, len(_ORDER)), name)


def method_color(name: str) -> str:
    """A fixed colour for a known method, and a stable one (by name) for an unknown one."""
    if name in _COLORS:
        return _COLORS[name]
    return _SPARE_COLORS[sum(name.encode()) % len(_SPARE_COLORS)]
