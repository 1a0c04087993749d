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
                   temperature: float = 1.0, scored: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(z / T)[token t] given tokens < t, for t in [first, T): [b, T - first] fp32.

    ids, mask: [b, T] right-padded. first >= 1: the earliest position whose token is scored.
    scored: [b, T - first] bool, the tokens whose log-probs are wanted (default: every real
    token); the others come back as 0 and cost no logits.
    The temperature must be the one the tokens were sampled at: rollouts draw from
    softmax(z / T), so the policy gradient and the KL are those of that distribution.
    """
    if not 1 <= first < ids.shape[1]:
        raise ValueError(f"first must be in [1, {ids.shape[1]}), got {first}")
    labels = ids[:, first:]
    scored = mask[:, first:].bool() if scored is None else scored
    if scored.shape != labels.shape:
        raise ValueError(f"scored must be [b, T - first] = {tuple(labels.shape)}, got {tuple(scored.shape)}")
    rows, cols = scored.nonzero(as_tuple=True)
    # the model keeps positions first-1 .. T-1, so its column c predicts label column c
    values = gathered_logprobs(model, dict(input_ids=ids, attention_mask=mask, use_cache=False,
                                           logits_to_keep=labels.shape[1] + 1),
                               rows, cols, labels[rows, cols], temperature)
    return scatter_rows(values, rows, cols, labels.shape)


def gathered_logprobs(model, forward: dict, rows: torch.Tensor, cols: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """log softmax(z / T)[targets] at chosen positions of one forward: [n] fp32.

    forward: the model's keyword arguments; rows, cols, targets: [n] long, the positions of
    the output (the frame `logits_to_keep` leaves) and the token each one predicts.
    The output layer sees only those n positions: a hook hands it the gathered hidden states
    [n, 1, H], so whatever the model does to its logits afterwards (scaling, soft-capping)
    still happens, and no logits are computed for context tokens (in a SCoRe row the
    correction instruction alone is about a third of the positions).
    """
    head = getattr(model, "module", model).get_output_embeddings()  # DDP / FSDP wrap their model
    if head is None:  # no separate output layer to hook: full logits, then pick
        logits = model(**forward).logits[rows, cols][:, None]
    else:
        def pick(module, args, kwargs):
            hidden = args[0] if args else kwargs.pop("input")
            return (hidden[rows, cols][:, None],) + tuple(args[1:]), kwargs

        handle = head.register_forward_pre_hook(pick, with_kwargs=True)
        try:
            logits = model(**forward).logits  # [n, 1, V]
        finally:
            handle.remove()
    # [n, 1, V]: chunks of 256 positions bound the fp32 copies, as a few rows of a batch did
    return selective_log_softmax(logits, targets[:, None], chunk_rows=256, temperature=temperature)[:, 0]


def scatter_rows(values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, shape) -> torch.Tensor:
    """values [n] placed at (rows, cols) of a zero tensor of `shape`, differentiably."""
    return values.new_zeros(shape).index_put((rows, cols), values)
