"""Supervised fine-tuning on token rows with a loss mask.

One small loop shared by the demo model's warm start, STaR and Pair-SFT: rows of token ids,
a 0/1 mask per row saying which tokens are trained (assistant tokens and their end-of-turn),
right padding, AdamW, linear warmup then cosine (or constant), gradient clipping. The loss is
the mean next-token cross-entropy over every trained token of the whole batch, so micro-batching
(for memory) does not change it.

`encode_chat` turns chat messages into (ids, mask) through the tokenizer's own chat template,
so training sees exactly the token layout that rollout and evaluation will produce.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .batches import pad_rows, token_logprobs
from .optim import adamw, lr_factor
from .progress import progress as progress_report
from .rollout import ChatFormat


def encode_chat(tokenizer, messages: list[dict],
                loss_turns: Sequence[int] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of `messages` rendered by the chat template, and their loss mask.

    loss_turns: which assistant messages are trained, counted 0, 1, ... among assistant
    messages only (None = all). A trained message's tokens are everything its rendering adds
    after the generation prompt, i.e. its content and its end-of-turn token, but not blank
    tokens the template writes after that end token (`ChatFormat.turn_end`).
    Raises ValueError when the template does not render prefixes as token prefixes (then the
    mask cannot be placed and training would silently learn the wrong tokens).
    """
    def ids_of(msgs: list[dict], gen_prompt: bool) -> list[int]:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen_prompt)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    full = ids_of(messages, False)
    mask = [0] * len(full)
    fmt = ChatFormat(tokenizer)  # the turn's stop tokens, as generation sees them
    assistant_index = -1
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        assistant_index += 1
        if loss_turns is not None and assistant_index not in loss_turns:
            continue
        prompt, prefix = ids_of(messages[:i], True), ids_of(messages[: i + 1], False)
        start, end = len(prompt), len(prefix)
        if full[:end] != prefix or full[:start] != prompt or end <= start:
            raise ValueError(f"chat template does not render message {i} (assistant turn "
                             f"{assistant_index}) as a token prefix of the whole conversation")
        cut = fmt.turn_end(full, start, end)
        mask[start:cut] = [1] * (cut - start)
    return full, mask


def masked_token_loss_sum(model, ids: torch.Tensor, attention: torch.Tensor,
                          loss_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropies over trained tokens, and how many there are.

    ids, attention, loss_mask: [B, T] right-padded. Token t is predicted from logits at t-1, so
    the first token of a row is never trained. The log-probs come from `token_logprobs`: logits
    only at trained positions, and a log-softmax a few hundred positions at a time, so a
    half-precision model never gets a float32 copy of its whole [B, T, V] logits.
    """
    trained = loss_mask[:, 1:].bool()  # [B, T-1]: is token t+1 trained
    if not trained.any():
        raise ValueError("masked_token_loss_sum: no trained token after the first position")
    first = int(trained.any(dim=0).nonzero()[0]) + 1  # the earliest trained column of the batch
    scored = trained[:, first - 1:]
    logp = token_logprobs(model, ids, attention, first, scored=scored)  # [B, T - first], 0 where untrained
    weights = scored.to(logp.dtype)
    return -(logp * weights).sum(), int(weights.sum().item())


def sft_train(model, sequences: list[list[int]], loss_masks: list[list[int]], *,
              lr: float, steps: int | None = None, epochs: float | None = None,
              batch_size: int = 32, micro_batch_size: int | None = None, pad_id: int,
              seed: int = 0, schedule: str = "cosine", warmup_steps: int | None = None,
              weight_decay: float = 0.0, max_grad_norm: float = 1.0, betas=(0.9, 0.95),
              progress: bool = False) -> list[float]:
    """Train `model` in place on (sequence, mask) rows; return the loss of every step.

    sequences[i]: token ids of row i; loss_masks[i]: same length, 1 where the token is trained.
    steps or epochs (exactly one): how long to train; rows are visited in a seeded shuffled
    order, reshuffled each epoch. batch_size rows per optimizer step, run as micro-batches of
    micro_batch_size rows (default: all at once) with the loss averaged over the batch's trained
    tokens. warmup_steps default: 5% of steps. Runs on the model's device. progress: report
    the step and loss (a bar on a terminal, a line now and then in a log).
    """
    if len(sequences) != len(loss_masks) or not sequences:
        raise ValueError(f"sft_train needs as many loss masks as sequences (got {len(sequences)} "
                         f"sequences, {len(loss_masks)} masks) and at least one row")
    for i, (row, mask) in enumerate(zip(sequences, loss_masks)):
        if len(row) != len(mask):
            raise ValueError(f"sft_train row {i}: {len(row)} tokens but a loss mask of {len(mask)}")
        if sum(mask[1:]) == 0:
            raise ValueError(f"sft_train row {i}: no trained token after the first position")
    if (steps is None) == (epochs is None):
        raise ValueError("sft_train: give exactly one of steps and epochs")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"sft_train schedule={schedule!r}: expected 'cosine' or 'constant'")
    if batch_size < 1 or (micro_batch_size is not None and micro_batch_size < 1):
        raise ValueError(f"sft_train batch_size={batch_size}, micro_batch_size={micro_batch_size}: must be >= 1")
    total = steps if steps is not None else max(1, math.ceil(epochs * len(sequences) / batch_size))
    warmup = warmup_steps if warmup_steps is not None else max(1, total // 20)
    micro = micro_batch_size or batch_size
    device = next(model.parameters()).device

    optimizer = adamw(model, lr, weight_decay, betas=betas)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    report = progress_report(total, "sft", enabled=progress)
    for step in range(total):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = torch.randperm(len(sequences), generator=generator).tolist()
            batch.append(order.pop())
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_factor(step, total, warmup, schedule)
        n_tokens = sum(sum(loss_masks[i][1:]) for i in batch)
        step_loss = 0.0
        for start in range(0, len(batch), micro):
            rows = batch[start: start + micro]
            ids, attention = pad_rows([sequences[i] for i in rows], pad_id)
            mask, _ = pad_rows([loss_masks[i] for i in rows], 0)
            loss_sum, _ = masked_token_loss_sum(model, ids.to(device), attention.to(device), mask.to(device))
            (loss_sum / n_tokens).backward()
            step_loss += loss_sum.item() / n_tokens
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        report.update(1)
        report.set_postfix(loss=f"{step_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    report.close()
    model.eval()
    return losses
