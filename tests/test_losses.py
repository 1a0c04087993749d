"""Hand-made tensors against the SCoRe maths in selfcorrect/losses.py."""

import math

import pytest
import torch

from selfcorrect.losses import (
    combine_stats,
    kl_penalty,
    kl_value,
    policy_loss,
    previous_attempt_strata,
    rloo_advantages,
    selective_log_softmax,
    stage_rewards,
    token_advantages,
    turn_kl_coefficients,
)

NAN = float("nan")


# --- selective_log_softmax --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 2, 4, 10])
def test_selective_log_softmax_matches_log_softmax_gather(dtype, chunk_rows):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 7, 11, generator=g)).to(dtype).requires_grad_()
    ids = torch.randint(0, 11, (5, 7), generator=g)
    upstream = torch.randn(5, 7, generator=g)

    out = selective_log_softmax(logits, ids, chunk_rows=chunk_rows)
    assert out.dtype == torch.float32 and out.shape == (5, 7)
    (out * upstream).sum().backward()
    grad = logits.grad.clone()
    logits.grad = None

    ref = torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    (ref * upstream).sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    assert grad.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16 gradients are rounded to bf16
    assert torch.allclose(grad.float(), logits.grad.float(), atol=tol)


def test_selective_log_softmax_gradcheck_fp64():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.randint(0, 6, (3, 4), generator=g)
    assert torch.autograd.gradcheck(lambda x: selective_log_softmax(x, ids, chunk_rows=2), (logits,))


def test_selective_log_softmax_rejects_bad_ids():
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="-100"):
        selective_log_softmax(logits, torch.full((2, 3), -100))
    with pytest.raises(ValueError, match="shape"):
        selective_log_softmax(logits, torch.zeros(2, 4, dtype=torch.long))


# --- turn_kl_coefficients ---------------------------------------------------------------------


def test_turn_kl_coefficients_stage1_pins_earlier_attempts():
    turn_ids = torch.tensor([[0, 1, 1, 0, 2, 2, 0], [0, 0, 1, 1, 1, 0, 0], [0, 1, 0, 2, 0, 3, 3]])
    c = turn_kl_coefficients(turn_ids, stage=1, beta1=0.01, beta2=0.1)
    b12 = 0.01 + 0.1
    expected = torch.tensor(
        [
            [0, b12, b12, 0, 0.01, 0.01, 0],
            [0, 0, 0.01, 0.01, 0.01, 0, 0],  # a row with only attempt 1: it is the last one
            [0, b12, 0, b12, 0, 0.01, 0.01],  # 3 attempts: 1 and 2 pinned, 3 trained
        ]
    )
    assert c.dtype == torch.float32
    assert torch.allclose(c, expected)


def test_turn_kl_coefficients_stage2_beta1_everywhere():
    turn_ids = torch.tensor([[0, 1, 1, 0, 2, 2, 0]])
    c = turn_kl_coefficients(turn_ids, stage=2, beta1=0.01, beta2=0.1)
    assert torch.allclose(c, torch.tensor([[0, 0.01, 0.01, 0, 0.01, 0.01, 0]]))
    with pytest.raises(ValueError, match="stage"):
        turn_kl_coefficients(turn_ids, stage=3, beta1=0.01, beta2=0.1)


# --- stage_rewards ----------------------------------------------------------------------------

# rows: i->c, c->c, c->i, i->i
R_TRANSITIONS = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])


def test_stage2_turn2_shaped_rewards_and_no_bonus_on_turn1():
    rewards, has = stage_rewards(R_TRANSITIONS, stage=2, alpha=10.0)
    assert rewards[:, 1].tolist() == [11.0, 1.0, -10.0, 0.0]
    assert rewards[:, 0].tolist() == [0.0, 1.0, 1.0, 0.0]  # turn 1 gets r1, never the bonus
    assert has.all()


def test_stage1_only_last_attempt_rewarded():
    rewards, has = stage_rewards(R_TRANSITIONS, stage=1, alpha=10.0)
    assert has[:, 0].tolist() == [False] * 4
    assert rewards[:, 0].tolist() == [0.0] * 4
    assert has[:, 1].all()
    assert rewards[:, 1].tolist() == [1.0, 1.0, 0.0, 0.0]


def test_stage_rewards_nan_handling_and_three_attempts():
    r = torch.tensor([[NAN, 1.0, 1.0], [1.0, NAN, 0.0], [0.0, 1.0, NAN]])
    rewards, has = stage_rewards(r, stage=2, alpha=2.0)
    assert has.tolist() == [[False, False, True], [True, False, False], [True, True, False]]
    assert not torch.isnan(rewards).any()
    assert rewards.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0]]
    rewards1, has1 = stage_rewards(r, stage=1, alpha=2.0)
    assert has1.tolist() == [[False, False, True], [False, False, True], [False, False, False]]
    assert rewards1.tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]


# --- rloo_advantages --------------------------------------------------------------------------


def test_rloo_by_hand_with_excluded_samples():
    # P=2 prompts, k=4 samples, n=1 attempt.
    rewards = torch.tensor([[[1.0], [0.0], [1.0], [123.0]], [[5.0], [0.0], [0.0], [0.0]]])
    has = torch.tensor([[[True], [True], [True], [False]], [[True], [False], [False], [False]]])
    adv, valid = rloo_advantages(rewards, has)
    # prompt 0: the 4th sample is excluded; baselines over the other two rewarded samples
    assert adv[0, :, 0].tolist() == pytest.approx([1 - 0.5, 0 - 1.0, 1 - 0.5, 0.0])
    assert valid[0, :, 0].tolist() == [True, True, True, False]
    # prompt 1: one rewarded sample, no baseline -> nothing valid
    assert adv[1, :, 0].tolist() == [0.0] * 4
    assert valid[1, :, 0].tolist() == [False] * 4


def test_rloo_per_attempt_independent_groups():
    # P=1, k=3, n=2: attempt 2 uses shaped rewards, baselines never mix attempts.
    rewards = torch.tensor([[[1.0, 11.0], [0.0, -10.0], [1.0, 1.0]]])
    has = torch.ones(1, 3, 2, dtype=torch.bool)
    adv, valid = rloo_advantages(rewards, has)
    assert valid.all()
    assert adv[0, :, 0].tolist() == pytest.approx([0.5, -1.0, 0.5])
    assert adv[0, :, 1].tolist() == pytest.approx([11 - (-9 / 2), -10 - 6.0, 1 - 0.5])
    # a NaN in a masked-out slot must not leak into anyone's baseline
    rewards[0, 2, 1] = NAN
    has[0, 2, 1] = False
    adv, valid = rloo_advantages(rewards, has)
    assert adv[0, :, 1].tolist() == pytest.approx([21.0, -21.0, 0.0])
    assert valid[0, :, 1].tolist() == [True, True, False]


def test_rloo_strata_compare_with_samples_of_the_same_previous_score():
    # P=1, k=4, n=2, Stage II rewards. Attempt 1 scored 1, 1, 0, 0; attempt 2: copy (1), copy (1),
    # fix (11), copy (0). With strata = attempt 1's score, a copied right answer is measured
    # against the other right first attempt (advantage 0), the fix against the wrong one that stayed.
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    rewards, has = stage_rewards(r, stage=2, alpha=10.0)
    strata = previous_attempt_strata(r)
    adv, valid = rloo_advantages(rewards.view(1, 4, 2), has.view(1, 4, 2), strata.view(1, 4, 2))
    assert valid.all()
    assert adv[0, :, 0].tolist() == pytest.approx([2 / 3, 2 / 3, -2 / 3, -2 / 3])  # attempt 1: one stratum
    assert adv[0, :, 1].tolist() == pytest.approx([0.0, 0.0, 11.0, -11.0])
    plain, _ = rloo_advantages(rewards.view(1, 4, 2), has.view(1, 4, 2))
    assert plain[0, :, 1].tolist() == pytest.approx([1 - 4.0, 1 - 4.0, 11 - 2 / 3, 0 - 13 / 3])


def test_rloo_strata_fall_back_to_the_group_and_never_see_the_own_reward():
    rewards = torch.tensor([[[1.0], [0.0], [1.0], [0.0]]])
    has = torch.ones(1, 4, 1, dtype=torch.bool)
    strata = torch.tensor([[[0.0], [1.0], [1.0], [NAN]]])  # samples 0 and 3 have no peer
    adv, valid = rloo_advantages(rewards, has, strata)
    assert valid.all()
    assert adv[0, :, 0].tolist() == pytest.approx([1 - 1 / 3, 0 - 1.0, 1 - 0.0, 0 - 2 / 3])
    # a sample's baseline (reward - advantage) does not move when its own reward does
    moved = rewards.clone()
    moved[0, 1, 0] = 7.0
    adv2, _ = rloo_advantages(moved, has, strata)
    assert (moved - adv2)[0, 1, 0] == pytest.approx((rewards - adv)[0, 1, 0])
    # peers without a reward do not count: sample 2's only peer is unrewarded -> the group's mean
    has[0, 1, 0] = False
    adv3, valid3 = rloo_advantages(rewards, has, strata)
    assert valid3[0, :, 0].tolist() == [True, False, True, True]
    assert adv3[0, 2, 0] == pytest.approx(1 - 1 / 2)
    with pytest.raises(ValueError, match="strata"):
        rloo_advantages(rewards, has, strata[:, :2])


def test_previous_attempt_strata():
    r = torch.tensor([[1.0, 0.0, 1.0], [NAN, 0.5, 0.0]])
    strata = previous_attempt_strata(r)
    assert strata[:, 0].tolist() == [0.0, 0.0]
    assert strata[0, 1:].tolist() == [1.0, 0.0]
    assert torch.isnan(strata[1, 1]) and strata[1, 2] == 0.5


# --- token_advantages -------------------------------------------------------------------------


def test_token_advantages_gamma_zero():
    turn_ids = torch.tensor([[0, 1, 1, 0, 2, 2, 0], [0, 1, 0, 0, 2, 0, 0]])
    adv = torch.tensor([[0.5, -2.0], [3.0, 7.0]])
    valid = torch.tensor([[True, True], [False, True]])
    tok, mask = token_advantages(adv, valid, turn_ids)
    assert tok.tolist() == [[0, 0.5, 0.5, 0, -2.0, -2.0, 0], [0, 0, 0, 0, 7.0, 0, 0]]
    assert mask.tolist() == [
        [False, True, True, False, True, True, False],
        [False, False, False, False, True, False, False],
    ]
    with pytest.raises(ValueError, match="attempt 3"):
        token_advantages(adv, valid, torch.tensor([[0, 3], [0, 1]]))


# --- KL ---------------------------------------------------------------------------------------


def test_kl_penalty_and_value_formulas():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    d = logp.detach() - ref
    assert torch.allclose(kl_penalty(logp, ref, "k2"), 0.5 * d**2)
    assert torch.allclose(kl_penalty(logp, ref, "k1"), d * logp.detach())
    assert torch.allclose(kl_penalty(logp, ref, "k3"), torch.exp(-d) + d - 1)
    assert torch.allclose(kl_value(logp, ref, "k1"), d)
    assert not kl_value(logp, ref, "k3").requires_grad
    # k1's loss gradient is the detached log-ratio, like a REINFORCE reward
    kl_penalty(logp, ref, "k1").sum().backward()
    assert torch.allclose(logp.grad, d)
    with pytest.raises(ValueError, match="'k4'"):
        kl_penalty(logp, ref, "k4")
    with pytest.raises(ValueError, match="'kl'"):
        kl_value(logp, ref, "kl")


def _expected_kl_loss_grad(theta: torch.Tensor, ref_logits: torch.Tensor, estimator: str) -> torch.Tensor:
    """Exact E_{a~pi}[grad of kl_penalty at a], enumerating the actions (sampling weights fixed)."""
    theta = theta.detach().clone().requires_grad_()
    logp_all = torch.log_softmax(theta, -1)
    ref_all = torch.log_softmax(ref_logits, -1)
    weights = logp_all.detach().exp()
    (weights * kl_penalty(logp_all[None], ref_all[None], estimator)[0]).sum().backward()
    return theta.grad


def test_k1_k2_losses_have_unbiased_gradient_k3_does_not():
    theta = torch.tensor([0.3, -1.0, 2.0, 0.0, 0.5], dtype=torch.float64)
    ref_logits = torch.tensor([1.0, 0.0, -0.5, 0.2, 0.0], dtype=torch.float64)

    t = theta.clone().requires_grad_()
    p, logp, logq = torch.softmax(t, -1), torch.log_softmax(t, -1), torch.log_softmax(ref_logits, -1)
    (p * (logp - logq)).sum().backward()
    true_grad = t.grad  # gradient of KL(pi || ref)

    t2 = theta.clone().requires_grad_()
    (logq.exp() * (logq - torch.log_softmax(t2, -1))).sum().backward()
    reverse_grad = t2.grad  # gradient of KL(ref || pi)

    assert torch.allclose(_expected_kl_loss_grad(theta, ref_logits, "k2"), true_grad)
    assert torch.allclose(_expected_kl_loss_grad(theta, ref_logits, "k1"), true_grad)
    k3 = _expected_kl_loss_grad(theta, ref_logits, "k3")
    assert not torch.allclose(k3, true_grad, atol=1e-3)
    assert torch.allclose(k3, reverse_grad)


# --- policy_loss ------------------------------------------------------------------------------


def test_one_sgd_step_moves_probability_to_higher_advantage_action():
    theta = torch.nn.Parameter(torch.zeros(5))
    opt = torch.optim.SGD([theta], lr=0.5)
    actions = torch.tensor([[1], [3]])  # two sampled episodes, one token each
    turn_ids = torch.ones(2, 1, dtype=torch.long)
    logp = torch.log_softmax(theta, -1)[actions]  # [2, 1]
    token_adv = torch.tensor([[1.0], [-1.0]])
    pg_mask = torch.ones(2, 1, dtype=torch.bool)
    kl_coef = torch.full((2, 1), 0.1)
    loss, stats = policy_loss(logp, logp.detach(), token_adv, pg_mask, kl_coef, turn_ids)
    assert stats["kl_sum_t1"] == pytest.approx(0.0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    p = torch.softmax(theta.detach(), -1)
    assert p[1] > 0.2 > p[3]
    assert p[1] > p[0] and p[3] < p[0]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_term_pulls_perturbed_policy_back_to_reference(estimator):
    ref_logits = torch.tensor([0.5, -0.5, 1.0, 0.0, -1.0])
    ref_logp_all = torch.log_softmax(ref_logits, -1)
    theta = torch.nn.Parameter(ref_logits + torch.tensor([2.0, -1.0, -1.5, 1.0, 0.5]))
    opt = torch.optim.SGD([theta], lr=0.5)
    g = torch.Generator().manual_seed(0)

    def true_kl() -> float:
        lp = torch.log_softmax(theta.detach(), -1)
        return float((lp.exp() * (lp - ref_logp_all)).sum())

    start = true_kl()
    for _ in range(60):
        a = torch.multinomial(torch.softmax(theta.detach(), -1), 64, replacement=True, generator=g)
        logp = torch.log_softmax(theta, -1)[a][None]  # [1, 64]: one row of 64 turn-1 tokens
        turn_ids = torch.ones(1, 64, dtype=torch.long)
        loss, stats = policy_loss(
            logp, ref_logp_all[a][None], torch.zeros(1, 64), torch.zeros(1, 64, dtype=torch.bool),
            torch.ones(1, 64), turn_ids, estimator=estimator,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start > 0.5
    assert true_kl() < 0.2 * start


def test_policy_loss_reductions_and_masks_by_hand():
    # row 0: context, two attempt-1 tokens, context, one attempt-2 token; row 1: one attempt-1 token
    turn_ids = torch.tensor([[0, 1, 1, 0, 2], [0, 1, 0, 0, 0]])
    logp = torch.tensor([[float("-inf"), -1.0, -2.0, NAN, -0.5], [0.0, -3.0, 0.0, 0.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[0.0, -1.0, -1.0, 0.0, -1.5], [0.0, -1.0, 0.0, 0.0, 0.0]])
    token_adv = torch.tensor([[0.0, 2.0, 2.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    pg_mask = torch.tensor([[False, True, True, False, True], [False, False, False, False, False]])
    kl_coef = torch.tensor([[0.0, 0.5, 0.5, 0.0, 0.1], [0.0, 0.5, 0.0, 0.0, 0.0]])

    # per-token terms: pg = [2, 4, -0.5 | 0]; k2 kl = [0, 0.5*0.5*1, 0.1*0.5*1 | 0.5*0.5*4]
    pg = [2.0, 4.0, -0.5, 0.0]
    kl = [0.0, 0.25, 0.05, 1.0]
    loss, stats = policy_loss(logp, ref, token_adv, pg_mask, kl_coef, turn_ids)
    assert math.isfinite(loss.item())  # -inf / NaN on context tokens do not leak
    assert stats["pg_loss"] == pytest.approx(sum(pg) / 4)
    assert stats["kl_loss"] == pytest.approx(sum(kl) / 4)
    assert loss.item() == pytest.approx((sum(pg) + sum(kl)) / 4)
    assert stats["n_tokens"] == 4 and stats["n_pg_tokens"] == 3
    loss.backward()
    assert torch.isfinite(logp.grad).all() and logp.grad[0, 0] == 0 and logp.grad[0, 3] == 0

    loss_g, _ = policy_loss(logp, ref, token_adv, pg_mask, kl_coef, turn_ids, denominator=10)
    assert loss_g.item() == pytest.approx((sum(pg) + sum(kl)) / 10)

    # sequence: a mean per (row, attempt): row 0 attempt 1 (2 tokens), row 0 attempt 2 (1), row 1 attempt 1 (1)
    loss_s, stats_s = policy_loss(logp, ref, token_adv, pg_mask, kl_coef, turn_ids, reduction="sequence")
    r0a1 = (sum(pg[:2]) + sum(kl[:2])) / 2
    r0a2 = pg[2] + kl[2]
    r1a1 = pg[3] + kl[3]
    assert loss_s.item() == pytest.approx((r0a1 + r0a2 + r1a1) / 3)

    # per-turn KL stats (k3 value) as sums and counts: attempt 1 over three tokens, attempt 2 over one
    def k3(lp, r):
        return math.exp(r - lp) - (r - lp) - 1

    assert stats["kl_sum_t1"] == pytest.approx(k3(-1, -1) + k3(-2, -1) + k3(-3, -1))
    assert stats["n_tokens_t1"] == 3 and stats["n_tokens_t2"] == 1
    combined = combine_stats([stats])
    assert combined["kl_t1"] == pytest.approx((k3(-1, -1) + k3(-2, -1) + k3(-3, -1)) / 3)
    assert combined["kl_t2"] == pytest.approx(k3(-0.5, -1.5))


def test_sequence_reduction_weighs_attempt_2_independently_of_attempt_1_length():
    def attempt2_grad(len1: int) -> float:
        turn_ids = torch.tensor([[0] + [1] * len1 + [0, 2, 2]])
        logp = torch.full(turn_ids.shape, -1.0, requires_grad=True)
        adv = torch.where(turn_ids == 2, 1.0, 0.5)
        loss, _ = policy_loss(logp, logp.detach(), adv, turn_ids > 0, torch.zeros(turn_ids.shape), turn_ids,
                              reduction="sequence")
        loss.backward()
        return float(logp.grad[0, -1])

    assert attempt2_grad(1) == pytest.approx(attempt2_grad(9))


def test_combined_stats_do_not_depend_on_micro_batch_split():
    torch.manual_seed(0)
    turn_ids = torch.tensor([[0, 1, 1, 0, 2, 2], [0, 0, 1, 0, 2, 0], [0, 1, 1, 1, 0, 2], [0, 1, 0, 2, 2, 2]])
    logp, ref = -torch.rand(4, 6), -torch.rand(4, 6)
    adv = torch.randn(4, 6) * (turn_ids > 0)
    kl_coef = 0.1 * (turn_ids > 0).float()
    den = int((turn_ids > 0).sum())

    def step(split: int) -> dict:
        parts = [policy_loss(logp[s:s + split], ref[s:s + split], adv[s:s + split], turn_ids[s:s + split] > 0,
                             kl_coef[s:s + split], turn_ids[s:s + split], denominator=den)[1]
                 for s in range(0, 4, split)]
        return combine_stats(parts)

    one, two, four = step(1), step(2), step(4)
    for key in ("pg_loss", "kl_loss", "n_tokens", "kl_t1", "kl_t2"):
        assert one[key] == pytest.approx(four[key]) and two[key] == pytest.approx(four[key]), key


def test_policy_loss_rejects_bad_input():
    turn_ids = torch.tensor([[0, 1]])
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="context"):
        policy_loss(z, z, z, torch.tensor([[True, True]]), z, turn_ids)
    with pytest.raises(ValueError, match="reduction"):
        policy_loss(z, z, z, torch.zeros(1, 2, dtype=torch.bool), z, turn_ids, reduction="mean")
    with pytest.raises(ValueError, match="kl_coef"):
        policy_loss(z, z, z, torch.zeros(1, 2, dtype=torch.bool), torch.zeros(2, 2), turn_ids)
    with pytest.raises(ValueError, match="denominator"):
        policy_loss(z, z, z, torch.zeros(1, 2, dtype=torch.bool), z, turn_ids, denominator=0)


def test_policy_loss_empty_batch_keeps_graph():
    logp = torch.zeros(1, 3, requires_grad=True)
    turn_ids = torch.zeros(1, 3, dtype=torch.long)
    z = torch.zeros(1, 3)
    loss, stats = policy_loss(logp, z, z, torch.zeros(1, 3, dtype=torch.bool), z, turn_ids)
    loss.backward()
    assert loss.item() == 0.0 and stats["n_tokens"] == 0 and "kl_sum_t1" not in stats
