"""Evaluation: greedy attempts, the self-correction metrics with bootstrap intervals, and a
per-problem record of every attempt (text, extracted answer, verdict, reason)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import bootstrap_intervals, edit_distance_ratio, self_correction_metrics
from .rollout import ChatFormat, SamplingSettings, rollout, verify
from .tasks.base import Problem, Task


@dataclass
class EvalResult:
    metrics: dict
    intervals: dict
    records: list[dict]

    def write_records(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            for rec in self.records:
                fh.write(json.dumps(rec) + "\n")


def evaluate(model, tokenizer, task: Task, problems: list[Problem], *, attempts: int = 2,
             max_new_tokens: int = 256, batch_size: int = 64, bootstrap: int = 1000, seed: int = 0,
             progress: bool = True, desc: str = "eval") -> EvalResult:
    """Greedy (T = 0) evaluation of `attempts` attempts per problem, as in the paper."""
    from tqdm.auto import tqdm

    if not problems:
        raise ValueError(f"task {task.name!r}: no problems to evaluate")
    fmt = ChatFormat(tokenizer)
    settings = SamplingSettings(greedy=True, max_new_tokens=max_new_tokens)
    model.eval()
    correct = np.zeros((len(problems), attempts))
    records: list[dict] = []
    bar = tqdm(total=len(problems), desc=desc, disable=not progress, dynamic_ncols=True)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        ro = rollout(model, tokenizer, task, chunk, n_attempts=attempts, samples_per_problem=1,
                     settings=settings, batch_size=batch_size, fmt=fmt)
        verify(task, ro)
        for j, problem in enumerate(chunk):
            verdicts = ro.verdicts[j]
            correct[start + j] = [np.nan if v.reward is None else v.reward for v in verdicts]
            records.append({
                "id": problem.id, "question": problem.question, "reference": _jsonable(problem.reference),
                "attempts": [{"text": ro.texts[j][a], "extracted": v.extracted, "reward": v.reward,
                              "reason": v.reason, "detail": v.detail, "tokens": len(ro.attempts[j][a]),
                              "truncated": ro.truncated[j][a]} for a, v in enumerate(verdicts)],
            })
        bar.update(len(chunk))
    bar.close()
    metrics = self_correction_metrics(correct)
    if attempts > 1:
        metrics["edit_ratio"] = float(np.mean([
            edit_distance_ratio(r["attempts"][0]["text"], r["attempts"][1]["text"]) for r in records]))
    intervals = bootstrap_intervals(correct, n_boot=bootstrap, seed=seed) if bootstrap else {}
    return EvalResult(metrics, intervals, records)


def _jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)
