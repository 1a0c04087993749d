"""Numbers the report computes from the per-problem records, not found in any summary file.

A verifier failure (NaN) counts as not correct here, exactly as in `selfcorrect.metrics`, so
the transition bars add up to the table's Δi→c and Δc→i.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..metrics import edit_distance_ratio
from .collect import Outcomes, Run

TRANSITIONS = ("c→c", "i→c", "c→i", "i→i")


def transition_counts(correct: np.ndarray) -> dict[str, int]:
    """How many problems went correct/incorrect at attempt 1 to correct/incorrect at attempt 2.

    correct: [N, A >= 2] of 1/0/NaN. Returns counts for 'c→c', 'i→c', 'c→i', 'i→i' summing to N.
    """
    c = np.asarray(correct, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] < 2:
        raise ValueError(f"transitions need [N problems, >= 2 attempts], got shape {c.shape}")
    first, second = c[:, 0] == 1.0, c[:, 1] == 1.0  # NaN == 1.0 is False: not correct
    return {
        "c→c": int(np.sum(first & second)),
        "i→c": int(np.sum(~first & second)),
        "c→i": int(np.sum(first & ~second)),
        "i→i": int(np.sum(~first & ~second)),
    }


def accuracy_by_attempt(run: Run) -> tuple[list[int], list[float], str] | None:
    """(attempt numbers, accuracy at each, source) or None when nothing says more than Acc@t1/t2.

    From the greedy evaluation records when they hold more than two attempts, else from
    scaling.json's 'by_attempt' (sampled). The source names which, because greedy and sampled
    accuracies are different quantities and must not be read as one curve.
    """
    outcomes = run.outcomes
    if outcomes is not None and outcomes.attempts > 2:
        acc = np.mean(outcomes.correct == 1.0, axis=0)
        return list(range(1, outcomes.attempts + 1)), [float(x) for x in acc], "greedy"
    scaling = run.scaling or {}
    by_attempt = scaling.get("by_attempt")
    if isinstance(by_attempt, dict):
        attempts, acc = by_attempt.get("attempt"), by_attempt.get("acc")
        if isinstance(attempts, list) and isinstance(acc, list) and len(attempts) == len(acc) > 0:
            temperature = scaling.get("temperature")
            source = f"sampled, T = {temperature:g}" if isinstance(temperature, (int, float)) else "sampled"
            try:
                return [int(a) for a in attempts], [float(x) for x in acc], source
            except (TypeError, ValueError):
                return None
    return None


def edit_ratios(outcomes: Outcomes) -> np.ndarray:
    """Character-level edit-distance ratio between attempt 1 and attempt 2, one per problem.

    Identical attempts (the collapse the paper warns about, and the common case for a collapsed
    model) are 0 without running the quadratic Levenshtein.
    """
    return np.array([0.0 if a == b else edit_distance_ratio(a, b) for a, b in outcomes.first_two_texts])


class EditRatioCache:
    """Edit ratios per run, kept in a JSON file beside the figures and reused while a run's
    records.jsonl is unchanged (same size and modification time).

    Long answers make the Levenshtein distance the slowest part of a report; a comparison is
    reported again and again while it runs, and finished runs never change.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            loaded = json.loads(self.path.read_text())
        except (OSError, ValueError):
            loaded = {}
        self.entries: dict = loaded if isinstance(loaded, dict) else {}
        self.changed = False

    def ratios(self, run: Run) -> np.ndarray | None:
        if run.outcomes is None or not run.outcomes.first_two_texts or run.records_path is None:
            return None
        key = str(run.records_path.resolve())
        stat = os.stat(run.records_path)
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = self.entries.get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("ratios"), list):
            return np.asarray(entry["ratios"], dtype=np.float64)
        values = edit_ratios(run.outcomes)
        self.entries[key] = {"stamp": stamp, "ratios": [round(float(v), 6) for v in values]}
        self.changed = True
        return values

    def save(self) -> None:
        if self.changed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.path)
            self.changed = False
