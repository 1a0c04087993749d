"""The SFT baselines (STaR, Pair-SFT) and the SFT loop: seeding, a STaR round
that keeps nothing, Pair-SFT's pool of right answers, and the chat-encoding mask."""

import pytest
import torch

import selfcorrect.methods.sft_baselines as sb
from selfcorrect.methods.sft_baselines import Budget, run_pair_sft, run_star
from selfcorrect.sft import encode_chat
from selfcorrect.tasks.base import CORRECT, WRONG_ANSWER, Verdict
from test_train import VARIED, tiny_config
from tiny import EchoTask, tiny_model, tiny_tokenizer


def _cfg(tmp_path, name):
    cfg = tiny_config(tmp_path)
    cfg.run.output_dir = str(tmp_path / name)
    (tmp_path / name).mkdir()
    cfg.sft.lr, cfg.sft.batch_size, cfg.sft.micro_batch_size = 1e-2, 4, 4
    return cfg


def test_pair_sft_samples_depend_on_the_run_seed_not_on_the_global_rng(tmp_path, monkeypatch):
    """Two runs with the same config must collect the same traces, whatever the process's RNG
    went through before (another method run earlier in the same process, a LoRA init, ...)."""
    seen = []
    real = sb.rollout
    monkeypatch.setattr(sb, "rollout", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    tok = tiny_tokenizer()
    task = EchoTask(5, answer=VARIED)
    for noise in (1, 2):
        model = tiny_model(tok)  # same weights both times (tiny_model seeds itself)
        torch.manual_seed(noise)  # what happened in the process before the run
        cfg = _cfg(tmp_path, f"run{noise}")
        run_pair_sft(cfg, task, model, tok, task.load("train"), plus=False, budget=Budget(1, 6))
    assert len(seen) == 2
    assert seen[0].attempts == seen[1].attempts


class FirstRoundOnly(EchoTask):
    """Round 1's traces are all wrong -> right; every later attempt is wrong (nothing kept)."""

    def __init__(self):
        super().__init__(5, answer=VARIED)
        self.calls = 0

    def score(self, problems, responses):
        self.calls += 1  # `verify` scores attempt 1, then attempt 2, once per round
        r = 1.0 if self.calls == 2 else 0.0
        return [Verdict(r, x, CORRECT if r else WRONG_ANSWER) for x in responses]


def _untruncated(ro):
    ro.truncated = [[False] * len(t) for t in ro.truncated]  # a random tiny model rarely stops
    return ro


def test_star_round_with_nothing_kept_does_not_throw_away_earlier_rounds(tmp_path, monkeypatch):
    """ReST-EM restarts each round from the base model; a round that keeps no trace has nothing
    to fine-tune the base on, and must not silently turn the trained model back into the base."""
    real = sb.rollout
    monkeypatch.setattr(sb, "rollout", lambda *a, **k: _untruncated(real(*a, **k)))
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _cfg(tmp_path, "run")
    cfg.sft.iterations = 2
    task = FirstRoundOnly()
    spent = run_star(cfg, task, model, tok, task.load("train"), plus=False, budget=Budget(4, 12))
    assert spent["gradient_updates"] == 2  # round 1 trained, round 2 had nothing
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base[n])]
    assert changed, "the model after STaR is the base model: round 1's fine-tuning was discarded"


def test_encode_chat_refuses_a_template_whose_generation_prompt_is_not_a_prefix():
    """A template whose generation prompt differs from the rendered assistant header: the mask
    start would be misplaced (first content token untrained), so encode_chat must refuse."""
    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>:{% endif %}")
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "abc"}]
    with pytest.raises(ValueError, match="token prefix"):
        encode_chat(tok, chat)


def test_pair_sft_pools_the_right_answers_of_a_problem_drawn_twice():
    """Pair-SFT's budget usually passes over the data more than once, so the same problem comes
    back at another index of the rollout. Its wrong answers must be paired with a right answer
    from *all* of its samples (SCORE.md §3), not only those drawn at the same index."""
    from test_methods import E, GLUE, hand_rollout

    from selfcorrect.methods.traces import pair_rows

    ro = hand_rollout([(0.0, 0.0), (1.0, 1.0)], [0, 1])  # problem 0 wrong twice, then right twice
    ro.problems[1] = ro.problems[0]  # the same problem, drawn again in a later epoch
    ro.rows[1][1] = ro.rows[0][1]  # hence the same prompt
    join = lambda attempt, between: between[1:] if attempt[-1] == E else between  # noqa: E731
    rows = pair_rows(ro, GLUE, join, seed=0)
    assert rows.kinds == {"i->c": 2}  # both wrong attempts of row 0, paired with row 1's answers
    for ids, mask in zip(rows.sequences, rows.masks):
        assert [t for t, m in zip(ids, mask) if m] in ([11, E], [31, E])


def test_a_lora_sft_baseline_starts_from_the_same_adapter_whatever_the_process_drew_before(tmp_path, monkeypatch):
    from selfcorrect import models
    from selfcorrect.methods import train_method

    seen = []
    real = models.apply_lora
    monkeypatch.setattr(models, "apply_lora", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    monkeypatch.setattr(sb, "run_pair_sft", lambda *a, **k: {"episodes": 0, "gradient_updates": 0})
    monkeypatch.setattr(models, "save_final", lambda *a, **k: None)
    tok = tiny_tokenizer()
    adapters = []
    for noise in (1, 2):
        cfg = _cfg(tmp_path, f"run{noise}")
        cfg.algo.method, cfg.model.lora = "pair_sft", True
        model = tiny_model(tok)  # (seeds torch itself: the draw below comes after it)
        torch.manual_seed(noise)
        train_method(cfg, EchoTask(5, answer=VARIED), model=model, tokenizer=tok)
        adapters.append({n: p.detach().clone() for n, p in seen[-1].named_parameters() if "lora_A" in n})
    assert adapters[0] and all(torch.equal(adapters[0][n], adapters[1][n]) for n in adapters[0])
