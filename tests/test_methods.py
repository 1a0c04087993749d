"""The baselines' data (STaR, Pair-SFT) on hand-made rollouts, and every method end to end."""

import json

import pytest

from selfcorrect.methods import ablation_name, train_method
from selfcorrect.methods.traces import cap_right_to_right, pair_rows, star_rows
from selfcorrect.rollout import Rollout
from selfcorrect.tasks.base import CORRECT, WRONG_ANSWER, Problem, Verdict
from test_train import VARIED, tiny_config
from tiny import EchoTask, tiny_model, tiny_tokenizer

P, E = 50, 99  # a prompt token and an end-of-turn token in the hand-made rows
GLUE = [E, 60, 61]  # what follows an attempt: end of turn, instruction, next generation prompt


def _verdict(r):
    return Verdict(r, "", CORRECT) if r == 1.0 else Verdict(r, "", WRONG_ANSWER)


def hand_rollout(rewards: list[tuple[float, float]], problem_index: list[int]) -> Rollout:
    """Row b: prompt [P, b], attempt 1 = [10 + b, E], glue, attempt 2 = [30 + b, E]."""
    problems = [Problem(id=str(i), question="q", reference="a") for i in range(max(problem_index) + 1)]
    ro = Rollout(problems=problems, problem_index=problem_index)
    for b, (r1, r2) in enumerate(rewards):
        y1, y2 = [10 + b, E], [30 + b, E]
        glue = GLUE[1:]  # the attempt already ended with E
        ro.rows.append([P, b] + y1 + glue + y2)
        ro.turns.append([0, 0, 1, 1, 0, 0, 2, 2])
        ro.attempts.append([y1, y2])
        ro.texts.append(["", ""])
        ro.truncated.append([False, False])
        ro.verdicts.append([_verdict(r1), _verdict(r2)])
    return ro


def test_star_keeps_exactly_the_wrong_to_right_traces():
    ro = hand_rollout([(0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0), (0.0, 1.0)], [0, 0, 1, 1, 2])
    rows = star_rows(ro)
    assert rows.sequences == [ro.rows[0], ro.rows[4]] and rows.kinds == {"i->c": 2}
    assert rows.masks[0] == [0, 0, 0, 0, 0, 0, 1, 1]  # attempt-2 tokens only
    plus = star_rows(ro, plus=True, train_attempt1=True)
    assert plus.sequences == [ro.rows[0], ro.rows[1], ro.rows[4]] and plus.kinds == {"i->c": 2, "c->c": 1}
    assert plus.masks[0] == [0, 0, 1, 1, 0, 0, 1, 1]


def test_star_skips_unverified_and_truncated_traces():
    ro = hand_rollout([(0.0, 1.0), (0.0, 1.0)], [0, 1])
    ro.verdicts[0][0] = Verdict(None, None, "timeout")
    ro.truncated[1][1] = True
    assert star_rows(ro).sequences == []


def test_pair_sft_pairs_every_wrong_response_with_a_right_one_of_the_same_problem():
    # problem 0: rows 0, 1 (right answers: row 0 attempt 2, row 1 attempt 1); problem 1: no right answer
    ro = hand_rollout([(0.0, 1.0), (1.0, 0.0), (0.0, 0.0)], [0, 0, 1])
    join = lambda attempt, between: between[1:] if attempt[-1] == E else between  # noqa: E731
    rows = pair_rows(ro, GLUE, join, seed=0)
    assert rows.kinds == {"i->c": 2}  # row 0 attempt 1 and row 1 attempt 2; problem 1 has no right answer
    right = ([30, E], [11, E])
    for ids, mask in zip(rows.sequences, rows.masks):
        assert ids[:2] == [P, 0]  # the prompt of problem 0
        target = [t for t, m in zip(ids, mask) if m]
        assert target in right and ids[-len(target):] == target
        wrong = ids[2:4]
        assert wrong in ([10, E], [31, E]) and ids[4:6] == GLUE[1:]
    plus = pair_rows(ro, GLUE, join, plus=True, seed=0)
    assert plus.kinds == {"i->c": 2, "c->c": 2}


def test_plus_ratio_caps_right_to_right_rows_and_keeps_every_wrong_to_right_one():
    # 2 i->c traces (rows 0, 6) among 5 c->c ones
    ro = hand_rollout([(0.0, 1.0)] + [(1.0, 1.0)] * 5 + [(0.0, 1.0)], [0, 1, 2, 3, 4, 5, 6])
    plus = star_rows(ro, plus=True)
    assert plus.kinds == {"i->c": 2, "c->c": 5}
    assert cap_right_to_right(plus, 0.0) is plus  # 0: no cap
    assert cap_right_to_right(plus, 10.0).sequences == plus.sequences  # a cap above what there is
    capped = cap_right_to_right(plus, 1.0, seed=3)
    assert capped.kinds == {"i->c": 2, "c->c": 2} and capped.row_kinds.count("c->c") == 2
    assert ro.rows[0] in capped.sequences and ro.rows[6] in capped.sequences
    order = [plus.sequences.index(row) for row in capped.sequences]
    assert order == sorted(order)  # kept rows stay in their original order, masks with them
    assert all(plus.masks[i] == m for i, m in zip(order, capped.masks))
    assert cap_right_to_right(plus, 1.5, seed=3).kinds == {"i->c": 2, "c->c": 3}  # floor(1.5 x 2)
    assert cap_right_to_right(plus, 1.0, seed=3).sequences == capped.sequences  # seeded
    draws = {tuple(map(tuple, cap_right_to_right(plus, 1.0, seed=s).sequences)) for s in range(20)}
    assert len(draws) > 1  # a random subset, not always the first ones
    none_fixed = cap_right_to_right(star_rows(hand_rollout([(1.0, 1.0)] * 3, [0, 1, 2]), plus=True), 2.0)
    assert none_fixed.sequences == []  # no i->c row: no c->c row either
    ro = hand_rollout([(0.0, 1.0)] * 100 + [(1.0, 1.0)] * 100, list(range(200)))
    many = star_rows(ro, plus=True)
    assert cap_right_to_right(many, 0.29).kinds["c->c"] == 29  # 0.29 x 100 is 28.999... in binary
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite number >= 0"):
            cap_right_to_right(plus, bad)


def _cfg(tmp_path, method, **algo):
    cfg = tiny_config(tmp_path)
    cfg.algo.method = method
    cfg.sft.lr, cfg.sft.batch_size, cfg.sft.micro_batch_size = 1e-2, 4, 4
    for key, value in algo.items():
        setattr(cfg.algo, key, value)
    return cfg


@pytest.mark.parametrize("method", ["single_turn", "star", "star_plus", "pair_sft", "pair_sft_plus"])
def test_every_method_trains_within_the_rl_budget(tmp_path, method):
    tok = tiny_tokenizer()
    cfg = _cfg(tmp_path, method)
    summary = train_method(cfg, EchoTask(5, answer=VARIED), model=tiny_model(tok), tokenizer=tok)
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text()) == summary and summary["done"]
    assert (run / "final" / "config.json").exists() and (run / "config.yaml").exists()
    budget_updates = cfg.algo.stage1_steps + cfg.algo.stage2_steps
    assert summary["gradient_updates"] <= budget_updates
    assert summary["episodes_sampled"] <= budget_updates * cfg.optim.problems_per_step * cfg.rollout.samples_per_problem
    assert summary["episodes_sampled"] > 0


def test_sft_baselines_sample_with_the_configured_engine_and_checkpoint_when_asked(tmp_path, monkeypatch):
    import selfcorrect.methods.sft_baselines as sft_module
    from selfcorrect.methods.traces import TraceRows

    engines, kept = [], []
    real_rollout = sft_module.rollout
    monkeypatch.setattr(sft_module, "rollout", lambda *a, **k: engines.append(k["engine"]) or real_rollout(*a, **k))

    def hand_rows(ro, **_):  # the tiny model rarely ends a turn: make every sampled row trainable
        rows = TraceRows()
        for b, row in enumerate(ro.rows[:7]):
            rows.add(list(row), [0] * (len(row) - 2) + [1, 1], "i->c" if b < 2 else "c->c")
        return rows

    monkeypatch.setattr(sft_module, "star_rows", hand_rows)
    real_cap = sft_module.cap_right_to_right
    monkeypatch.setattr(sft_module, "cap_right_to_right", lambda rows, *a, **k: kept.append(real_cap(rows, *a, **k))
                        or kept[-1])
    cfg = _cfg(tmp_path, "star_plus")
    cfg.rollout.engine, cfg.optim.gradient_checkpointing, cfg.sft.plus_ratio = "hf", True, 1.0
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    # one layer's MLP calls in training mode: twice per update when checkpointed (the recompute; a
    # pre-hook, because torch stops a recompute once the last tensor it needs is back)
    calls = []
    model.model.layers[0].mlp.register_forward_pre_hook(lambda module, _: calls.append(1) if module.training else None)
    summary = train_method(cfg, EchoTask(5, answer=VARIED), model=model, tokenizer=tok)
    assert engines and all(type(e).__name__ == "HFGenerate" for e in engines)
    assert kept and all(rows.kinds == {"i->c": 2, "c->c": 2} for rows in kept)  # 5 c->c rows capped at 2
    assert summary["gradient_updates"] > 0 and len(calls) == 2 * summary["gradient_updates"]


def test_offline_turn1_ablation_trains_attempt_2_only_on_fixed_base_samples(tmp_path, monkeypatch):
    import selfcorrect.train as train_module

    seen = []
    real = train_module.rollout
    monkeypatch.setattr(train_module, "rollout", lambda *a, **k: seen.append((k, real(*a, **k))) or seen[-1][1])
    cfg = _cfg(tmp_path, "score", turn1="base")
    cfg.optim.problems_per_step = 5  # every step sees all 5 problems: fixed samples are reused
    tok = tiny_tokenizer()
    summary = train_method(cfg, EchoTask(5, answer=VARIED), model=tiny_model(tok), tokenizer=tok)
    assert summary["ablation"] == "offline_turn1"
    policy_rollouts = [(k, ro) for k, ro in seen if k["n_attempts"] == 2]
    base_rollouts = [(k, ro) for k, ro in seen if k["n_attempts"] == 1]
    assert len(base_rollouts) == 1  # sampled once, then reused
    firsts = [{(p.id, tuple(ro.attempts[b][0])) for b, p in enumerate(ro.problems[i] for i in ro.problem_index)}
              for _, ro in policy_rollouts]
    assert all(f == firsts[0] for f in firsts)
    assert all(1 not in turns for _, ro in policy_rollouts for turns in ro.turns)  # attempt 1 is context


def test_star_in_stage_2_ablation_continues_the_step_count(tmp_path):
    tok = tiny_tokenizer()
    cfg = _cfg(tmp_path, "score", stage2="star")
    summary = train_method(cfg, EchoTask(5, answer=VARIED), model=tiny_model(tok), tokenizer=tok)
    assert summary["ablation"] == "star_stage2"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in lines if "loss" in m]
    assert steps == sorted(steps) and steps[:2] == [1, 2] and len(steps) == summary["gradient_updates"]


def test_ablation_switches_are_refused_for_other_methods(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="ablations of SCoRe"):
        train_method(_cfg(tmp_path, "star", turn1="base"), EchoTask(5), model=tiny_model(tok), tokenizer=tok)


def test_ablation_names():
    from selfcorrect.config import Config

    cfg = Config()
    assert ablation_name(cfg) is None
    cfg.algo.stage1_steps, cfg.algo.alpha = 0, 0.0
    assert ablation_name(cfg) == "no_stage1+no_shaping"
