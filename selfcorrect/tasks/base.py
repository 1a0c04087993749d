"""The task interface every part of selfcorrect agrees on.

A task owns three things: its problems (x, y*), how a problem becomes the first turn of a
chat, and the oracle verifier r(y, y*). Rollout, training and evaluation never look inside a
task beyond this file, so a user brings their own task by subclassing `Task`.

Verifier contract (SCORE.md §2 uses r ∈ {0, 1}): `score` returns one `Verdict` per response,
with reward 1.0 / 0.0, or None when the verifier itself failed (timeout, crash, sandbox
error). None is excluded from baselines and losses and counted — never silently scored 0.
`score` must never raise because of what a model wrote.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

# Reasons a verdict can carry; per-problem records keep each one, metrics count the verifier's failures.
CORRECT = "correct"
WRONG_ANSWER = "wrong_answer"
NO_ANSWER = "no_answer"
TIMEOUT = "timeout"
SANDBOX_ERROR = "sandbox_error"
VERIFIER_ERROR = "verifier_error"
REASONS = (CORRECT, WRONG_ANSWER, NO_ANSWER, TIMEOUT, SANDBOX_ERROR, VERIFIER_ERROR)


@dataclass(frozen=True)
class Problem:
    """One (x, y*) pair.

    id: stable identifier, unique within a task split (used in records and data positions).
    question: the problem text x as the user would write it.
    reference: y* — a reference answer (math), or whatever the verifier needs (tests for code).
    meta: free-form extras kept in per-problem records (level, subject, entry point, ...).
    """

    id: str
    question: str
    reference: Any
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    """The verifier's word on one response.

    reward: 1.0 right, 0.0 wrong, None when the verifier failed (excluded and counted).
    extracted: the answer or program pulled out of the response (None when none was found).
    reason: one of REASONS; `detail` says more (e.g. the assertion that failed, the sandbox tier).
    """

    reward: float | None
    extracted: str | None
    reason: str
    detail: str = ""

    def __post_init__(self):
        if self.reason not in REASONS:
            raise ValueError(f"unknown verdict reason {self.reason!r}; expected one of {REASONS}")
        if self.reward is None and self.reason in (CORRECT, WRONG_ANSWER, NO_ANSWER):
            raise ValueError(f"a verdict with reason {self.reason!r} needs a reward")


class Task(ABC):
    """A family of checkable problems.

    Subclasses set `name` and `correction_instruction` and implement `load`, `first_turn` and
    `score`. Tasks that hold worker processes release them in `close` (also via `with`).
    """

    name: str = "task"
    #: p — the fixed instruction appended before every further attempt (never reveals r).
    correction_instruction: str = ""
    #: Self-Refine (methods/self_refine.py, docs/SELF_REFINE.md): the user turn after attempt 1
    #: that asks the model to critique it; "{marker}" is replaced by feedback_correct_marker.
    feedback_prompt: str = (
        "Review your answer above step by step and point out any errors in it. Do not write a "
        'corrected answer yet. If the answer is fully correct, end your feedback with "{marker}".')
    #: Self-Refine: the user turn after the feedback that asks for the improved answer.
    refine_prompt: str = (
        "Using your feedback above, write an improved answer to the original problem. Output "
        "only the improved answer.")
    #: Self-Refine's stop phrase: feedback containing it (case-sensitive) keeps attempt 1.
    feedback_correct_marker: str = "ALL CORRECT"

    @abstractmethod
    def load(self, split: str) -> list[Problem]:
        """All problems of a split ("train", "test", ...). Raise ValueError naming the split,
        file, line and field when the data is unusable."""

    @abstractmethod
    def first_turn(self, problem: Problem) -> list[dict]:
        """The chat messages before attempt 1, e.g. [{"role": "user", "content": ...}].
        A system message or few-shot examples go here too."""

    @abstractmethod
    def score(self, problems: Sequence[Problem], responses: Sequence[str]) -> list[Verdict]:
        """Verdicts for responses[i] to problems[i]; batched so verifiers can run in parallel."""

    def answer_key(self, extracted: str | None) -> str | None:
        """The string two extracted answers must share to count as one answer in a majority
        vote (inference-time scaling): here the answer without surrounding whitespace. None
        (also for an empty answer) means no answer, which never joins a class. Tasks whose
        answers have cosmetic variants (math) normalise them here."""
        if extracted is None:
            return None
        key = extracted.strip()
        return key or None

    def vote_classes(self, problems: Sequence[Problem], answers: Sequence[Sequence[str | None]],
                     rewards: Sequence[Sequence[float | None]] | None = None) -> list[list[int | None]]:
        """Group each problem's sampled answers into classes of the same answer, for voting.

        answers[p][s]: the extracted answer of sample s of problems[p] (Verdict.extracted).
        rewards[p][s]: their verdict rewards, if known; a task may use them (two answers the
        verifier found right are both equal to the reference), this default ignores them.
        Returns labels[p][s]: the position s' of the first sample of s's class (so labels
        order classes by first occurrence), or None for no answer. Default: equal answer_key.
        Batched over problems so a task can check equivalences in parallel (MathTask does)."""
        labels: list[list[int | None]] = []
        for row in answers:
            first: dict[str, int] = {}
            keys = [self.answer_key(a) for a in row]
            labels.append([None if k is None else first.setdefault(k, s) for s, k in enumerate(keys)])
        return labels

    def close(self) -> None:
        """Release worker pools or sandboxes. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
