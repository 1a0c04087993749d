"""precision.fp32_logits: the output layer in fp32 under half-precision autocast, and the
trainer using it for its log-probs and its rollouts."""

import pytest
import torch
import torch.nn.functional as F

from selfcorrect.engines.cpu_output_layer import onednn_output_layer
from selfcorrect import precision
from selfcorrect.precision import as_fp32, exact_product, fp32_logits, match_master_precision
from selfcorrect.train import Trainer
from test_train import VARIED, tiny_config
from tiny import EchoTask, tiny_model, tiny_tokenizer

IDS = torch.tensor([[5, 9, 12, 7, 30, 2, 14, 22], [8, 3, 3, 19, 25, 11, 6, 4]])


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def last_hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]


def test_under_autocast_the_logits_are_the_fp32_product_of_the_output_layer(tok):
    model = tiny_model(tok, hidden=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=IDS).logits
        with fp32_logits(model):
            hidden = last_hidden(model, IDS)
            got = model(input_ids=IDS).logits
    assert plain.dtype == torch.bfloat16 and got.dtype == torch.float32
    want = F.linear(hidden.float(), model.lm_head.weight)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # fp32 (kernels differ in the last bit)
    assert (got - plain.float()).abs().max() > 0  # the rounding it removes is there to remove
    assert type(model.lm_head) is torch.nn.Linear and not hasattr(model.lm_head, "exact_weight")  # restored


def test_the_backward_runs_in_the_autocast_dtype_as_autocast_would():
    """Only the logits are made exact: the gradients are those of autocast's bf16 product."""
    torch.manual_seed(0)
    x = torch.randn(6, 16, requires_grad=True)
    head = torch.nn.Linear(16, 10, bias=True)
    upstream = torch.randn(6, 10)

    def grads(switch: bool):
        x.grad = None
        head.zero_grad()
        holder = torch.nn.Module()
        holder.get_output_embeddings = lambda: head
        with torch.autocast("cpu", dtype=torch.bfloat16), fp32_logits(holder, enabled=switch):
            y = head(x)
        (y.float() * upstream).sum().backward()
        return y, x.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()

    y32, *exact_logits = grads(True)
    y16, *plain = grads(False)
    assert y32.dtype == torch.float32 and torch.allclose(y32, F.linear(x, head.weight, head.bias), rtol=1e-6, atol=1e-6)
    for got, want in zip(exact_logits[:2], plain[:2]):  # the input's and the weight's
        assert torch.equal(got, want)  # the same bf16 products (an fp32 backward differs in the 3rd digit)
    assert exact_logits[0].dtype == torch.float32 and exact_logits[1].dtype == torch.float32
    x.grad = None
    head.zero_grad()
    (F.linear(x, head.weight, head.bias) * upstream).sum().backward()
    assert torch.equal(exact_logits[2], head.bias.grad)  # a sum, not a product: from the fp32 gradient


def test_without_autocast_nothing_changes(tok):
    model = tiny_model(tok)
    want = model(input_ids=IDS).logits
    with fp32_logits(model):
        got = model(input_ids=IDS).logits
    assert torch.equal(got, want)


def test_gradients_reach_a_trainable_tied_output_layer(tok):
    """Full-weight training: the fp32 master weight (tied to the embeddings here) gets the
    gradient of the fp32 product."""
    model = tiny_model(tok, tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.autocast("cpu", dtype=torch.bfloat16), fp32_logits(model):
        model(input_ids=IDS).logits.logsumexp(-1).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_a_frozen_half_weight_is_copied_once_and_again_after_it_changes(tok):
    w = torch.randn(7, 5).bfloat16()
    first = as_fp32(w)
    assert first.dtype == torch.float32 and torch.equal(first, w.float())
    assert as_fp32(w) is first  # kept, not cast on every call (a decode step would pay for it)
    w.mul_(2)
    assert torch.equal(as_fp32(w), w.float())
    model = tiny_model(tok).to(torch.bfloat16)  # a LoRA base in bf16: its output layer never trains
    model.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16), fp32_logits(model):
        hidden = last_hidden(model, IDS)
        got = model(input_ids=IDS).logits
    torch.testing.assert_close(got, F.linear(hidden.float(), model.lm_head.weight.float()), rtol=1e-6, atol=1e-6)


def test_other_output_layers_are_left_alone(tok):
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(tiny_model(tok), LoraConfig(r=2, target_modules=["lm_head", "q_proj"]))
    head = adapted.get_output_embeddings()
    kind = type(head)
    with fp32_logits(adapted):  # peft's layer is not a plain nn.Linear: its adapter would be skipped
        assert type(head) is kind
    model = tiny_model(tok)
    with onednn_output_layer(model), fp32_logits(model):  # something replaced its forward already
        assert type(model.lm_head) is torch.nn.Linear
    with fp32_logits(model, enabled=False):
        assert type(model.lm_head) is torch.nn.Linear
    with fp32_logits(model), fp32_logits(model):  # nested: the inner block leaves it to the outer
        assert type(model.lm_head) is not torch.nn.Linear
    assert type(model.lm_head) is torch.nn.Linear


def large_logits_model(tok):
    """A tiny model whose logits are as large as a trained LM's (a few to tens), where the bf16
    rounding of a logit is a few hundredths."""
    model = tiny_model(tok, hidden=64)
    with torch.no_grad():
        model.lm_head.weight.mul_(300)
    return model


def bf16_trainer(tmp_path, tok, fp32: bool):
    cfg = tiny_config(tmp_path / str(fp32))
    cfg.model.fp32_logits = fp32
    return Trainer(cfg, EchoTask(5, answer=VARIED), model=large_logits_model(tok).to(torch.bfloat16), tokenizer=tok)


def test_trainer_log_probs_in_bf16_come_closer_to_fp32_with_fp32_logits(tmp_path, tok):
    ids = torch.randint(5, len(tok), (4, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    exact = large_logits_model(tok).to(torch.bfloat16).float()  # the same weights in fp32
    with torch.no_grad():
        want = torch.log_softmax(exact(input_ids=ids).logits[:, 1:-1].float(), -1).gather(-1, ids[:, 2:, None])[..., 0]
    errors = {}
    for fp32 in (True, False):
        trainer = bf16_trainer(tmp_path, tok, fp32)
        assert trainer.fp32_logits is fp32
        with torch.no_grad():
            got = trainer.logprobs(trainer.model, ids, mask, first=2)
        errors[fp32] = float((got - want).abs().mean())
    assert errors[True] < 0.6 * errors[False], errors


def test_an_fp32_run_does_not_switch_the_output_layer(tmp_path, tok):
    cfg = tiny_config(tmp_path)
    trainer = Trainer(cfg, EchoTask(5, answer=VARIED), model=tiny_model(tok), tokenizer=tok)
    assert trainer.compute_dtype is None and trainer.fp32_logits is False


def test_bf16_training_samples_from_fp32_logits(tmp_path, tok, monkeypatch):
    """The rollout runs under the same switch, so the engine samples what the trainer scores."""
    import selfcorrect.train as train_module

    seen = []
    real = train_module.rollout

    def spy(policy, *args, **kwargs):
        seen.append(type(policy.get_output_embeddings()) is not torch.nn.Linear)
        return real(policy, *args, **kwargs)

    monkeypatch.setattr(train_module, "rollout", spy)
    trainer = bf16_trainer(tmp_path, tok, fp32=True)
    trainer.cfg.algo.stage1_steps, trainer.cfg.algo.stage2_steps = 1, 0
    metrics = trainer.train()[0]
    assert seen and all(seen) and metrics["loss"] == metrics["loss"]


def test_match_master_precision_gives_the_reference_the_policys_fp32_stream(tok):
    model = tiny_model(tok, tie=True).to(torch.bfloat16)
    match_master_precision(model)
    assert model.model.norm.weight.dtype == torch.float32  # vectors upcast
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16  # matrices stay
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    assert model.model.embed_tokens(IDS).dtype == torch.float32  # but the residual stream starts in fp32


def test_base_first_attempts_from_a_bf16_reference_refuse_the_paged_engine(tmp_path, tok):
    """The reference samples attempt 1 (--algo.turn1 base); its fp32 residual stream gives fp32
    keys and bf16 values, which transformers' paged cache (one dtype) cannot hold: said at once."""
    cfg = tiny_config(tmp_path, turn1="base")
    cfg.rollout.engine = "paged"
    with pytest.raises(ValueError, match="paged engine cannot run"):
        Trainer(cfg, EchoTask(5, answer=VARIED), model=tiny_model(tok).to(torch.bfloat16), tokenizer=tok)
    cfg.rollout.engine = "cached"
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    trainer = Trainer(cfg, EchoTask(5, answer=VARIED), model=tiny_model(tok).to(torch.bfloat16), tokenizer=tok)
    first = trainer.train()[0]  # the other engines take it: the base's attempts, then a step from KL 0
    assert first["kl_t2"] == 0.0 and first["loss"] == first["loss"]


@pytest.mark.parametrize("tie", [False, True])
def test_a_bf16_full_weight_run_starts_at_kl_zero(tmp_path, tok, tie):
    """At the first step the policy is the reference: the same computation must give KL 0, as
    in fp32 (a bf16 embedding table in the reference alone made it 1.4e-3 on SmolLM2)."""
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 1, 0
    model = large_logits_model(tok) if not tie else tiny_model(tok, hidden=64, tie=True)
    trainer = Trainer(cfg, EchoTask(5, answer=VARIED), model=model.to(torch.bfloat16), tokenizer=tok)
    first = trainer.train()[0]
    assert first["kl_t1"] == 0.0 and first["kl_t2"] == 0.0


def test_the_cuda_branch_falls_back_to_an_fp32_product_where_torch_lacks_out_dtype(monkeypatch):
    """On a CPU build torch.mm has no out_dtype kernel: the CUDA branch must notice once, fall
    back to the fp32 product (TF32 allowed for it alone) and leave torch's flags as they were."""
    monkeypatch.setattr(precision, "_MM_OUT_DTYPE", [])
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    before = getattr(matmul, name)
    hidden, weight, bias = torch.randn(2, 3, 8), torch.randn(5, 8).bfloat16(), torch.randn(5)
    got = exact_product(hidden, weight, bias, torch.bfloat16, kind="cuda")
    assert precision._MM_OUT_DTYPE == [False] and getattr(matmul, name) == before
    assert got.shape == (2, 3, 5) and got.dtype == torch.float32
    torch.testing.assert_close(got, F.linear(hidden, weight.float(), bias))
