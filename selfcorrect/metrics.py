"""Self-correction metrics (SCORE.md §4), bootstrap intervals, edit-distance ratio, tables.

Every metric is a fraction of ALL N test problems. A verifier failure (NaN) counts as not
correct — the problem still sits in the denominator, so a flaky verifier cannot inflate
accuracy — and the number of such entries is reported as 'n_verifier_failed'.

All float metrics are means over problems of a per-problem 0/1 feature (`_features`), which is
what makes the bootstrap a matrix product: a resample is a vector of counts over
problems, and each resampled metric is counts @ features / N.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def _as_correct(correct: np.ndarray) -> np.ndarray:
    """Validate an [N, A] array of 0/1/NaN; return it as float64 (a copy)."""
    c = np.array(correct, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"correct must be [N problems, A attempts], got shape {c.shape}")
    n, a = c.shape
    if n == 0 or a == 0:
        raise ValueError(f"correct must have at least one problem and one attempt, got shape {c.shape}")
    bad = ~(np.isnan(c) | (c == 0.0) | (c == 1.0))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(f"correct[{i}, {j}] = {float(c[i, j])!r}; entries must be 0, 1 or NaN (verifier failed)")
    return c


def _features(c: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Per-problem indicators whose means are the float metrics.

    c: [N, A] float with NaN. Returns (names, F [N, K] float64), NaN scored as not correct.
    """
    ok = c == 1.0  # NaN == 1.0 is False: a failed verifier is not a correct answer
    a = c.shape[1]
    names = [f"acc_t{i + 1}" for i in range(a)]
    cols = [ok[:, i] for i in range(a)]
    if a >= 2:
        i_to_c = ~ok[:, 0] & ok[:, 1]
        c_to_i = ok[:, 0] & ~ok[:, 1]
        names += ["delta", "delta_i_to_c", "delta_c_to_i"]
        # delta per problem is in {-1, 0, 1}; its mean is acc_t2 - acc_t1
        cols += [i_to_c.astype(np.float64) - c_to_i, i_to_c, c_to_i]
    if a > 2:
        names.append(f"delta_t1_t{a}")
        cols.append(ok[:, a - 1].astype(np.float64) - ok[:, 0])
    return names, np.stack([np.asarray(col, dtype=np.float64) for col in cols], axis=1)


def self_correction_metrics(correct: np.ndarray) -> dict:
    """Acc@t1..t{A}, Δ(t1,t2), Δi→c, Δc→i (and Δ(t1,t{A}) when A > 2) as fractions of all N.

    correct: [N, A] of 0/1, NaN where the verifier failed (scored not correct, and counted).
    Returns {'n': N, 'n_verifier_failed': number of NaN entries, 'acc_t1', ..., 'acc_t{A}',
    and when A >= 2 'delta' = acc_t2 - acc_t1, 'delta_i_to_c', 'delta_c_to_i'; when A > 2 also
    'delta_t1_t{A}'}. Identity: acc_t2 = acc_t1 + delta_i_to_c - delta_c_to_i.
    """
    c = _as_correct(correct)
    names, feats = _features(c)
    out: dict = {"n": int(c.shape[0]), "n_verifier_failed": int(np.isnan(c).sum())}
    for name, value in zip(names, feats.mean(axis=0)):
        out[name] = float(value)
    return out


_BOOT_CHUNK_ELEMENTS = 4_000_000


def bootstrap_intervals(
    correct: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
    clusters: Sequence | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for every float metric of `self_correction_metrics`.

    correct: [N, A] as there. clusters: [N] labels; problems with the same label are not
    independent (e.g. a + b and b + a) and are drawn together, as one unit (None: every problem
    is its own unit). Resamples units with replacement `n_boot` times (turned into a count
    vector per resample, so each chunk of resamples is one [b, N] @ [N, K] product; a metric is
    the count-weighted mean over the drawn problems). Returns name -> (lo, hi), the (1-level)/2
    and (1+level)/2 quantiles.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    c = _as_correct(correct)
    names, feats = _features(c)
    n = c.shape[0]
    if clusters is None:
        unit = np.arange(n)
    else:
        if len(clusters) != n:
            raise ValueError(f"clusters: {len(clusters)} labels for {n} problems")
        labels: dict = {}
        unit = np.array([labels.setdefault(x, len(labels)) for x in clusters], dtype=np.int64)
    g = int(unit.max()) + 1 if n else 0  # [N] -> unit index in 0..g-1
    rng = np.random.default_rng(seed)
    stats = np.empty((n_boot, feats.shape[1]))  # [n_boot, K]
    step = max(1, _BOOT_CHUNK_ELEMENTS // max(n, 1))  # bound the [chunk, N] index array for large N
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        idx = rng.integers(0, g, size=(b, g))  # units drawn with replacement, one row per resample
        # how often each unit, then each problem, was drawn in each resample: [b, g] -> [b, N]
        drawn = np.bincount((idx + g * np.arange(b)[:, None]).ravel(), minlength=b * g).reshape(b, g)
        counts = drawn[:, unit].astype(np.float64)
        stats[s : s + b] = counts @ feats / counts.sum(axis=1, keepdims=True)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [tail, 1.0 - tail], axis=0)
    return {name: (float(lo[k]), float(hi[k])) for k, name in enumerate(names)}


def _levenshtein(a: np.ndarray, b: np.ndarray) -> int:
    """Levenshtein distance of two int arrays, one DP row per element of `a`, vectorised over `b`.

    Substitution and deletion come from the previous row; insertion within the row is the
    running minimum d[j] = min_k (tmp[k] + j - k) = j + cummin(tmp - k), so no inner Python loop.
    """
    if len(a) < len(b):
        a, b = b, a  # keep rows short
    m = len(b)
    if m == 0:
        return len(a)
    idx = np.arange(m + 1)
    prev = idx.copy()
    for i, x in enumerate(a, start=1):
        tmp = np.empty(m + 1, dtype=np.int64)
        tmp[0] = i
        tmp[1:] = np.minimum(prev[:-1] + (b != x), prev[1:] + 1)
        prev = np.minimum.accumulate(tmp - idx) + idx
    return int(prev[-1])


def edit_distance_ratio(a: Sequence, b: Sequence) -> float:
    """Levenshtein distance / (len(a) + len(b)); 0.0 when both are empty.

    a, b: strings (compared by character) or sequences of hashable items such as token ids
    (lists, numpy arrays or tensors).
    0 means identical attempts (the "no edit" collapse SCORE.md warns about); 1 means nothing shared.
    """
    if isinstance(a, str) != isinstance(b, str):
        raise ValueError(f"compare like with like: got {type(a).__name__} and {type(b).__name__}")
    # a tensor's elements hash by identity (equal ids would all differ): compare plain values
    a, b = (x.tolist() if hasattr(x, "tolist") else x for x in (a, b))
    total = len(a) + len(b)
    if total == 0:
        return 0.0
    codes: dict = {}  # map items to small ints so numpy can compare them
    try:
        ia = np.array([codes.setdefault(x, len(codes)) for x in a], dtype=np.int64)
        ib = np.array([codes.setdefault(x, len(codes)) for x in b], dtype=np.int64)
    except TypeError as e:
        raise ValueError(f"edit_distance_ratio needs hashable items: {e}") from e
    if np.array_equal(ia, ib):  # identical attempts (the common copy): no quadratic table
        return 0.0
    return _levenshtein(ia, ib) / total


# ---------------------------------------------------------------------------------------------
# Markdown table
# ---------------------------------------------------------------------------------------------

TABLE_COLUMNS = (
    ("Acc@t1", "acc_t1"),
    ("Acc@t2", "acc_t2"),
    ("Δ", "delta"),
    ("Δi→c", "delta_i_to_c"),
    ("Δc→i", "delta_c_to_i"),
)


def _pct(x: float) -> str:
    """A fraction as a percentage with one decimal, never '-0.0'."""
    v = round(100.0 * x, 1)
    return f"{v + 0.0:.1f}"  # + 0.0 turns -0.0 into 0.0


def format_table(
    rows: list[tuple[str, dict]], intervals: dict[str, dict[str, tuple[float, float]]] | None = None
) -> str:
    """A markdown table like SCORE.md §5: Approach | Acc@t1 | Acc@t2 | Δ | Δi→c | Δc→i, in percent.

    rows: (approach name, metrics dict from self_correction_metrics). intervals: approach name ->
    bootstrap_intervals dict; a row that has one shows cells as `52.6 [48.2, 57.0]`. A metric
    missing from a row's dict (e.g. single-attempt evaluation) shows as `–`.
    """
    intervals = intervals or {}
    unknown = set(intervals) - {name for name, _ in rows}
    if unknown:
        raise ValueError(f"intervals given for approaches not in rows: {sorted(unknown)}")
    lines = [
        "| Approach | " + " | ".join(h for h, _ in TABLE_COLUMNS) + " |",
        "|---|" + "---|" * len(TABLE_COLUMNS),
    ]
    for name, metrics in rows:
        ci = intervals.get(name, {})
        cells = []
        for _, key in TABLE_COLUMNS:
            value = metrics.get(key)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("–")
                continue
            cell = _pct(value)
            if key in ci:
                lo, hi = ci[key]
                cell += f" [{_pct(lo)}, {_pct(hi)}]"
            cells.append(cell)
        escaped = str(name).replace("|", "\\|")  # a '|' in a name would split the row
        lines.append(f"| {escaped} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
