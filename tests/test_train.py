import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from selfcorrect.config import Config
from selfcorrect.train import Trainer, attempts_at, stage_plan
from tiny import EchoTask, tiny_model, tiny_tokenizer


VARIED = "aeiou0123456789"  # about half of a random tiny model's 5-token answers contain one


def tiny_config(tmp_path, **algo) -> Config:
    cfg = Config()
    cfg.run.output_dir = str(tmp_path / "run")
    cfg.run.progress = False
    cfg.run.save_every = 2
    cfg.run.keep_checkpoints = 5
    cfg.model.device = "cpu"
    cfg.rollout.max_new_tokens = 5
    cfg.rollout.samples_per_problem = 2
    cfg.optim.problems_per_step = 3
    cfg.optim.micro_batch_size = 4
    cfg.optim.lr = 1e-2
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 2, 2
    for key, value in algo.items():
        setattr(cfg.algo, key, value)
    return cfg


def make_trainer(cfg, seed=0):
    tok = tiny_tokenizer()
    return Trainer(cfg, EchoTask(5, answer=VARIED), model=tiny_model(tok, seed=seed), tokenizer=tok)


def test_stage_plan_interleaves_and_keeps_step_counts():
    assert stage_plan(4, 2, 1) == [1, 1, 1, 1, 2, 2]
    assert stage_plan(4, 2, 2) == [1, 1, 2, 1, 1, 2]
    assert stage_plan(0, 3, 1) == [2, 2, 2]


def test_stage_one_splits_in_sub_stages_per_later_attempt():
    def plan_attempts(plan, n):
        return [attempts_at(plan, step, n) for step in range(len(plan))]

    assert plan_attempts(stage_plan(4, 2, 1), 2) == [2, 2, 2, 2, 2, 2]
    assert plan_attempts(stage_plan(4, 2, 1), 3) == [2, 2, 3, 3, 3, 3]  # 1(a), 1(a), 1(b), 1(b), II, II
    assert plan_attempts(stage_plan(4, 2, 2), 3) == [2, 3, 3, 2, 3, 3]  # each interleaved round splits
    assert plan_attempts(stage_plan(3, 1, 1), 4) == [2, 3, 4, 4]
    assert plan_attempts(stage_plan(1, 1, 1), 3) == [2, 3]  # a one-step Stage I trains attempt 2 only


def test_three_attempts_train_attempt_two_then_three_in_stage_one(tmp_path, monkeypatch):
    from selfcorrect import losses

    cfg = tiny_config(tmp_path)
    cfg.rollout.attempts = 3
    trainer = make_trainer(cfg)
    seen = []
    plain = losses.turn_kl_coefficients

    def spy(turn_ids, stage, beta1, beta2):
        seen.append((stage, int(turn_ids.max())))
        return plain(turn_ids, stage, beta1, beta2)

    monkeypatch.setattr(losses, "turn_kl_coefficients", spy)
    history = trainer.train()
    assert [(m["stage"], m["attempts"]) for m in history] == [(1, 2), (1, 3), (2, 3), (2, 3)]
    assert "reward_t3" not in history[0] and "reward_t3" in history[1]
    assert sorted(set(seen)) == [(1, 2), (1, 3), (2, 3)]  # the trained rows end at attempt 2, then 3
    assert trainer.state["best_reward"] == max(m["reward_t3"] for m in history[1:])


def test_resume_refuses_other_training_settings_and_takes_other_batching(tmp_path):
    make_trainer(tiny_config(tmp_path)).train()
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step-000002")
    changed = tiny_config(tmp_path)
    changed.run.resume, changed.optim.lr, changed.run.seed = True, 0.5, 7
    with pytest.raises(ValueError, match=r"trained with other settings \(optim.lr: 0.01 -> 0.5; run.seed"):
        make_trainer(changed)
    same = tiny_config(tmp_path)
    same.run.resume, same.optim.micro_batch_size, same.run.save_every = True, 2, 1  # how, not what
    assert make_trainer(same).state["step"] == 2


def test_resume_refuses_a_checkpoint_made_on_the_old_arithmetic_split():
    from selfcorrect.config import Config
    from selfcorrect.train import refuse_changed_settings, training_settings

    cfg = Config()
    cfg.task.name = "arithmetic"
    saved = json.loads(json.dumps(training_settings(cfg)))
    assert saved["task.split_rule"] == 2
    refuse_changed_settings(Path("ckpt"), saved, cfg)  # the same rule: resumes
    del saved["task.split_rule"]  # a checkpoint from before the rule was recorded (rule 1)
    with pytest.raises(ValueError, match=r"task.split_rule: 1 -> 2"):
        refuse_changed_settings(Path("ckpt"), saved, cfg)
    cfg.task.name = "gsm8k"  # tasks whose split never changed record nothing
    assert "task.split_rule" not in training_settings(cfg)


def test_train_logs_metrics_and_saves_loadable_model(tmp_path):
    cfg = tiny_config(tmp_path)
    trainer = make_trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    history = trainer.train()
    assert [m["stage"] for m in history] == [1, 1, 2, 2]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    first = json.loads(lines[0])
    for key in ("reward_t1", "reward_t2", "acc_t1", "acc_t2", "delta", "delta_i_to_c", "delta_c_to_i",
                "kl_t1", "kl_t2", "edit_ratio", "len_t1", "none_rewards", "time_rollout", "gen_tokens_per_s"):
        assert key in first, key
    changed = any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert changed
    final = tmp_path / "run" / "final"
    loaded = AutoModelForCausalLM.from_pretrained(final)
    for name, p in trainer.model.state_dict().items():
        assert torch.allclose(loaded.state_dict()[name], p), name
    assert (tmp_path / "run" / "config.yaml").exists()
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text() == "step-000004"


def test_resume_from_step_2_reproduces_losses(tmp_path):
    cfg = tiny_config(tmp_path)
    full = [m["loss"] for m in make_trainer(cfg).train()]
    # keep the step-2 checkpoint, forget everything after it, and resume
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "LATEST").write_text("step-000002")
    cfg2 = tiny_config(tmp_path)
    cfg2.run.resume = True
    resumed = make_trainer(cfg2)  # initial weights again (the reference); the checkpoint restores the policy
    assert resumed.state["step"] == 2
    tail = [m["loss"] for m in resumed.train()]
    assert tail == pytest.approx(full[2:], rel=1e-5, abs=1e-7)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the interrupted run's steps 3-4 are not logged twice


@pytest.mark.parametrize("baseline", ["group", "previous"])
def test_the_trainer_takes_attempt_twos_baseline_from_the_setting(tmp_path, baseline):
    """One problem, k = 4, first attempts right, right, wrong, wrong; then copy, copy, fix, copy
    (Stage II rewards 1, 1, 11, 0)."""
    from types import SimpleNamespace

    cfg = tiny_config(tmp_path, baseline=baseline)
    cfg.rollout.samples_per_problem = 4
    trainer = make_trainer(cfg)
    r = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    ro = SimpleNamespace(rows=[None] * 4, n_attempts=2, rewards=lambda: r)
    _, _, adv, valid = trainer.advantages(ro, 2)
    assert valid.all()
    assert adv[:, 0].tolist() == pytest.approx([2 / 3, 2 / 3, -2 / 3, -2 / 3])
    expected = [0.0, 0.0, 11.0, -11.0] if baseline == "previous" else [-3.0, -3.0, 11 - 2 / 3, -13 / 3]
    assert adv[:, 1].tolist() == pytest.approx(expected)


@pytest.mark.parametrize("window", [1, 2])
def test_keep_best_saves_the_model_of_the_best_reward_window(tmp_path, window):
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 2, 4
    cfg.run.keep_best = window
    trainer = make_trainer(cfg)
    saved, real = [], trainer.save_final

    def spy(folder):
        real(folder)
        if folder.name == "best":
            saved.append((trainer.state["step"], {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))

    trainer.save_final = spy
    history = trainer.train()
    rewards = [m["reward_t2"] for m in history]
    means = [sum(rewards[i - window + 1: i + 1]) / window for i in range(window - 1, len(rewards))]
    best_step = window + max(range(len(means)), key=lambda i: (means[i], -i))  # the first of equal bests
    selection = json.loads((tmp_path / "run" / "best.json").read_text())
    assert selection["step"] == best_step == saved[-1][0] and selection["window"] == window
    assert selection["mean_reward"] == pytest.approx(max(means))
    assert [step for step, _ in saved] == sorted(step for step, _ in saved)  # saved at each new best only
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "best")
    for name, p in saved[-1][1].items():
        assert torch.equal(loaded.state_dict()[name], p), name


def test_keep_best_survives_a_resume_and_a_fresh_run_drops_the_old_best(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps, cfg.run.keep_best, cfg.run.save_every = 2, 4, 2, 1
    make_trainer(cfg).train()
    whole = json.loads((tmp_path / "run" / "best.json").read_text())
    (tmp_path / "run" / "checkpoints" / "LATEST").write_text("step-000003")  # forget steps 4-6
    again = tiny_config(tmp_path)
    again.algo.stage1_steps, again.algo.stage2_steps, again.run.keep_best, again.run.resume = 2, 4, 2, True
    make_trainer(again).train()
    assert json.loads((tmp_path / "run" / "best.json").read_text()) == whole
    fresh = tiny_config(tmp_path)
    fresh.run.overwrite = True  # a new run without keep_best: no best/ of the old run left behind
    make_trainer(fresh).train()
    assert not (tmp_path / "run" / "best").exists() and not (tmp_path / "run" / "best.json").exists()


def test_fresh_run_refuses_to_mix_into_an_old_run(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 2, 0
    make_trainer(cfg).train()
    with pytest.raises(FileExistsError, match="already holds a run"):
        make_trainer(tiny_config(tmp_path))
    cfg.run.overwrite = True
    assert len(make_trainer(cfg).train()) == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.run.resume = True
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_trainer(cfg)


def test_lora_training_uses_disabled_adapter_as_reference(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.model.lora = True
    cfg.model.lora_r = 4
    tok = tiny_tokenizer()
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(tok), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer = Trainer(cfg, EchoTask(5), model=model, tokenizer=tok)
    assert trainer.reference.model is None  # no second copy of the weights
    trainer.train()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert loaded.config.num_hidden_layers == 2
    assert (tmp_path / "run" / "final" / "adapter" / "adapter_config.json").exists()


def test_the_train_command_names_the_kept_best_model(tmp_path, saved_tiny, capsys):
    from selfcorrect.cli import main

    main(["train", "--model", str(saved_tiny), "--task", "arithmetic",
          "--task.options", "{digits: 1, ops: '+', style: chat, n_test: 6}", "--model.device", "cpu",
          "--rollout.samples_per_problem", "2", "--rollout.max_new_tokens", "4", "--algo.stage1_steps", "1",
          "--algo.stage2_steps", "2", "--optim.problems_per_step", "2", "--run.keep_best", "2",
          "--run.progress", "false", "--output", str(tmp_path / "run")])
    out = capsys.readouterr()
    chosen = json.loads((tmp_path / "run" / "best.json").read_text())
    assert f"best training reward (mean of 2 steps, {chosen['mean_reward']:.3f}) at step {chosen['step']}: " \
           f"{tmp_path / 'run' / 'best'}" in out.out + out.err
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "best") is not None
