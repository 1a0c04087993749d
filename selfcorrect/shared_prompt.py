"""Training log-probs that read each distinct prompt once.

The k samples of a problem all start with the same prompt x (about a third of a SmolLM2
arithmetic row [x, y1, p, y2]). `token_logprobs` runs the model over every row in full, so x's
keys and values are computed k times, with their gradients. Here each distinct prompt is run
once (forward and backward), its cache rows are copied to the rows that start with it, and the
rest of each row is run on top of that cache. Gradients flow through the copies, so the result
and its gradient equal `token_logprobs` up to float rounding (tests/test_shared_prompt.py).

Needs a model whose forward takes a cache, position ids and a 2-D mask with holes (every
full-attention Hugging Face decoder) and ONE forward per backward per wrapper: not DDP / FSDP
(two forwards feed one backward) and not gradient checkpointing (Hugging Face turns the cache
off under it). The trainer checks this (train.shares_prompts) and falls back otherwise.
"""

from __future__ import annotations

import torch

from .batches import gathered_logprobs, pad_rows, scatter_rows
from .engines.cached import cache_kwarg
from .head_input import contiguous_head_input
from .losses import selective_log_softmax


def first_scored(turns: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[b] long: each row's first attempt token (turn id > 0), the end of its shared prompt;
    clamped to [1, length - 1] so that a row with nothing to score still has a prompt and a token.
    turns: [b, T] turn ids (0 = context or padding); lengths: [b] real tokens per row."""
    scored = turns > 0
    start = torch.where(scored.any(dim=1), scored.float().argmax(dim=1), lengths - 1)
    return torch.minimum(start.clamp(min=1), (lengths - 1).clamp(min=1))


def prompt_groups(ids: torch.Tensor, starts: torch.Tensor) -> tuple[list[list[int]], list[int]]:
    """The distinct prompts ids[j, :starts[j]] of a batch, and each row's prompt index."""
    index: dict[tuple[int, ...], int] = {}
    member = []
    for row, start in zip(ids.tolist(), starts.tolist()):
        member.append(index.setdefault(tuple(row[:start]), len(index)))
    return [list(p) for p in index], member


def shared_prompt_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, starts: torch.Tensor, first: int,
                           temperature: float = 1.0, scored: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax(z / T)[token t] given tokens < t, for t in [first, T): [b, T - first] fp32,
    the layout of `batches.token_logprobs`, with 0 at positions before each row's start.

    ids, mask: [b, T] right-padded rows. starts: [b] long, row j's prompt is ids[j, :starts[j]]
    (1 <= starts[j] < its length; first_scored gives it); first <= min(starts).
    scored: [b, T - first] bool, the tokens whose log-probs are wanted (default: every real
    token from each row's start); the others come back as 0 and cost no logits.
    Rows with equal prompts share one prompt forward.
    """
    from transformers import DynamicCache

    b, width = ids.shape
    if not 1 <= first <= int(starts.min()):
        raise ValueError(f"first must be in [1, min(starts) = {int(starts.min())}], got {first}")
    lengths = mask.sum(dim=1)
    if bool((starts >= lengths).any()):
        raise ValueError("every row needs at least one token after its prompt")
    device = ids.device
    columns = torch.arange(width - first, device=device)[None, :]
    after_prompt = (columns >= (starts - first)[:, None]) & mask[:, first:].bool()
    scored = after_prompt if scored is None else scored & after_prompt
    prompts, member = prompt_groups(ids, starts)
    pad = 0  # any id: padding is masked out
    prompt_ids, prompt_mask = pad_rows(prompts, pad, side="left")
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    cache, kwarg = DynamicCache(), cache_kwarg(model)
    with contiguous_head_input(model):  # the last position of each prompt: a strided slice
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{kwarg: cache})
    rows = torch.tensor(member, device=device)
    cache.batch_select_indices(rows)  # indexing: each prompt's keys/values reach its rows with gradient
    # row j's first token after its prompt, predicted by the prompt's last position: [b]
    first_ids = ids.gather(1, starts[:, None])
    head = selective_log_softmax(out.logits[:, -1:][rows], first_ids, temperature=temperature)[:, 0]

    # the rest of each row, right-padded, its positions continuing from its own prompt
    rest = [ids[j, s:n].tolist() for j, (s, n) in enumerate(zip(starts.tolist(), lengths.tolist()))]
    rest_ids, rest_mask = pad_rows(rest, pad, side="right")
    rest_ids, rest_mask = rest_ids.to(device), rest_mask.to(device)
    n_rest = rest_ids.shape[1]
    rest_positions = starts[:, None] + torch.arange(n_rest, device=device)[None, :]
    full_mask = torch.cat([prompt_mask[rows], rest_mask], dim=1)
    # output column q is position first + q, rest column first + q - start; the rest's column
    # c predicts its column c + 1, and column 0 was predicted by the prompt (head)
    at, q = (scored & (columns > (starts - first)[:, None])).nonzero(as_tuple=True)
    c = first + q - starts[at]
    tail = gathered_logprobs(model, dict(input_ids=rest_ids, attention_mask=full_mask, position_ids=rest_positions,
                                         use_cache=True, logits_to_keep=0, **{kwarg: cache}),
                             at, c - 1, rest_ids[at, c], temperature)
    laid = scatter_rows(tail, at, q, (b, width - first))
    head_cols = (starts - first)[:, None]
    return laid.scatter_add(1, head_cols, head[:, None] * scored.gather(1, head_cols))
