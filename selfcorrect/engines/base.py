"""What every rollout engine provides: continue token contexts, per row, under one sampling rule.

An engine turns B contexts (lists of token ids) into B continuations. The contract, checked for
every engine by tests/test_engines.py:
- greedy results equal one-by-one Hugging Face `generate` on the same model;
- a row stops at the first of its stop ids (kept in the output) or after max_new_tokens (then
  `cut` is True), independently of the other rows;
- sampling draws from exactly softmax(z / T) (top_p < 1: the nucleus of that), and with
  `row_seeds` a row's tokens depend only on its seed (sampling.GumbelSampler's draws; an
  engine in engines.UNSEEDED refuses row_seeds and top_p < 1 instead);
- token in, token out: the ids returned are the ids sampled, never re-tokenised text;
- `logprobs`: log softmax(z / T)[token] of each returned token as the
  engine computed it, so the trainer can log the gap to its own log-probs.
Engines may keep state between calls of one rollout (the KV cache of [x, y1] when attempt 2
continues it); `reset()` drops that state and must be called once the weights change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass
class SamplingSettings:
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256


@dataclass
class Generated:
    """B continuations. ids[b]: new ids of row b up to and including its first stop id.
    cut[b]: the row hit max_new_tokens without a stop id. logprobs[b][t]: the engine's
    log-prob of ids[b][t] at the sampling temperature (every registered engine fills it)."""

    ids: list[list[int]]
    cut: list[bool]
    logprobs: list[list[float]] | None = None


class Engine(Protocol):
    name: str

    def generate(self, model, contexts: Sequence[Sequence[int]], settings: SamplingSettings, *,
                 stop_ids, pad_id: int, batch_size: int, row_seeds: list[int] | None = None) -> Generated:
        ...

    def reset(self) -> None:
        ...


def check_request(contexts, settings: SamplingSettings, row_seeds) -> None:
    """The checks every engine makes before generating (one message per mistake)."""
    if any(len(c) == 0 for c in contexts):
        raise ValueError("every context needs at least one token")
    if settings.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {settings.max_new_tokens}")
    if row_seeds is not None and len(row_seeds) != len(contexts):
        raise ValueError(f"row_seeds has {len(row_seeds)} seeds for {len(contexts)} rows")
    if row_seeds is not None and not settings.greedy and settings.top_p < 1.0:
        raise ValueError("per-row seeded sampling draws from the full softmax(z / T); it needs top_p 1.0")


def split_at_stop(row: Sequence[int], stop_ids, max_new_tokens: int) -> tuple[list[int], bool]:
    """A generated row cut after its first stop id; (ids, cut) with cut = no stop and full length."""
    end = next((i for i, t in enumerate(row) if t in stop_ids), None)
    if end is not None:
        return list(row[: end + 1]), False
    return list(row), len(row) >= max_new_tokens
