"""The trainer's update belongs to the policy that sampled: temperature, eval mode, fp32 master
weights, LoRA as configured, single-turn training, and statistics that do not depend on how a
step is split into micro-batches."""

import json

import pytest
import torch

from selfcorrect.precision import match_lora_base_precision
from selfcorrect.rollout import check_context_fits
from selfcorrect.tasks.base import Problem
from selfcorrect.train import Trainer
from test_train import VARIED, make_trainer, tiny_config
from tiny import EchoTask, tiny_model, tiny_tokenizer


def test_trainer_log_probs_use_the_rollout_temperature(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.rollout.temperature = 0.5
    trainer = make_trainer(cfg)
    ids = torch.tensor([[5, 9, 12, 7, 30, 2]])
    got = trainer.logprobs(trainer.model, ids, torch.ones_like(ids), first=2)
    with torch.no_grad():
        z = trainer.model(input_ids=ids).logits[0, 1:-1]
    want = torch.log_softmax(z / 0.5, -1).gather(-1, ids[0, 2:, None])[:, 0]
    assert torch.allclose(got[0], want, atol=1e-5)


def test_top_p_below_one_is_refused_for_training(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.rollout.top_p = 0.9
    with pytest.raises(ValueError, match="top_p"):
        make_trainer(cfg)


def test_log_probs_are_computed_without_dropout(tmp_path):
    """Before the first update the policy is the reference: with dropout in the forward the
    KL of step 1 would not be 0."""
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    first = Trainer(cfg, EchoTask(5, answer=VARIED), model=model, tokenizer=tok).train()[0]
    assert first["kl_t1"] == pytest.approx(0.0, abs=1e-9) and first["kl_t2"] == pytest.approx(0.0, abs=1e-9)


def test_lora_on_a_bf16_base_computes_under_bf16_autocast(tmp_path):
    """fp32 adapters on a bf16 base: the adapters stay fp32 and the step runs under bf16
    autocast (without it the fp32 adapters and log-softmax pull the forward out of bf16)."""
    from peft import LoraConfig, get_peft_model

    cfg = tiny_config(tmp_path)
    cfg.model.lora = True
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    tok = tiny_tokenizer()
    model = get_peft_model(tiny_model(tok).to(torch.bfloat16), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer = Trainer(cfg, EchoTask(5, answer=VARIED), model=model, tokenizer=tok)
    assert trainer.compute_dtype == torch.bfloat16
    assert {p.dtype for p in trainer.model.parameters() if p.requires_grad} == {torch.float32}
    metrics = trainer.train()[0]
    assert all(map(lambda v: v == v, [metrics["loss"], metrics["kl_t1"]]))  # finite, not NaN


@pytest.mark.parametrize("engine", ["cached", "paged"])
def test_a_bf16_lora_base_runs_the_fp32_residual_stream_of_full_weight_training(tmp_path, engine):
    """The LoRA policy (and so its reference, the same model with the adapter off) computes as a
    full-weight policy on fp32 masters: embeddings out in fp32, norms in fp32, matrices in bf16.
    Not with the paged engine, whose cache holds one dtype."""
    from peft import LoraConfig, get_peft_model

    cfg = tiny_config(tmp_path)
    cfg.model.lora, cfg.rollout.engine = True, engine
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    tok = tiny_tokenizer()
    model = get_peft_model(tiny_model(tok).to(torch.bfloat16), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer = Trainer(cfg, EchoTask(5, answer=VARIED), model=model, tokenizer=tok)
    base = trainer.model.base_model.model.model
    fp32_stream = engine != "paged"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (base.embed_tokens(torch.tensor([[3]])).dtype == torch.float32) == fp32_stream
    assert base.embed_tokens(torch.tensor([[3]])).dtype == torch.bfloat16  # without autocast: as it was
    assert base.norm.weight.dtype == base.layers[0].mlp.up_proj.base_layer.weight.dtype == torch.bfloat16
    match_lora_base_precision(trainer.model, torch.bfloat16, engine)  # asked again (STaR after Stage I): one hook
    assert len(base.embed_tokens._forward_hooks) == int(fp32_stream)
    metrics = trainer.train()[0]
    assert metrics["kl_t1"] == pytest.approx(0.0, abs=1e-9)  # the adapter starts at zero: policy = reference
    with torch.no_grad():  # the trained policy still runs without autocast (the demo evaluates it so)
        assert trainer.model(input_ids=torch.tensor([[3, 4]])).logits.dtype == torch.bfloat16


def test_full_weight_bf16_training_moves_every_parameter_with_a_gradient(tmp_path):
    """bf16 weights updated in bf16 round updates below half a bf16 step to zero; the trainer
    keeps fp32 master weights and computes in bf16 under autocast."""
    cfg = tiny_config(tmp_path)
    cfg.optim.lr = 1e-5
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 0, 1
    tok = tiny_tokenizer()
    model = tiny_model(tok).to(torch.bfloat16)
    trainer = Trainer(cfg, EchoTask(5, answer=VARIED), model=model, tokenizer=tok)
    assert trainer.compute_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    ref = trainer.reference.model  # stays small: its Linear weights in bf16 (precision.match_master_precision)
    assert ref.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    grads = {}
    step = trainer._optimizer_step

    def keep_grads():
        grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
        return step()

    trainer._optimizer_step = keep_grads
    trainer.train()
    with_grad = [n for n, g in grads.items() if g.abs().sum() > 0]
    assert len(with_grad) > 10
    unmoved = [n for n in with_grad if torch.equal(before[n], dict(trainer.model.named_parameters())[n].detach())]
    assert unmoved == []


def test_lora_setting_is_applied_to_a_model_passed_in(tmp_path):
    from peft import PeftModel

    cfg = tiny_config(tmp_path)
    cfg.model.lora, cfg.model.lora_r = True, 4
    trainer = make_trainer(cfg)
    assert isinstance(trainer.model, PeftModel) and trainer.reference.model is None


def test_a_peft_model_with_lora_off_is_refused(tmp_path):
    from peft import LoraConfig, get_peft_model

    cfg = tiny_config(tmp_path)
    tok = tiny_tokenizer()
    model = get_peft_model(tiny_model(tok), LoraConfig(r=4, target_modules="all-linear"))
    with pytest.raises(ValueError, match="model.lora"):
        Trainer(cfg, EchoTask(5), model=model, tokenizer=tok)


def test_single_turn_rl_trains(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.rollout.attempts = 1
    history = make_trainer(cfg).train()
    assert len(history) == 4 and all("acc_t1" in m and "reward_t2" not in m for m in history)
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_logged_statistics_do_not_depend_on_micro_batch_size(tmp_path):
    def first_step(micro: int) -> dict:
        cfg = tiny_config(tmp_path / str(micro))
        cfg.optim.micro_batch_size = micro
        cfg.algo.stage1_steps, cfg.algo.stage2_steps = 0, 1
        return make_trainer(cfg).train()[0]

    def by_tokens(budget: int) -> dict:
        cfg = tiny_config(tmp_path / f"t{budget}")
        cfg.optim.micro_batch_size, cfg.optim.micro_batch_tokens = 6, budget
        cfg.algo.stage1_steps, cfg.algo.stage2_steps = 0, 1
        return make_trainer(cfg).train()[0]

    one, five, all_rows, budget = first_step(1), first_step(5), first_step(6), by_tokens(40)
    # float rounding only (the prompt pass is shared by however many of a problem's rows meet in
    # a micro-batch; an AVX-512 machine rounded pg_loss 1.1e-5 apart); a wrong denominator would
    # be off by a factor
    for key in ("pg_loss", "kl_loss", "n_tokens", "n_pg_tokens", "loss"):
        assert one[key] == pytest.approx(all_rows[key], rel=1e-4, abs=1e-6), key
        assert five[key] == pytest.approx(all_rows[key], rel=1e-4, abs=1e-6), key
        assert budget[key] == pytest.approx(all_rows[key], rel=1e-4, abs=1e-6), key
    assert one["n_tokens"] == all_rows["len_t1"] * 6 + all_rows["len_t2"] * 6


def test_unrewarded_stage_1_attempts_are_not_counted_as_excluded(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    m = make_trainer(cfg).train()[0]
    assert m["none_rewards"] == 0 and m["no_baseline_attempts"] == 0 and "excluded_attempts" not in m
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert "kl_sum_t1" not in logged and "kl_t1" in logged


def test_context_check_counts_the_tokens_between_attempts():
    tok = tiny_tokenizer()
    model = tiny_model(tok)  # context 512
    problem = Problem(id="p", question="q", reference="a")
    check_context_fits(model, [problem], [[1] * 100], 2, 200, between_tokens=10)  # 100 + 400 + 10 fits
    with pytest.raises(ValueError, match="between attempts"):
        check_context_fits(model, [problem], [[1] * 100], 2, 200, between_tokens=13)


def test_training_edit_ratio_is_over_characters_as_in_evaluation(tmp_path, monkeypatch):
    import selfcorrect.train as train_module
    from selfcorrect.metrics import edit_distance_ratio

    seen = []
    real = train_module.rollout
    monkeypatch.setattr(train_module, "rollout", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    m = make_trainer(cfg).train()[0]
    texts = seen[0].texts
    assert m["edit_ratio"] == pytest.approx(sum(edit_distance_ratio(t[0], t[1]) for t in texts) / len(texts))


def test_gradient_checkpointing_gives_the_same_gradients_and_keeps_eval_mode(tmp_path):
    """Checkpointed layers recompute activations in the backward: same loss, same gradients;
    the layers' children stay in eval mode (no dropout) although the layers must checkpoint."""
    def first_step(checkpoint: bool):
        cfg = tiny_config(tmp_path / str(checkpoint))
        cfg.optim.gradient_checkpointing = checkpoint
        cfg.algo.stage1_steps, cfg.algo.stage2_steps = 0, 1
        trainer = make_trainer(cfg)
        grads, step, calls = {}, trainer._optimizer_step, []
        for layer in trainer.model.model.layers if checkpoint else []:  # count real checkpoints
            inner = layer._gradient_checkpointing_func
            layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: calls.append(1) or _f(*a, **k)

        def keep_grads():
            grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
            return step()

        trainer._optimizer_step = keep_grads
        metrics = trainer.train()[0]
        assert not any(m.training for m in trainer.model.modules())  # restored after every forward
        return metrics, grads, len(calls)

    (plain, g_plain, _), (ckpt, g_ckpt, n_checkpoints) = first_step(False), first_step(True)
    assert n_checkpoints >= len(make_trainer(tiny_config(tmp_path / "n")).model.model.layers)
    assert plain["loss"] == pytest.approx(ckpt["loss"], abs=1e-6)
    assert g_plain.keys() == g_ckpt.keys()
    for name in g_plain:
        assert torch.allclose(g_plain[name], g_ckpt[name], atol=1e-6), name


def test_shared_prompt_update_matches_the_full_rows(tmp_path, monkeypatch):
    """The update with each problem's prompt run once gives the full-row loss and gradients,
    and really takes the shared path (for the policy and the reference)."""
    import selfcorrect.train as train_module

    calls = []
    real = train_module.shared_prompt_logprobs
    monkeypatch.setattr(train_module, "shared_prompt_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))

    def first_step(share: bool):
        cfg = tiny_config(tmp_path / str(share))
        cfg.optim.share_prompt = share
        cfg.algo.stage1_steps, cfg.algo.stage2_steps = 0, 1
        trainer = make_trainer(cfg)
        assert trainer.share_prompts == share
        grads, step = {}, trainer._optimizer_step

        def keep_grads():
            grads.update({n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
            return step()

        trainer._optimizer_step = keep_grads
        return trainer.train()[0], grads

    (full, g_full), (shared, g_shared) = first_step(False), first_step(True)
    assert len(calls) >= 2  # reference and policy, per micro-batch
    assert shared["loss"] == pytest.approx(full["loss"], rel=1e-5, abs=1e-6)
    assert g_full.keys() == g_shared.keys() and g_full
    for name in g_full:
        assert torch.allclose(g_full[name], g_shared[name], atol=1e-6, rtol=1e-4), name


def test_prompt_sharing_falls_back_where_it_cannot_run(tmp_path):
    from selfcorrect.train import shares_prompts

    cfg = tiny_config(tmp_path)
    model = tiny_model(tiny_tokenizer())
    assert shares_prompts(cfg, model, world=1)
    assert not shares_prompts(cfg, model, world=2)  # DDP / FSDP: one forward per backward
    cfg.optim.gradient_checkpointing = True
    assert not shares_prompts(cfg, model, world=1)
    cfg.optim.gradient_checkpointing = False
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    assert not shares_prompts(cfg, model, world=1)
