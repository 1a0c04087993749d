"""Inference-time scaling: majority votes, K-subsets of samples drawn once, answer classes,
and the whole run on a tiny model."""

import json

import pytest
import torch
from tiny import EchoTask, tiny_model, tiny_tokenizer

from selfcorrect import scaling
from selfcorrect.config import Config, set_value
from selfcorrect.scaling import (
    by_attempt_accuracy,
    inference_scaling,
    majority_vote,
    parse_ks,
    scaling_curves,
    vote_accuracy,
    vote_reward,
    write_scaling,
)
from selfcorrect.tasks.base import CORRECT, Problem, Verdict
from selfcorrect.tasks.math import MathTask

# ----------------------------------------------------------------------------- votes


def test_majority_vote_counts_classes_and_ignores_no_answer():
    assert majority_vote([None, 3, 3, 1]) == 1
    assert majority_vote([None, None, None, 4]) == 3  # one answer beats any number of non-answers
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote([1, 2, 2, 1, 2]) == 1  # the winner's first member


def test_majority_vote_ties_go_to_the_earliest_first_occurrence():
    assert majority_vote([5, 7, 7, 5]) == 0
    assert majority_vote([7, 5, 5, 7]) == 0
    assert majority_vote([9, 2, 1]) == 0
    assert majority_vote([None, 2, 8, 8, 2]) == 1  # class ids do not matter, only order


def test_vote_reward_uses_the_winning_class():
    assert vote_reward([0, 1, 1], [1.0, 0.0, 0.0]) == 0.0  # a wrong majority beats one right answer
    assert vote_reward([0, 1, 1], [0.0, 1.0, 1.0]) == 1.0
    assert vote_reward([0, 1], [0.0, 1.0]) == 0.0  # tie: the earlier (wrong) answer
    assert vote_reward([0, 1], [1.0, 0.0]) == 1.0
    assert vote_reward([None, None], [0.0, 0.0]) == 0.0  # nobody answered: wrong
    assert vote_reward([0, 0], [None, 1.0]) == 1.0  # a verifier failure in the class says nothing
    assert vote_reward([0, 0], [None, None]) == 0.0  # nobody could verify it: not right
    with pytest.raises(ValueError, match="2 labels but 1 rewards"):
        vote_reward([0, 1], [1.0])


# ----------------------------------------------------------------------------- K from samples drawn once

# One problem, 4 samples: a right answer first, then three copies of a wrong one.
LABELS = [[0, 1, 1, 1]]
REWARDS = [[1.0, 0.0, 0.0, 0.0]]


def test_nested_prefix():
    assert vote_accuracy(LABELS, REWARDS, 1, disjoint=False) == 1.0
    assert vote_accuracy(LABELS, REWARDS, 2, disjoint=False) == 1.0  # tie, earliest wins
    assert vote_accuracy(LABELS, REWARDS, 3, disjoint=False) == 0.0
    assert vote_accuracy(LABELS, REWARDS, 4, disjoint=False) == 0.0


def test_disjoint_blocks_average():
    assert vote_accuracy(LABELS, REWARDS, 1) == 0.25  # four one-sample votes
    assert vote_accuracy(LABELS, REWARDS, 2) == 0.5  # [0, 1] right (tie), [1, 1] wrong
    assert vote_accuracy(LABELS, REWARDS, 3) == 0.0  # one block; the 4th sample is unused
    assert vote_accuracy(LABELS + [[0, 0, 2, 2]], REWARDS + [[1.0, 1.0, 0.0, 0.0]], 2) == (0.5 + 0.5) / 2
    with pytest.raises(ValueError, match="n <= samples"):
        vote_accuracy(LABELS, REWARDS, 5)


def test_scaling_curves_compare_at_the_same_budget():
    # Parallel: 4 first attempts, right only in the first; sequential: 2 corrections, both right.
    par_l, par_r = [[0, 1, 2, 1]], [[1.0, 0.0, 0.0, 0.0]]
    seq_l, seq_r = [[0, 0]], [[1.0, 1.0]]
    parallel, sequential = scaling_curves([2, 1], par_l, par_r, seq_l, seq_r)
    assert parallel == {"k": [2, 1], "samples": [4, 2], "acc": [0.0, 0.5]}
    assert sequential == {"k": [2, 1], "samples": [4, 2], "acc": [1.0, 1.0]}


def test_by_attempt_accuracy():
    assert by_attempt_accuracy([[1.0, 0.0, None], [1.0, 1.0, 0.0]]) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="different numbers"):
        by_attempt_accuracy([[1.0], [1.0, 0.0]])


def test_parse_ks():
    assert parse_ks("1,2,4,8,16") == (1, 2, 4, 8, 16)
    assert parse_ks(" 4, 1,2,2") == (1, 2, 4)
    assert parse_ks([8, 2]) == (2, 8)
    for bad in ("0", "", "1,x", "2,-1", [True], [1.5]):
        with pytest.raises(ValueError):
            parse_ks(bad)


# ----------------------------------------------------------------------------- answer classes


def test_default_classes_group_by_stripped_answer():
    task = EchoTask(2)
    assert task.answer_key("  42 ") == "42" and task.answer_key("  ") is None and task.answer_key(None) is None
    labels = task.vote_classes(task.items, [[" a", "a", None, "b", "", "b"], ["x"]])
    assert labels == [[0, 0, None, 3, None, 3], [0]]


@pytest.fixture
def math_task():
    task = MathTask("math", workers=1)
    yield task
    task.close()


def test_math_classes_merge_equal_numbers_without_the_pool(math_task):
    answers = [["1/2", "\\frac{1}{2}", "2", "$\\dfrac12$", "4/2", None, "-3"]]
    assert math_task.vote_classes([Problem("p", "q", "1/2")], answers) == [[0, 0, 2, 0, 2, None, 6]]
    # Two answers scored right are both the reference; right and wrong never join.
    assert math_task.vote_classes([Problem("p", "q", "\\sqrt2")], [["\\sqrt{2}", "2^{1/2}", "x"]],
                                  [[1.0, 1.0, 0.0]]) == [[0, 0, 2]]
    assert math_task._pool is None  # all decided in process


def test_math_classes_ask_math_verify_when_needed(math_task):
    labels = math_task.vote_classes([Problem("p", "q", "7"), Problem("r", "q", "1")],
                                    [["0.5", "7", "\\frac12", "\\text{(C)}", "C"], ["x=3", "3", "4"]])
    assert labels == [[0, 1, 0, 3, 3], [0, 0, 2]]
    assert math_task.stats["vote_checks"] >= 2
    # The verdicts are cached: asking again does not go back to the pool.
    before = math_task.stats["vote_checks"]
    assert math_task.vote_classes([Problem("p", "q", "7")], [["\\frac12", "0.5"]]) == [[0, 0]]
    assert math_task.stats["vote_checks"] == before


# ----------------------------------------------------------------------------- sampling


class AlwaysRight(EchoTask):
    """Every response is right, with the same answer: every vote and attempt is right."""

    def score(self, problems, responses):
        return [Verdict(1.0, "42", CORRECT) for _ in responses]


def test_tiny_model_end_to_end(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    task = EchoTask(3)
    state = torch.get_rng_state()
    kwargs = dict(ks="1,2", attempts=3, max_new_tokens=4, batch_size=2, seed=1)
    result = inference_scaling(model, tok, task, task.items, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is left alone
    assert set(result) == {"temperature", "parallel", "sequential", "by_attempt", "n_problems"}
    assert result["temperature"] == 0.7 and result["n_problems"] == 3
    for curve in ("parallel", "sequential"):
        assert result[curve]["k"] == [1, 2] and result[curve]["samples"] == [2, 4]
        assert len(result[curve]["acc"]) == 2 and all(0.0 <= a <= 1.0 for a in result[curve]["acc"])
    assert result["by_attempt"]["attempt"] == [1, 2, 3]
    assert len(result["by_attempt"]["acc"]) == 3 and all(0.0 <= a <= 1.0 for a in result["by_attempt"]["acc"])
    assert inference_scaling(model, tok, task, task.items, **kwargs) == result  # seeded
    path = write_scaling(result, tmp_path / "eval" / "scaling.json")
    assert json.loads(path.read_text()) == result

    right = AlwaysRight(2)
    perfect = inference_scaling(model, tok, right, right.items, ks=[1], attempts=2, max_new_tokens=2)
    assert perfect["parallel"]["acc"] == perfect["sequential"]["acc"] == [1.0]
    assert perfect["by_attempt"]["acc"] == [1.0, 1.0]


def test_parallel_votes_first_attempts_and_sequential_votes_corrections(monkeypatch):
    """With sampling faked: attempt 1 is always "1" (wrong); the correction is "2" (right)."""
    calls = []

    def fake(model, tokenizer, task, problems, *, n_attempts, samples, **_):
        calls.append((n_attempts, samples))
        episode = [["1", "2", "2", "2"][a] for a in range(n_attempts)]
        rewards = [[0.0, 1.0, 1.0, 1.0][a] for a in range(n_attempts)]
        return ([[list(episode) for _ in range(samples)] for _ in problems],
                [[list(rewards) for _ in range(samples)] for _ in problems])

    monkeypatch.setattr(scaling, "sample_episodes", fake)
    task = EchoTask(5)
    result = inference_scaling(tiny_model(tiny_tokenizer()), tiny_tokenizer(), task, task.items,
                               ks=(1, 4), attempts=4, attempt_samples=2, batch_size=3)
    assert calls == [(1, 8), (2, 4), (4, 2)] * 2  # two chunks of problems
    assert result["parallel"]["acc"] == [0.0, 0.0] and result["sequential"]["acc"] == [1.0, 1.0]
    assert result["by_attempt"] == {"attempt": [1, 2, 3, 4], "acc": [0.0, 1.0, 1.0, 1.0]}
    assert result["n_problems"] == 5


def test_bad_arguments_fail_before_sampling():
    task = EchoTask(1)
    with pytest.raises(ValueError, match="temperature"):
        inference_scaling(None, None, task, task.items, temperature=0.0)
    with pytest.raises(ValueError, match="no problems"):
        inference_scaling(None, None, task, [])


def test_config_fields():
    cfg = Config()
    assert (cfg.eval.scaling, cfg.eval.scaling_k, cfg.eval.scaling_temperature, cfg.eval.scaling_attempts) == (
        False, "1,2,4,8,16", 0.7, 5)
    set_value(cfg, "eval.scaling_k", "1,4")
    set_value(cfg, "eval.scaling_temperature", 1)
    assert parse_ks(cfg.eval.scaling_k) == (1, 4) and cfg.eval.scaling_temperature == 1.0
