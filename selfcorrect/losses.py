"""The SCoRe maths as pure tensor functions: log-probs, per-turn KL, rewards, RLOO, PG loss.

Nothing here knows about models, tokenizers or configs; every function takes aligned tensors
and is tested on hand-made ones (tests/test_losses.py).

Conventions
    B rows (episodes), T tokens, V vocabulary, n attempts, P prompts, k samples per prompt.
    A row is the token sequence [x, y1, p, y2, ...]. `turn_ids[b, t]` is 0 for context
    (prompt, correction instruction, padding) and i (1-based) for tokens of attempt i. The
    caller has already shifted labels: logp[b, t] is the log-prob of the token that turn_ids[b, t]
    describes, so every [B, T] tensor here is aligned with every other.

Rewards (SCORE.md §2, binary r, γ = 0 — each attempt's tokens see only their own reward)
    Stage I : attempt < last: no reward, KL β1 + β2 (pinned to the reference); last: r_last, KL β1.
    Stage II: attempt 1: r1; attempt i ≥ 2: r_i + α (r_i − r_{i−1}); KL β1 everywhere.
    The bonus is never folded into a trajectory return: with α = 10 that would reward a wrong
    first attempt followed by a right second one on the *first* attempt's tokens.

Why the KL term is a k2 loss (or k1 in the reward) and not a k3 loss
    We want ∇θ KL(πθ ‖ πref) at a state s, where KL = E_{a∼πθ}[log πθ(a) − log πref(a)].
    Differentiating the expectation gives E_a[(log πθ − log πref) ∇ log πθ] + E_a[∇ log πθ],
    and the second term is zero (Σ_a ∇πθ(a) = ∇1 = 0). So the true gradient is
    E_a[(log πθ(a) − log πref(a)) ∇ log πθ(a)], estimated from the sampled tokens by:
      * k1 in the reward: treat δ = log πθ − log πref as a constant (detached) penalty and take
        the REINFORCE gradient of δ·log πθ → exactly δ ∇ log πθ per sample. Unbiased.
      * k2 as a loss: ∇ ½ δ² = δ ∇ log πθ per sample, the same quantity. Unbiased, and it
        is a plain differentiable loss (no detach trick), hence our default.
      * k3 as a loss: k3 = ρ − log ρ − 1 with ρ = πref/πθ is an unbiased, low-variance
        *value* estimator of KL(πθ ‖ πref), but its gradient per sample is (1 − ρ) ∇ log πθ,
        whose expectation is −Σ_a πref(a) ∇ log πθ(a) = ∇ KL(πref ‖ πθ): the gradient of the
        *reverse* KL. It still pulls πθ toward πref, but it optimises a different divergence,
        so it is kept for comparison only. `kl_value` uses k3 for logging, where it is best.
    Per-token caveat [our reading]: like every per-token KL in RLHF code, these penalise the
    KL of each sampled position's next-token distribution and ignore how a token changes the
    KL of later positions (the score-function term through future states), consistent with
    γ = 0 for rewards.

Memory: `selective_log_softmax` gathers chosen-token log-probs a few rows at a time in fp32
with a hand-written backward, so neither the forward nor the autograd graph ever holds a
[B, T, V] fp32 tensor for the whole batch (autograd through log_softmax would keep one fp32
copy per chunk alive until backward, i.e. all of them).
"""

from __future__ import annotations

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")


# ---------------------------------------------------------------------------------------------
# Log-probs of the chosen tokens
# ---------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half/bf16/fp32 logits; fp64 logits stay fp64 (gradcheck, reference maths)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log_softmax(logits / temperature)[ids] with a chunked, recomputing backward.

    Saves only the input logits (which the model holds anyway), ids and the [B, T] logsumexp;
    backward recomputes softmax per chunk: ∂out/∂logits = grad · (onehot(ids) − softmax(z/τ)) / τ.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, chunk_rows: int, temperature: float) -> Tensor:
        dt = _compute_dtype(logits.dtype)
        out = torch.empty(ids.shape, dtype=dt, device=logits.device)
        lse = torch.empty(ids.shape, dtype=dt, device=logits.device)
        for s in range(0, logits.shape[0], chunk_rows):
            chunk = logits[s : s + chunk_rows].to(dt)  # [c, T, V] fp32, freed each iteration
            if temperature != 1.0:
                chunk = chunk / temperature
            lse[s : s + chunk_rows] = torch.logsumexp(chunk, dim=-1)
            picked = chunk.gather(-1, ids[s : s + chunk_rows].unsqueeze(-1)).squeeze(-1)
            out[s : s + chunk_rows] = picked - lse[s : s + chunk_rows]
        ctx.save_for_backward(logits, ids, lse)
        ctx.chunk_rows = chunk_rows
        ctx.temperature = temperature
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        logits, ids, lse = ctx.saved_tensors
        chunk_rows, temperature = ctx.chunk_rows, ctx.temperature
        grad_logits = torch.empty_like(logits)
        for s in range(0, logits.shape[0], chunk_rows):
            g = grad_out[s : s + chunk_rows].to(lse.dtype).unsqueeze(-1) / temperature  # [c, T, 1]
            scaled = logits[s : s + chunk_rows].to(lse.dtype)
            if temperature != 1.0:
                scaled = scaled / temperature
            # fp32 logits: built in place in the result (no [c, T, V] buffer and copy per chunk)
            into = grad_logits[s : s + chunk_rows] if logits.dtype == lse.dtype else None
            probs = torch.sub(scaled, lse[s : s + chunk_rows].unsqueeze(-1), out=into).exp_()
            grad = probs.mul_(-g)  # −grad · softmax / τ
            grad.scatter_add_(-1, ids[s : s + chunk_rows].unsqueeze(-1), g)  # + grad / τ at the chosen id
            if into is None:
                grad_logits[s : s + chunk_rows] = grad.to(logits.dtype)
        return grad_logits, None, None, None


def selective_log_softmax(logits: Tensor, ids: Tensor, chunk_rows: int = 4, temperature: float = 1.0) -> Tensor:
    """log_softmax(logits / temperature, -1) gathered at `ids`, a chunk of rows at a time, in fp32.

    logits: [B, T, V] any float dtype (bf16 typical). ids: LongTensor [B, T], values in [0, V).
    temperature > 0: the one the tokens were sampled at (their distribution is softmax(z / T)).
    Returns [B, T] float32 (float64 if logits are float64), differentiable w.r.t. logits.
    Peak extra memory is about three [chunk_rows, T, V] fp32 buffers, in forward and backward.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if ids.shape != logits.shape[:2]:
        raise ValueError(f"ids shape {tuple(ids.shape)} != logits [B, T] {tuple(logits.shape[:2])}")
    if ids.dtype != torch.long:
        raise ValueError(f"ids must be torch.long, got {ids.dtype}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= logits.shape[-1]):
        # An out-of-range id is a device-side assert on CUDA; say what is wrong instead.
        raise ValueError(
            f"ids must lie in [0, {logits.shape[-1]}), got min {int(ids.min())} max {int(ids.max())}"
            " (replace padding labels such as -100 by a valid id and mask them with turn_ids)"
        )
    return _SelectiveLogSoftmax.apply(logits, ids, chunk_rows, float(temperature))


# ---------------------------------------------------------------------------------------------
# Per-turn coefficients and rewards
# ---------------------------------------------------------------------------------------------


def _check_turn_ids(turn_ids: Tensor) -> None:
    if turn_ids.dim() != 2:
        raise ValueError(f"turn_ids must be [B, T], got shape {tuple(turn_ids.shape)}")
    if turn_ids.dtype not in (torch.long, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"turn_ids must be an integer tensor, got {turn_ids.dtype}")
    if turn_ids.numel() and int(turn_ids.min()) < 0:
        raise ValueError(f"turn_ids must be >= 0 (0 = context), got min {int(turn_ids.min())}")


def _check_stage(stage: int) -> None:
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")


def turn_kl_coefficients(turn_ids: Tensor, stage: int, beta1: float, beta2: float) -> Tensor:
    """Per-token KL weight (SCORE.md Eq. 3–5).

    turn_ids: [B, T] integer, 0 = context, i = attempt i.
    Stage 1: tokens of attempts before the row's last present attempt get β1 + β2 (Eq. 3 pins
    them to the reference), the last attempt gets β1. Stage 2: β1 on every attempt token.
    Returns [B, T] float32; context tokens 0.
    """
    _check_turn_ids(turn_ids)
    _check_stage(stage)
    is_attempt = turn_ids > 0
    coef = torch.where(is_attempt, float(beta1), 0.0).to(torch.float32)
    if stage == 1:
        last = turn_ids.amax(dim=1, keepdim=True)  # [B, 1]: the last attempt present per row
        earlier = is_attempt & (turn_ids < last)
        coef = torch.where(earlier, float(beta1 + beta2), coef)
    return coef


def stage_rewards(r: Tensor, stage: int, alpha: float) -> tuple[Tensor, Tensor]:
    """Per-attempt rewards by stage (SCORE.md §2 table).

    r: [B, n] float, r[b, i] the verifier reward of attempt i+1 (NaN = verifier returned None).
    Stage 1: only attempt n is rewarded (r_n); attempts < n have no reward.
    Stage 2: attempt 1 gets r1; attempt i ≥ 2 gets r_i + α (r_i − r_{i−1}) — the bonus goes to
    the later attempt's tokens only.
    Returns (rewards [B, n] float32, has_reward [B, n] bool); rewards are 0 where has_reward is
    False, which happens where a reward is undefined or uses a NaN.
    """
    if r.dim() != 2 or r.shape[1] < 1:
        raise ValueError(f"r must be [B, n] with n >= 1, got shape {tuple(r.shape)}")
    if not r.is_floating_point():
        raise ValueError(f"r must be a float tensor (NaN marks a failed verifier), got {r.dtype}")
    _check_stage(stage)
    r = r.to(torch.float32)
    ok = ~torch.isnan(r)
    if stage == 1:
        has = torch.zeros_like(ok)
        has[:, -1] = ok[:, -1]
        raw = r
    else:
        raw = r.clone()
        raw[:, 1:] = r[:, 1:] + alpha * (r[:, 1:] - r[:, :-1])
        has = ok.clone()
        has[:, 1:] = ok[:, 1:] & ok[:, :-1]
    rewards = torch.where(has, raw, torch.zeros_like(raw))  # where, not *: NaN * 0 is NaN
    return rewards, has


def rloo_advantages(rewards: Tensor, has_reward: Tensor, strata: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Leave-one-out (RLOO) advantages per prompt and attempt over the k samples.

    rewards: [P, k, n] float; has_reward: [P, k, n] bool; strata: optional [P, k, n] float.
    For a rewarded sample j: adv_j = R_j − mean(R of the OTHER rewarded samples of the same
    prompt and attempt). Unrewarded samples are left out of every baseline. A sample without a
    reward, or whose group has no other rewarded sample, gets adv 0 and valid False.
    With `strata`, the baseline is the mean over the other rewarded samples of the same stratum
    (equal values; NaN matches nothing) where the sample has any, the whole group's otherwise.
    A stratum that depends only on what came before the attempt (e.g. the previous attempt's
    score) keeps the gradient unbiased: the baseline never sees the sample's own attempt.
    Returns (adv [P, k, n] float32, valid [P, k, n] bool).
    """
    if rewards.dim() != 3:
        raise ValueError(f"rewards must be [P, k, n], got shape {tuple(rewards.shape)}")
    if has_reward.shape != rewards.shape or has_reward.dtype != torch.bool:
        raise ValueError(
            f"has_reward must be a bool tensor of shape {tuple(rewards.shape)}, "
            f"got {has_reward.dtype} {tuple(has_reward.shape)}"
        )
    if strata is not None and strata.shape != rewards.shape:
        raise ValueError(f"strata must have shape {tuple(rewards.shape)}, got {tuple(strata.shape)}")
    r = torch.where(has_reward, rewards.to(torch.float32), 0.0)
    count = has_reward.sum(dim=1, keepdim=True)  # [P, 1, n] rewarded samples per group
    total = r.sum(dim=1, keepdim=True)  # [P, 1, n]
    valid = has_reward & (count >= 2)
    others = (count - 1).clamp(min=1).to(torch.float32)
    baseline = (total - r) / others  # mean of the other rewarded samples
    if strata is not None:
        k = rewards.shape[1]
        same = strata.unsqueeze(2) == strata.unsqueeze(1)  # [P, k(i), k(j), n]: j shares i's stratum
        same &= has_reward.unsqueeze(1) & ~torch.eye(k, dtype=torch.bool, device=r.device)[None, :, :, None]
        peers = same.sum(dim=2)  # [P, k, n]
        peer_total = (same * r.unsqueeze(1)).sum(dim=2)
        baseline = torch.where(peers > 0, peer_total / peers.clamp(min=1), baseline)
    adv = torch.where(valid, r - baseline, 0.0)
    return adv, valid


def previous_attempt_strata(r: Tensor) -> Tensor:
    """Strata for `rloo_advantages` that compare an attempt only with samples whose previous
    attempt scored the same: r [B, n] verifier rewards (NaN = none) -> [B, n] float, attempt 1
    all in one stratum (0), attempt i >= 2 in stratum r[:, i-1] (NaN: its own, alone)."""
    if r.dim() != 2 or r.shape[1] < 1:
        raise ValueError(f"r must be [B, n] with n >= 1, got shape {tuple(r.shape)}")
    strata = torch.zeros_like(r, dtype=torch.float32)
    strata[:, 1:] = r[:, :-1].to(torch.float32)
    return strata


def token_advantages(adv: Tensor, valid: Tensor, turn_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Spread per-attempt advantages over the attempt's tokens (γ = 0).

    adv: [B, n] float; valid: [B, n] bool; turn_ids: [B, T] integer with values in [0, n].
    Returns (token_adv [B, T] float32, pg_mask [B, T] bool): token t of attempt i gets adv[b, i-1];
    context tokens and tokens of invalid attempts get 0 / False.
    """
    _check_turn_ids(turn_ids)
    if adv.dim() != 2 or valid.shape != adv.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"adv must be [B, n] and valid a bool tensor of the same shape, "
            f"got adv {tuple(adv.shape)}, valid {valid.dtype} {tuple(valid.shape)}"
        )
    if adv.shape[0] != turn_ids.shape[0]:
        raise ValueError(f"adv has {adv.shape[0]} rows but turn_ids has {turn_ids.shape[0]}")
    n = adv.shape[1]
    if turn_ids.numel() and int(turn_ids.max()) > n:
        raise ValueError(f"turn_ids has attempt {int(turn_ids.max())} but adv has only {n} attempts")
    is_attempt = turn_ids > 0
    idx = (turn_ids.long() - 1).clamp(min=0)  # context tokens read column 0, then get masked out
    tok_adv = adv.to(torch.float32).gather(1, idx)
    tok_valid = valid.gather(1, idx) & is_attempt
    return torch.where(tok_valid, tok_adv, 0.0), tok_valid


# ---------------------------------------------------------------------------------------------
# KL and the policy loss
# ---------------------------------------------------------------------------------------------


def _check_estimator(estimator: str) -> None:
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k2") -> Tensor:
    """Per-token KL *loss* term (see the module docstring for which gradients are unbiased).

    logp: [B, T] policy log-probs of the sampled tokens (with grad); ref_logp: [B, T] reference.
    'k2': ½ (logp − ref)²; 'k1': (logp − ref).detach() · logp (k1 as a REINFORCE reward);
    'k3': exp(ref − logp) − (ref − logp) − 1 (biased gradient: ∇ KL(ref ‖ π); comparison only).
    Returns [B, T].
    """
    _check_estimator(estimator)
    ref_logp = ref_logp.detach()
    if estimator == "k2":
        return 0.5 * (logp - ref_logp).square()
    if estimator == "k1":
        return (logp - ref_logp).detach() * logp
    log_ratio = ref_logp - logp
    return log_ratio.exp() - log_ratio - 1.0


def kl_value(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(π ‖ π_ref) for logging, detached.

    logp, ref_logp: [B, T]. 'k1': logp − ref (unbiased, high variance, can be negative);
    'k2': ½ (logp − ref)²; 'k3': exp(ref − logp) − (ref − logp) − 1 (unbiased, ≥ 0, low variance).
    Returns [B, T] without grad.
    """
    _check_estimator(estimator)
    logp, ref_logp = logp.detach(), ref_logp.detach()
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k2":
        return 0.5 * (logp - ref_logp).square()
    log_ratio = ref_logp - logp
    return log_ratio.exp() - log_ratio - 1.0


def policy_loss(
    logp: Tensor,
    ref_logp: Tensor,
    token_adv: Tensor,
    pg_mask: Tensor,
    kl_coef: Tensor,
    turn_ids: Tensor,
    estimator: str = "k2",
    reduction: str = "token",
    denominator: float | int | None = None,
    kl_metric_estimator: str = "k3",
) -> tuple[Tensor, dict[str, float]]:
    """REINFORCE loss with a per-turn KL penalty (SCORE.md Eq. 2–5, γ = 0).

    All inputs are [B, T] and aligned: logp (policy, with grad), ref_logp (reference, no grad),
    token_adv (float), pg_mask (bool), kl_coef (float, from turn_kl_coefficients), turn_ids.
    Per token: −token_adv · logp where pg_mask, plus kl_coef · kl_penalty on every attempt token
    (turn_ids > 0). Context tokens never contribute.
    reduction 'token': sum over attempt tokens / denominator (default: attempt tokens in this
    batch; pass the global count across gradient-accumulation micro-batches instead).
    reduction 'sequence': each attempt's mean over its own tokens (row b, attempt i), summed over
    attempts / denominator (default: the attempts present). Per attempt, not per row, so the
    weight of attempt 2's tokens never depends on how long attempt 1 was.
    Returns (scalar loss, stats). Every stat is a sum, so the stats of gradient-accumulation
    micro-batches combine by adding them (`combine_stats`): 'pg_loss', 'kl_loss' (the two parts,
    already divided by the denominator), 'n_tokens' (attempt tokens), 'n_pg_tokens',
    'kl_sum_t{i}' (summed `kl_metric_estimator` KL over attempt-i tokens), 'n_tokens_t{i}'.
    """
    _check_turn_ids(turn_ids)
    _check_estimator(estimator)
    shape = turn_ids.shape
    for name, x in (("logp", logp), ("ref_logp", ref_logp), ("token_adv", token_adv),
                    ("pg_mask", pg_mask), ("kl_coef", kl_coef)):
        if x.shape != shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected turn_ids' {tuple(shape)}")
    if pg_mask.dtype != torch.bool:
        raise ValueError(f"pg_mask must be bool, got {pg_mask.dtype}")
    is_attempt = turn_ids > 0
    if bool((pg_mask & ~is_attempt).any()):
        raise ValueError("pg_mask is True on context tokens (turn_ids == 0); build it with token_advantages")
    if reduction not in ("token", "sequence"):
        raise ValueError(f"unknown reduction {reduction!r}; expected 'token' or 'sequence'")

    # Zero context positions first: they may hold inf/NaN log-probs (padding), and a NaN that
    # torch.where merely discards in forward still turns into a NaN gradient in backward.
    logp = torch.where(is_attempt, logp, 0.0)
    ref_logp = torch.where(is_attempt, ref_logp.detach(), 0.0)
    pg_tok = torch.where(pg_mask, -token_adv.detach() * logp, 0.0)
    kl_tok = torch.where(is_attempt, kl_coef.detach() * kl_penalty(logp, ref_logp, estimator), 0.0)

    n_tokens = int(is_attempt.sum())
    if reduction == "token":
        default_den = n_tokens
        pg_sum, kl_sum = pg_tok.sum(), kl_tok.sum()
    else:
        default_den = len(attempt_segments(turn_ids))
        pg_sum, kl_sum = _sum_of_attempt_means(pg_tok, turn_ids), _sum_of_attempt_means(kl_tok, turn_ids)
    if denominator is None:
        # An empty micro-batch contributes 0 but keeps the graph so backward() still works.
        den = float(max(default_den, 1))
    else:
        if not denominator > 0:
            raise ValueError(f"denominator must be > 0, got {denominator!r}")
        den = float(denominator)
    pg_loss, kl_loss = pg_sum / den, kl_sum / den

    stats: dict[str, float] = {
        "pg_loss": float(pg_loss.detach()),
        "kl_loss": float(kl_loss.detach()),
        "n_tokens": float(n_tokens),
        "n_pg_tokens": float(pg_mask.sum()),
    }
    kv = kl_value(logp, ref_logp, kl_metric_estimator)
    n_turns = int(turn_ids.max()) if turn_ids.numel() else 0
    for i in range(1, n_turns + 1):
        m = turn_ids == i
        stats[f"kl_sum_t{i}"] = float(torch.where(m, kv, 0.0).sum())
        stats[f"n_tokens_t{i}"] = float(m.sum())
    return pg_loss + kl_loss, stats


def attempt_segments(turn_ids: Tensor) -> list[tuple[int, int]]:
    """(row, attempt) pairs that have at least one token. turn_ids: [B, T] integer."""
    _check_turn_ids(turn_ids)
    n = int(turn_ids.max()) if turn_ids.numel() else 0
    present = torch.stack([(turn_ids == i).any(dim=1) for i in range(1, n + 1)], dim=1) if n else None
    return [] if present is None else [(int(b), int(i) + 1) for b, i in present.nonzero().tolist()]


def _sum_of_attempt_means(per_token: Tensor, turn_ids: Tensor) -> Tensor:
    """Σ over (row, attempt) of the mean of `per_token` over that attempt's tokens. [B, T] → scalar."""
    total = per_token.new_zeros(())
    n = int(turn_ids.max()) if turn_ids.numel() else 0
    for i in range(1, n + 1):
        m = turn_ids == i
        count = m.sum(dim=1)  # [B]
        sums = torch.where(m, per_token, 0.0).sum(dim=1)
        total = total + (sums / count.clamp(min=1).to(per_token.dtype)).sum()
    return total


def combine_stats(parts: list[dict[str, float]]) -> dict[str, float]:
    """The step's statistics from its micro-batches' `policy_loss` stats: sums of sums and
    counts, then the per-attempt KL means kl_t{i} = Σ kl_sum_t{i} / Σ n_tokens_t{i}.
    Independent of how the step was split into micro-batches."""
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():  # sums, except maxima (keys ending in _max)
            total[key] = max(total.get(key, value), value) if key.endswith("_max") else total.get(key, 0.0) + value
    for key in [k for k in total if k.startswith("kl_sum_t")]:
        i = key[len("kl_sum_t"):]
        count = total.get(f"n_tokens_t{i}", 0.0)
        total[f"kl_t{i}"] = total[key] / count if count else float("nan")
    return total
