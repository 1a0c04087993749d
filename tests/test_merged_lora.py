"""A LoRA policy generates with its adapters folded into the weights (merged_lora.py): the same
function up to rounding, peft's forward where folding would not be exact, and everything put
back after the block."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

import selfcorrect.train as train_module
from selfcorrect.merged_lora import foldable, merged_lora
from test_train import VARIED, tiny_config
from tiny import EchoTask, tiny_model, tiny_tokenizer
from selfcorrect.train import Trainer

IDS = torch.tensor([[5, 9, 12, 7, 30, 2, 14, 3]])


def lora_model(seed: int = 0, **lora):
    """The tiny model with a LoRA adapter moved off its zero start (B = 0 would make folding trivial)."""
    tok = tiny_tokenizer()
    model = get_peft_model(tiny_model(tok), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **lora)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model, tok


def lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def logits(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=IDS, **kwargs).logits


def test_folded_adapters_compute_the_same_function_with_one_product_per_layer():
    model, _ = lora_model()
    want, base = logits(model), None
    with model.disable_adapter():
        base = logits(model)
    calls = []
    with merged_lora(model):
        layers = lora_layers(model)
        assert all(type(m).__name__ == "MergedLoraLinear" for m in layers)
        for m in layers:  # the adapters' own products are not called while folded
            m.lora_A["default"].register_forward_hook(lambda *_: calls.append(1))
        got = logits(model)
        with model.disable_adapter():  # the reference view inside the block: the base model
            assert torch.allclose(logits(model), base, atol=1e-6)
    assert not calls
    assert torch.allclose(got, want, atol=1e-5)
    assert (want - base).abs().max() > 1e-2  # the adapter matters: folding it in is what is tested
    assert all(type(m).__name__ == "Linear" and not hasattr(m, "folded_weight") for m in lora_layers(model))


def test_the_fold_is_made_at_entry_from_the_current_adapter():
    model, _ = lora_model()
    with merged_lora(model):
        first = logits(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2.0)
    with merged_lora(model):
        second = logits(model)
    assert torch.allclose(second, logits(model), atol=1e-5)
    assert (second - first).abs().max() > 1e-2


def test_a_disabled_adapter_or_switched_off_folding_changes_nothing():
    model, _ = lora_model()
    with merged_lora(model, enabled=False):
        assert not any(type(m).__name__ == "MergedLoraLinear" for m in lora_layers(model))
    with model.disable_adapter(), merged_lora(model):  # the reference's own rollouts: nothing to fold
        assert not any(type(m).__name__ == "MergedLoraLinear" for m in lora_layers(model))


@pytest.mark.filterwarnings("ignore:.*lora_bias:UserWarning")
def test_dora_and_lora_bias_layers_keep_peft_forward():
    dora, _ = lora_model(use_dora=True)
    assert not any(foldable(m) for m in lora_layers(dora))
    want = logits(dora)
    with merged_lora(dora):
        assert torch.allclose(logits(dora), want, atol=0)
    biased, _ = lora_model(lora_bias=True)
    assert not any(foldable(m) for m in lora_layers(biased))


def test_dora_marked_the_older_way_and_acting_dropout_keep_peft_forward():
    """peft < 0.15 marks DoRA with use_dora (no lora_variant); dropout acts in training mode."""
    dora, _ = lora_model(use_dora=True)
    for layer in lora_layers(dora):
        layer.__dict__.pop("lora_variant", None)
        layer.use_dora = {"default": True}
    assert not any(foldable(m) for m in lora_layers(dora))
    dropped, _ = lora_model(lora_dropout=0.5)
    assert all(foldable(m) for m in lora_layers(dropped))  # eval mode: dropout is the identity
    dropped.train()
    assert not any(foldable(m) for m in lora_layers(dropped))


def test_nothing_is_folded_for_vllm_which_copies_the_weights_itself():
    model, _ = lora_model()
    with merged_lora(model, engine="vllm"):
        assert not any(type(m).__name__ == "MergedLoraLinear" for m in lora_layers(model))


def test_nested_blocks_and_failures_put_the_layers_back():
    model, _ = lora_model()
    with pytest.raises(RuntimeError, match="boom"):
        with merged_lora(model):
            with merged_lora(model):  # already folded: the inner block does nothing
                pass
            assert all(type(m).__name__ == "MergedLoraLinear" for m in lora_layers(model))
            raise RuntimeError("boom")
    assert all(type(m).__name__ == "Linear" and not hasattr(m, "folded_weight") for m in lora_layers(model))


def test_a_bf16_base_folds_into_bf16_weights_close_to_peft_forward():
    model, _ = lora_model()
    model = model.to(torch.bfloat16)
    want = logits(model).float()
    with merged_lora(model):
        assert {m.folded_weight.dtype for m in lora_layers(model)} == {torch.bfloat16}
        got = logits(model).float()
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # bf16 rounding of W + s B A, not another function


@pytest.mark.parametrize("merge", [True, False])
def test_the_trainer_samples_from_the_folded_policy_only_when_asked(tmp_path, monkeypatch, merge):
    cfg = tiny_config(tmp_path)
    cfg.model.lora = True
    cfg.rollout.merge_lora = merge
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    model, tok = lora_model()
    trainer = Trainer(cfg, EchoTask(5, answer=VARIED), model=model, tokenizer=tok)
    seen = []
    real = train_module.rollout

    def spy(policy, *args, **kwargs):
        seen.append({type(m).__name__ for m in lora_layers(policy)})
        return real(policy, *args, **kwargs)

    monkeypatch.setattr(train_module, "rollout", spy)
    metrics = trainer.train()[0]
    assert seen == [{"MergedLoraLinear"} if merge else {"Linear"}]
    # the sampler's log-probs are the update's up to rounding either way
    assert metrics["engine_logprob_gap"] < 1e-5
    assert all(type(m).__name__ == "Linear" for m in lora_layers(trainer.model))  # the update runs peft's forward


def test_folding_does_not_change_what_a_seeded_rollout_samples(tmp_path):
    """fp32: the folded and the peft forward differ by rounding, far below what moves a draw."""
    drawn = []
    for merge in (True, False):
        cfg = tiny_config(tmp_path / str(merge))
        cfg.model.lora = True
        cfg.rollout.merge_lora = merge
        model, tok = lora_model()
        trainer = Trainer(cfg, EchoTask(5, answer=VARIED), model=model, tokenizer=tok)
        torch.manual_seed(3)
        drawn.append(trainer.draw(trainer.next_problems(), 2).rows)
    assert drawn[0] == drawn[1]
