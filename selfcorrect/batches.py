"""Token rows → padded model batches → log-probs of the chosen tokens.

One place for what rollout, the RL update, evaluation and supervised fine-tuning all do:
pad lists of token ids into tensors (right padding for training forwards, left padding for
generation) and read off log π(token | prefix) at a sampling temperature.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .losses import selective_log_softmax


def pad_rows(rows: Sequence[Sequence[int]], pad: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad integer rows to the longest one.

    rows: B lists of ints (token ids, turn ids, loss masks, ...). side: 'right' (training
    forwards: positions line up with the row) or 'left' (generation: every row ends at the
    same column, so new tokens are appended in one place).
    Returns (values [B, T] long with `pad` in the padding, attention [B, T] long: 1 on real entries).
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    width = max((len(r) for r in rows), default=0)
    values = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row)
        if not n:
            continue
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        values[i, cols] = torch.as_tensor(row, dtype=torch.long)
        attention[i, cols] = 1
    return values, attention


def micro_batches(order: Sequence[int], lengths: Sequence[int], max_rows: int,
                  max_tokens: int = 0) -> list[list[int]]:
    """Split `order` (row indices, best sorted by length so that a group pads little) into
    consecutive groups of at most `max_rows` rows and, when max_tokens > 0, at most
    `max_tokens` padded tokens (rows x the group's longest row). A row longer than the budget
    forms a group alone. lengths[i]: the token count of row i."""
    groups: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        wider = max(longest, lengths[i])
        if current and (len(current) == max_rows or (max_tokens and (len(current) + 1) * wider > max_tokens)):
            groups.append(current)
            current, wider = [], lengths[i]
        current.append(i)
        longest = wider
    if current:
        groups.append(current)
    return groups


def token_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, first: int,
                   temperature: float = 1.0) -> torch.Tensor:
    """log softmax(z / T)[token t] given tokens < t, for t in [first, T): [b, T - first] fp32.

    ids, mask: [b, T] right-padded. first >= 1: the earliest position whose token is scored.
    The temperature must be the one the tokens were sampled at: rollouts draw from
    softmax(z / T), so the policy gradient and the KL are those of that distribution.
    Only positions that predict scored tokens get logits (`logits_to_keep`), and the
    log-softmax runs a few rows at a time, so [b, T, V] fp32 is never held for the batch.
    """
    if not 1 <= first < ids.shape[1]:
        raise ValueError(f"first must be in [1, {ids.shape[1]}), got {first}")
    keep = ids.shape[1] - first + 1
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False).logits
    return selective_log_softmax(logits[:, :-1], ids[:, first:], temperature=temperature)
