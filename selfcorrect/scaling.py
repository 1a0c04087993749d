"""Inference-time scaling (SCoRe paper §6.2): is a sample better spent on a fresh attempt or
on correcting one?

At a budget of 2K sampled attempts per problem, for each K:
- parallel: 2K independent first attempts, then a majority vote over their answers;
- sequential: K first attempts, each followed by one self-correction (the task's correction
  instruction), then a majority vote over the K second attempts.
The paper finds the sequential curve above the parallel one for a SCoRe-trained model. Alongside,
`by_attempt` gives the accuracy of attempt i in N sampled attempts in a row (does a model keep
improving, or drift, past the attempt it was trained for?).

Sampling happens once, at the largest K (2·Kmax one-attempt episodes and Kmax two-attempt
episodes per problem); a smaller K is scored on subsets of those samples: the Kmax // K
disjoint consecutive blocks of the sample list (block 0 is the nested prefix), averaged, which
has the same expectation as sampling anew at each K and less variance. `disjoint=False` scores
the nested prefix alone. The curves therefore share samples across K and are correlated.

Votes: answers are grouped by `Task.vote_classes` (equal `Task.answer_key`; for math, equal
as mathematics). No answer never wins unless every sample has none, which counts as wrong.
Ties go to the class whose first member comes earliest in the voted samples. The vote is
right when a member of the winning class was scored right (its members are one answer); a
verifier failure (reward None) counts as not right, as in metrics.self_correction_metrics.

The accuracies come from pure functions of [problem][sample] tables (labels, rewards), so the
vote and the K-subsets are tested without a model; `inference_scaling` fills the tables.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Hashable, Sequence

import torch

from . import distributed
from .atomic import write_text_atomic
from .progress import progress as progress_report
from .rollout import ChatFormat, SamplingSettings, rollout, verify
from .sampling import row_seed
from .tasks.base import Problem, Task

DEFAULT_KS = (1, 2, 4, 8, 16)

Label = Hashable | None  # a vote class (Task.vote_classes gives ints); None = no answer


def parse_ks(spec: str | Sequence[int]) -> tuple[int, ...]:
    """K values from "1,2,4" (EvalConfig.scaling_k) or a sequence: sorted, unique, each >= 1.
    Raises ValueError naming the bad entry, so a config can be checked before any sampling."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    ks = set()
    for item in items:
        try:
            k = int(item.strip()) if isinstance(item, str) else item
        except ValueError:
            raise ValueError(f"scaling K {item!r} is not an integer (expected e.g. '1,2,4,8,16')") from None
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"scaling K {item!r} must be an integer >= 1")
        ks.add(k)
    if not ks:
        raise ValueError(f"no scaling K in {spec!r} (expected e.g. '1,2,4,8,16')")
    return tuple(sorted(ks))


# ----------------------------------------------------------------------------- votes


def majority_vote(labels: Sequence[Label]) -> int | None:
    """Position in `labels` of the first member of the most frequent class; None when every
    label is None (no answer at all). None never counts as a class, so one answer beats any
    number of non-answers. Ties: the class that appears first in `labels` wins, which makes the
    vote deterministic and independent of how class ids are numbered."""
    counts: dict[Label, int] = {}
    first: dict[Label, int] = {}
    for pos, label in enumerate(labels):
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
            first.setdefault(label, pos)
    if not counts:
        return None
    winner = max(counts, key=lambda c: (counts[c], -first[c]))
    return first[winner]


def vote_reward(labels: Sequence[Label], rewards: Sequence[float | None]) -> float:
    """1.0 when the majority vote over `labels` picks a right answer, else 0.0.

    labels[s], rewards[s]: class and verdict reward of sample s. The winning class is right
    when any of its members here was scored 1.0 (members are one answer; a member whose
    verifier failed, None, says nothing). No answer at all is wrong."""
    if len(labels) != len(rewards):
        raise ValueError(f"vote_reward: {len(labels)} labels but {len(rewards)} rewards")
    winner = majority_vote(labels)
    if winner is None:
        return 0.0
    cls = labels[winner]
    return float(any(r == 1.0 for label, r in zip(labels, rewards) if label == cls))


def vote_accuracy(labels: Sequence[Sequence[Label]], rewards: Sequence[Sequence[float | None]], n: int,
                  *, disjoint: bool = True) -> float:
    """Accuracy of a majority vote over n samples, from samples drawn once.

    labels, rewards: [P problems][S samples], S >= n, every row the same length.
    disjoint: average over the S // n consecutive blocks [0:n], [n:2n], ... (unbiased, lower
    variance); False: the nested prefix [0:n] alone. Returns the mean over problems."""
    if not labels:
        raise ValueError("vote_accuracy: no problems")
    total = 0.0
    for p, (row, row_rewards) in enumerate(zip(labels, rewards, strict=True)):
        if not 1 <= n <= len(row) or len(row) != len(row_rewards):
            raise ValueError(f"vote_accuracy: problem {p} has {len(row)} labels and {len(row_rewards)} "
                             f"rewards; a vote over {n} needs n <= samples")
        blocks = len(row) // n if disjoint else 1
        total += sum(vote_reward(row[b * n:(b + 1) * n], row_rewards[b * n:(b + 1) * n])
                     for b in range(blocks)) / blocks
    return total / len(labels)


def scaling_curves(ks: Sequence[int], parallel_labels, parallel_rewards, sequential_labels, sequential_rewards,
                   *, disjoint: bool = True) -> tuple[dict, dict]:
    """The parallel and sequential curves at the same budget of 2K attempts per K.

    parallel_*: [P][>= 2·max K] of first attempts; sequential_*: [P][>= max K] of second
    attempts (each the correction of its own first attempt). Returns two dicts
    {"k": [...], "samples": [2K, ...], "acc": [...]}."""
    parallel = {"k": list(ks), "samples": [2 * k for k in ks],
                "acc": [vote_accuracy(parallel_labels, parallel_rewards, 2 * k, disjoint=disjoint) for k in ks]}
    sequential = {"k": list(ks), "samples": [2 * k for k in ks],
                  "acc": [vote_accuracy(sequential_labels, sequential_rewards, k, disjoint=disjoint) for k in ks]}
    return parallel, sequential


def by_attempt_accuracy(rewards: Sequence[Sequence[float | None]]) -> list[float]:
    """Fraction right at each attempt number. rewards: [R episodes][N attempts]; with the same
    number of episodes per problem this is the mean over problems. None counts as not right."""
    if not rewards:
        raise ValueError("by_attempt_accuracy: no episodes")
    n = len(rewards[0])
    if any(len(row) != n for row in rewards):
        raise ValueError("by_attempt_accuracy: episodes have different numbers of attempts")
    return [sum(row[a] == 1.0 for row in rewards) / len(rewards) for a in range(n)]


# ----------------------------------------------------------------------------- sampling


def sample_episodes(model, tokenizer, task: Task, problems: list[Problem], *, n_attempts: int, samples: int,
                    settings: SamplingSettings, batch_size: int, fmt: ChatFormat | None = None):
    """`samples` sampled episodes of `n_attempts` attempts per problem, verified.

    Returns (answers, rewards), each [P problems][samples][n_attempts]: Verdict.extracted
    (str | None) and Verdict.reward (1.0 / 0.0 / None)."""
    ro = rollout(model, tokenizer, task, problems, n_attempts=n_attempts, samples_per_problem=samples,
                 settings=settings, batch_size=batch_size, fmt=fmt)
    verify(task, ro)
    rows = [[ro.verdicts[p * samples + s] for s in range(samples)] for p in range(len(problems))]
    answers = [[[v.extracted for v in episode] for episode in row] for row in rows]
    rewards = [[[v.reward for v in episode] for episode in row] for row in rows]
    return answers, rewards


def _attempt(table, a: int) -> list[list]:
    """[P][S][A] -> [P][S]: attempt a of every episode."""
    return [[episode[a] for episode in row] for row in table]


@contextmanager
def _seeded(seed: int, model):
    """Seed torch's generator for the sampling, and give the caller's generator state back."""
    device = next(model.parameters()).device
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def inference_scaling(model, tokenizer, task: Task, problems: list[Problem], *,
                      ks: str | Sequence[int] = DEFAULT_KS, attempts: int = 5, attempt_samples: int = 1,
                      temperature: float = 0.7, max_new_tokens: int = 256, batch_size: int = 64, seed: int = 0,
                      disjoint: bool = True, progress: bool = False, desc: str = "scaling") -> dict:
    """Parallel vs sequential majority-vote accuracy for each K, and accuracy by attempt.

    Samples at `temperature` (the paper's 0.7): per problem 2·max(ks) first attempts,
    max(ks) (first attempt, correction) episodes, and `attempt_samples` episodes of `attempts`
    attempts (0 skips by_attempt). Problems go `batch_size` at a time (rows are generated
    `batch_size` at a time within). Seeded by `seed`; the caller's torch RNG state is restored.
    Cost per problem: 4·max(ks) + attempts·attempt_samples generated attempts.

    Returns the JSON-able scaling.json dict: {"temperature", "parallel": {"k", "samples",
    "acc"}, "sequential": {same}, "by_attempt": {"attempt": [1..N], "acc"}, "n_problems"}.
    """
    ks = parse_ks(ks)
    if not problems:
        raise ValueError(f"task {task.name!r}: no problems for inference-time scaling")
    if not temperature > 0:
        raise ValueError(f"scaling temperature must be > 0 (it samples), got {temperature}")
    if attempts < 0 or attempt_samples < 1:
        raise ValueError(f"need attempts >= 0 and attempt_samples >= 1, got {attempts} and {attempt_samples}")
    kmax = ks[-1]
    settings = SamplingSettings(greedy=False, temperature=temperature, max_new_tokens=max_new_tokens)
    fmt = ChatFormat(tokenizer, model)
    model.eval()
    tables: dict[str, list] = {"par_labels": [], "par_rewards": [], "seq_labels": [], "seq_rewards": [], "by_attempt": []}
    sample = dict(settings=settings, batch_size=batch_size, fmt=fmt)
    # several processes: each rank samples a contiguous block with its own stream (so the curves
    # are as valid as one process's, but not the same draws), gathered in problem order below
    everything, (lo, hi) = problems, distributed.shard_bounds(len(problems))
    mine = problems[lo:hi]
    stream = seed if distributed.world_size() == 1 else row_seed(seed, distributed.rank())
    bar = progress_report(len(mine), desc, enabled=progress and distributed.is_main())
    with _seeded(stream, model):
        for start in range(0, len(mine), batch_size):
            chunk = mine[start:start + batch_size]
            answers, rewards = sample_episodes(model, tokenizer, task, chunk, n_attempts=1, samples=2 * kmax, **sample)
            tables["par_labels"] += task.vote_classes(chunk, _attempt(answers, 0), _attempt(rewards, 0))
            tables["par_rewards"] += _attempt(rewards, 0)
            answers, rewards = sample_episodes(model, tokenizer, task, chunk, n_attempts=2, samples=kmax, **sample)
            tables["seq_labels"] += task.vote_classes(chunk, _attempt(answers, 1), _attempt(rewards, 1))
            tables["seq_rewards"] += _attempt(rewards, 1)
            if attempts:
                _, rewards = sample_episodes(model, tokenizer, task, chunk, n_attempts=attempts,
                                             samples=attempt_samples, **sample)
                tables["by_attempt"] += [episode for row in rewards for episode in row]
            bar.update(len(chunk))
    bar.close()
    if distributed.world_size() > 1:
        parts = distributed.gather_objects(tables)
        tables = {key: [row for part in parts for row in part[key]] for key in tables}
    problems = everything
    parallel, sequential = scaling_curves(ks, tables["par_labels"], tables["par_rewards"], tables["seq_labels"],
                                          tables["seq_rewards"], disjoint=disjoint)
    return {"temperature": float(temperature), "parallel": parallel, "sequential": sequential,
            "by_attempt": {"attempt": list(range(1, attempts + 1)),
                           "acc": by_attempt_accuracy(tables["by_attempt"]) if attempts else []},
            "n_problems": len(problems)}


def write_scaling(result: dict, path: str | Path) -> Path:
    """Write `result` (inference_scaling's dict) as JSON to `path` (scaling.json), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(result, indent=1) + "\n")
    return path
