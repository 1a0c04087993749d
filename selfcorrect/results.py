"""What an evaluation protocol returns: per-problem records and the summary metrics.

Shared by the greedy multi-attempt protocol (evaluate.py) and Self-Refine
(methods/self_refine.py), so both write the same records and compute the same metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import distributed
from .metrics import bootstrap_intervals, edit_distance_ratio, self_correction_metrics
from .tasks.base import Problem, Verdict


@dataclass
class EvalResult:
    metrics: dict
    intervals: dict
    records: list[dict]
    folder: Path | None = None
    """Where evaluate_config wrote records.jsonl, metrics.json and config.yaml."""

    def write_records(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            for rec in self.records:
                fh.write(json.dumps(rec) + "\n")


def problem_record(problem: Problem, texts: list[str], verdicts: list[Verdict], ids: list[list[int]],
                   truncated: list[bool]) -> dict:
    """One problem's record: every attempt's text, extracted answer, verdict, length and cut,
    and the problem's meta (level, subject, entry point, ...: what a breakdown needs)."""
    return {
        "id": problem.id, "question": problem.question, "reference": jsonable(problem.reference),
        "meta": {str(k): jsonable(v) for k, v in problem.meta.items()},
        "attempts": [{"text": t, "extracted": v.extracted, "reward": v.reward, "reason": v.reason,
                      "detail": v.detail, "tokens": len(i), "truncated": cut}
                     for t, v, i, cut in zip(texts, verdicts, ids, truncated)],
    }


def rewards_row(verdicts: list[Verdict]) -> list[float]:
    """A problem's row of the [N, A] correctness matrix: 1 / 0, NaN where the verifier failed."""
    return [np.nan if v.reward is None else v.reward for v in verdicts]


def summarise(correct: np.ndarray, records: list[dict], *, bootstrap: int, seed: int) -> tuple[dict, dict]:
    """(metrics, intervals) of an [N, A] correctness matrix; with two or more attempts also the
    mean character-level edit-distance ratio between attempts 1 and 2 of the records."""
    metrics = self_correction_metrics(correct)
    if correct.shape[1] > 1:
        metrics["edit_ratio"] = float(np.mean([
            edit_distance_ratio(r["attempts"][0]["text"], r["attempts"][1]["text"]) for r in records]))
    intervals = (bootstrap_intervals(correct, n_boot=bootstrap, seed=seed, clusters=clusters_of(records))
                 if bootstrap else {})
    return metrics, intervals


def clusters_of(records: list[dict]) -> list | None:
    """Each record's bootstrap unit: its problem's meta["cluster"] (problems that are not
    independent, such as arithmetic's commuted twins, share one), else its own id; None when
    no problem names a cluster (every problem its own unit)."""
    if not any("cluster" in r.get("meta", {}) for r in records):
        return None
    # as JSON text: a cluster field of a custom task's file may be any JSON value (a list is no key)
    return [json.dumps(r["meta"]["cluster"], sort_keys=True) if "cluster" in r.get("meta", {}) else ("id", r["id"])
            for r in records]


def gather_problems(correct: np.ndarray, records: list, *extra: list):
    """Every rank's per-problem rows, concatenated in rank order (= problem order, since each
    rank took a contiguous block); the arguments themselves on one process."""
    if distributed.world_size() == 1:
        return (correct, records, *extra)
    parts = distributed.gather_objects((correct.tolist(), records, *extra))
    width = correct.shape[1]
    joined = [[row for part in parts for row in part[i]] for i in range(len(parts[0]))]
    return (np.array(joined[0], dtype=np.float64).reshape(-1, width), *joined[1:])


def jsonable(value):
    """The value itself when JSON can hold it, else its repr (references can be any object)."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
