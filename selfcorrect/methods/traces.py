"""Supervised data from sampled two-attempt traces: STaR's and Pair-SFT's training rows.

Pure functions over a verified `Rollout` (rows [x, y1, p, y2] with turn ids, verdicts per
attempt). A training row is (token ids, loss mask), the mask 1 on the tokens that are learned.
Attempts whose reward is None (verifier failed) or that hit the length limit are never used:
their label is unknown, or they have no end-of-turn token to learn.

- D_STaR (SCORE.md §3): traces where attempt 1 was wrong and attempt 2 right *within the trace*;
  D+_STaR adds right→right traces. Loss on attempt-2 tokens (optionally attempt 1 too).
  The paper leaves the c→c : i→c ratio of D+ open; `cap_right_to_right` sets one.
- D_SFT (Pair-SFT): each wrong response of the base model, from either attempt, followed by the
  correction instruction and a random correct response to the same problem drawn from every
  attempt of every trace; D+_SFT adds right→right pairs. Loss on the correct response.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class TraceRows:
    """Training rows and what they were made of (for the run's log)."""

    sequences: list[list[int]] = field(default_factory=list)
    masks: list[list[int]] = field(default_factory=list)
    row_kinds: list[str] = field(default_factory=list)  # per row: 'i->c' or 'c->c'

    @property
    def kinds(self) -> dict[str, int]:
        """Rows per kind, e.g. {'i->c': 12, 'c->c': 30}."""
        return dict(Counter(self.row_kinds))

    def add(self, ids: list[int], mask: list[int], kind: str) -> None:
        self.sequences.append(ids)
        self.masks.append(mask)
        self.row_kinds.append(kind)


def _usable(ro, b: int, a: int) -> bool:
    return ro.verdicts[b][a].reward is not None and not ro.truncated[b][a]


def star_rows(ro, *, plus: bool = False, train_attempt1: bool = False) -> TraceRows:
    """D_STaR (i→c traces) or D+_STaR (also c→c) from a two-attempt rollout, as whole rows.

    ro: a verified Rollout with 2 attempts. Returns rows equal to the sampled token rows, with
    loss on attempt-2 tokens (and attempt-1 tokens when train_attempt1)."""
    if ro.n_attempts != 2:
        raise ValueError(f"STaR needs two-attempt traces, got {ro.n_attempts} attempts")
    out = TraceRows()
    trained = {1, 2} if train_attempt1 else {2}
    for b, row in enumerate(ro.rows):
        if not (_usable(ro, b, 0) and _usable(ro, b, 1)):
            continue
        r1, r2 = ro.verdicts[b][0].reward, ro.verdicts[b][1].reward
        kind = {(0.0, 1.0): "i->c", (1.0, 1.0): "c->c"}.get((r1, r2))
        if kind == "i->c" or (plus and kind == "c->c"):
            out.add(list(row), [1 if t in trained else 0 for t in ro.turns[b]], kind)
    return out


def pair_rows(ro, between: list[int], join, *, plus: bool = False, seed: int = 0) -> TraceRows:
    """D_SFT (wrong → random correct) or D+_SFT (also correct → random correct) pairs.

    ro: a verified Rollout of base-model traces (any number of attempts). between: the ids that
    close an attempt and ask for the next (ChatFormat.between_ids); join(attempt, between): the
    glue actually used after `attempt` (ChatFormat.join_ids). Each row is
    x + y_first + glue + y_correct with loss on y_correct. Random draws come from `seed`."""
    rng = random.Random(seed)
    out = TraceRows()
    # rows by problem id (unique in a split): a budget of several passes over the data draws a
    # problem again at another index, and its right answers are pooled over every draw
    by_problem: dict[str, list[int]] = {}
    for b, p in enumerate(ro.problem_index):
        by_problem.setdefault(ro.problems[p].id, []).append(b)
    for rows in by_problem.values():
        responses = [(b, a) for b in rows for a in range(ro.n_attempts) if _usable(ro, b, a)]
        correct = [ro.attempts[b][a] for b, a in responses if ro.verdicts[b][a].reward == 1.0]
        if not correct:
            continue
        first = rows[0]
        x = ro.rows[first][: ro.turns[first].index(1)]  # the prompt: everything before attempt 1
        for b, a in responses:
            right = ro.verdicts[b][a].reward == 1.0
            if right and not plus:
                continue
            y, target = ro.attempts[b][a], rng.choice(correct)
            glue = join(y, between)
            ids = x + y + glue + target
            out.add(ids, [0] * (len(ids) - len(target)) + [1] * len(target), "c->c" if right else "i->c")
    return out


def cap_right_to_right(rows: TraceRows, ratio: float, seed: int = 0) -> TraceRows:
    """D+ rows with at most floor(ratio x #i->c) right->right rows, a seeded random subset
    kept in their original order; ratio 0 returns `rows` unchanged (every c->c row kept).

    Without a cap, a model right most of the time fills D+ with copies (c->c rows outnumber
    i->c ones many times over), which is what pulls the D+ baselines toward repeating attempt 1."""
    if not (math.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"ratio must be a finite number >= 0, got {ratio}")
    cc_at = [i for i, kind in enumerate(rows.row_kinds) if kind == "c->c"]
    # floor, robust to binary fractions (0.29 x 100 is 28.999...): a ratio is a count per count
    limit = math.floor(ratio * rows.kinds.get("i->c", 0) + 1e-9)
    if ratio == 0 or len(cc_at) <= limit:
        return rows
    kept = set(random.Random(seed).sample(cc_at, limit))
    out = TraceRows()
    for i, kind in enumerate(rows.row_kinds):
        if kind != "c->c" or i in kept:
            out.add(rows.sequences[i], rows.masks[i], kind)
    return out
