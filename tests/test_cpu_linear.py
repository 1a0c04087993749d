"""Linear layers through oneDNN on a CPU (cpu_linear.py): the same function and gradients as
F.linear up to fp32 rounding, packed weights equal to unpacked ones, fp32 logits under autocast
left to precision.fp32_logits, everything put back after the block, and the trainer's switch."""

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from selfcorrect import cpu_linear
from selfcorrect.cpu_linear import linear, onednn_linears, wanted
from selfcorrect.merged_lora import merged_lora
from test_train import make_trainer, tiny_config
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="no oneDNN inner product in this torch build")

IDS = torch.tensor([[5, 9, 12, 7, 30, 2, 14, 3], [4, 8, 11, 6, 29, 1, 13, 2]])


def layers(n_in=96, n_out=160, bias=True, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(n_in, n_out, bias=bias), torch.nn.GELU(), torch.nn.Linear(n_out, 24))


def patched(model):
    return [m for m in model.modules() if "forward" in vars(m)]


@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_match_f_linear(bias):
    model = layers(bias=bias)
    x = torch.randn(3, 17, 96, requires_grad=True)
    want = model(x)
    want.square().sum().backward()
    want_grads = [x.grad.clone()] + [p.grad.clone() for p in model.parameters()]
    x.grad = None
    model.zero_grad()
    calls = []
    forward = cpu_linear._OnednnLinear.forward
    cpu_linear._OnednnLinear.forward = staticmethod(lambda *a: calls.append(1) or forward(*a))
    try:
        with onednn_linears(model):
            got = model(x)
            got.square().sum().backward()
    finally:
        cpu_linear._OnednnLinear.forward = staticmethod(forward)
    assert len(calls) == 2  # both layers took oneDNN's autograd path
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    for w, g in zip(want_grads, [x.grad] + [p.grad for p in model.parameters()]):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-5)


def test_a_frozen_weight_gets_no_gradient_and_the_input_still_does():
    model = layers()
    model[0].weight.requires_grad_(False)
    x = torch.randn(5, 96, requires_grad=True)
    with onednn_linears(model):
        model(x).sum().backward()
    assert model[0].weight.grad is None and model[0].bias.grad is not None and x.grad is not None


@pytest.mark.parametrize("out_features", [160, cpu_linear.VOCABULARY_SIZED + 1])
def test_an_input_without_gradient_still_trains_the_weight(out_features):
    """A LoRA adapter's first layer: frozen embeddings in, so only the weight needs a gradient."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, out_features)
    x = torch.randn(5, 96)
    grads = []
    for on in (False, True):
        layer.zero_grad()
        with onednn_linears(layer, on):
            layer(x).square().sum().backward()
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_packed_weights_give_the_unpacked_results_and_follow_in_place_changes():
    model = layers().eval()
    x = torch.randn(16, 96)
    with torch.no_grad():
        with onednn_linears(model):
            plain = model(x)
        with onednn_linears(model, pack=True):
            packed = model(x)
            assert torch.equal(packed, plain)
            model[0].weight.mul_(2)  # a weight changed inside the block is packed again
            changed = model(x)
        assert torch.allclose(changed, model(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(changed, plain, atol=1e-3)
        assert torch.allclose(plain, F.linear(F.gelu(F.linear(x, *_wb(model[0], 0.5))), *_wb(model[2])),
                              rtol=1e-5, atol=1e-5)


def _wb(layer, scale=1.0):
    return layer.weight * scale, layer.bias


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no bf16 oneDNN on this CPU")
def test_bf16_autocast_packs_without_gradients_and_leaves_the_update_to_autocast():
    model = layers().eval()
    x = torch.randn(16, 96)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            want = model(x)
            with onednn_linears(model, pack=True):
                got = model(x)
        assert got.dtype == want.dtype == torch.bfloat16
        assert torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2)
        with onednn_linears(model, pack=True):  # gradients on: autocast's own product, exactly
            assert torch.equal(model(x), model[2](model[1](F.linear(x, model[0].weight, model[0].bias))))


def test_outside_a_block_and_for_other_dtypes_it_is_f_linear():
    w, b = torch.randn(8, 4), torch.randn(8)
    x = torch.randn(3, 4)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    with onednn_linears(torch.nn.Linear(1, 1)):
        x64, w64 = x.double(), w.double()
        assert torch.equal(linear(x64, w64, None), F.linear(x64, w64))  # fp64: not covered
        assert linear(torch.empty(0, 4), w, b).shape == (0, 8)


def test_every_linear_layer_computes_through_it_and_is_put_back():
    tok = tiny_tokenizer()
    model = tiny_model(tok).eval()
    head = model.get_output_embeddings()
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    with torch.no_grad():
        want = model(input_ids=IDS).logits
        with onednn_linears(model, pack=True):
            assert len(patched(model)) == n_linear and "forward" in vars(head)
            got = model(input_ids=IDS).logits
        with pytest.raises(RuntimeError), onednn_linears(model):
            raise RuntimeError("inside")
    assert not patched(model)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_nested_blocks_switch_their_own_layers_and_each_layer_keeps_its_blocks_settings():
    outer, inner = layers(seed=0).eval(), layers(seed=1).eval()
    with onednn_linears(outer, pack=True):
        outer_block = cpu_linear._BLOCK.get()
        with onednn_linears(inner):
            assert len(patched(inner)) == 2
            with torch.no_grad():
                inner(torch.randn(4, 96))
                outer(torch.randn(4, 96))
            assert not cpu_linear._BLOCK.get().packed  # the inner block does not pack
            assert len(outer_block.packed) == 2  # the outer layers packed under their own block
        assert not patched(inner) and len(patched(outer)) == 2
    assert cpu_linear._BLOCK.get() is None and not patched(outer) and not outer_block.open


def test_a_thread_running_the_model_computes_through_the_block(monkeypatch):
    """transformers' continuous batching runs the model in its own thread, where context
    variables start empty: the layers carry their block."""
    import threading

    calls = []
    product = cpu_linear.product
    monkeypatch.setattr(cpu_linear, "product", lambda *a: calls.append(1) or product(*a))
    model = layers().eval()
    with torch.no_grad(), onednn_linears(model, pack=True):
        worker = threading.Thread(target=lambda: model(torch.randn(4, 96)))
        worker.start()
        worker.join()
    assert len(calls) == 2


def test_a_model_copied_inside_a_block_computes_with_its_own_weights():
    import copy

    model = layers().eval()
    x = torch.randn(4, 96)
    with torch.no_grad(), onednn_linears(model, pack=True):
        model(x)
        twin = copy.deepcopy(model)
        twin[0].weight.mul_(3)
        assert not torch.allclose(twin(x), model(x), atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(twin(x), F.linear(F.gelu(F.linear(x, *_wb(twin[0]))), *_wb(twin[2])),
                              rtol=1e-5, atol=1e-5)


def test_calls_it_does_not_cover_inside_a_pack_block_stay_f_linear():
    model = layers().eval()
    x = torch.randn(4, 96)
    with torch.no_grad(), onednn_linears(model, pack=True):
        model(x)  # packs fp32 weights
        assert model[0](input=x).shape == (4, 160)  # nn.Linear's keyword
        x64 = x.double()
        assert torch.equal(linear(x64, model[0].weight.double(), None), F.linear(x64, model[0].weight.double()))
        model[0].weight = torch.nn.Parameter(model[0].weight * 2)  # a new tensor: packed anew
        assert torch.allclose(model[0](x), F.linear(x, model[0].weight, model[0].bias), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # weights made under inference mode (no version counter)
        weight = torch.randn(160, 96)
        with onednn_linears(torch.nn.Linear(1, 1), pack=True):
            assert torch.allclose(linear(x, weight, None), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def test_an_output_sized_layer_tied_to_an_embedding_gets_torchs_weight_gradient():
    torch.manual_seed(0)
    embedding, head = torch.nn.Embedding(cpu_linear.VOCABULARY_SIZED + 100, 32), None
    head = torch.nn.Linear(32, embedding.num_embeddings, bias=False)
    head.weight = embedding.weight  # tied, as SmolLM2's
    ids = torch.randint(0, embedding.num_embeddings, (3, 5))
    grads = []
    for on in (False, True):
        embedding.zero_grad()
        with onednn_linears(head, on):
            head(embedding(ids)).logsumexp(-1).sum().backward()
        grads.append(embedding.weight.grad.clone())
    assert torch.allclose(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_folded_lora_layers_compute_through_the_packed_product():
    tok = tiny_tokenizer()
    model = get_peft_model(tiny_model(tok), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        want = model(input_ids=IDS).logits
        with merged_lora(model), onednn_linears(model, pack=True):
            got = model(input_ids=IDS).logits
            folded = [m.folded_weight for m in model.modules() if hasattr(m, "folded_weight")]
            packed = {id(held.weight) for held in cpu_linear._BLOCK.get().packed.values()}
    assert folded and all(id(w) in packed for w in folded)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_wanted_follows_the_setting_and_the_device():
    cpu = torch.device("cpu")
    assert wanted(cpu, "onednn") and not wanted(cpu, "torch") and not wanted(torch.device("cuda"), "onednn")
    assert wanted(cpu, "auto") == (torch.backends.cpu.get_cpu_capability() == "AVX512")
    with pytest.raises(ValueError, match="cpu_linear"):
        wanted(cpu, "mkl")
    with pytest.raises(ValueError, match="phase"):
        wanted(cpu, "auto", "backward")


@pytest.mark.parametrize("capability, rollout, update", [("AVX512", True, True), ("AVX2", True, False),
                                                         ("DEFAULT", False, False)])
def test_auto_picks_each_phase_by_the_cpus_instructions(tmp_path, monkeypatch, capability, rollout, update):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    cpu = torch.device("cpu")
    assert (wanted(cpu, "auto", "rollout"), wanted(cpu, "auto", "update")) == (rollout, update)
    assert wanted(cpu, "onednn", "update") and not wanted(cpu, "torch", "rollout")
    assert cpu_linear.describe(cpu, "auto") == ("onednn" if update else "onednn rollouts, torch update"
                                                if rollout else "torch")
    trainer = make_trainer(tiny_config(tmp_path))
    assert (trainer.onednn_rollout, trainer.onednn) == (rollout, update)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_trainers_update_through_onednn_gives_torchs_gradients(tmp_path, monkeypatch, checkpointing):
    """One rollout scored both ways by the same trainer: every gradient within fp32 rounding
    of torch's kernels', each phase (rollout, log-probs, backward) through oneDNN when on;
    gradient checkpointing recomputes through the same kernels."""
    from selfcorrect.rollout import verify

    calls = []
    product = cpu_linear.product
    monkeypatch.setattr(cpu_linear, "product", lambda *a: calls.append(1) or product(*a))
    cfg = tiny_config(tmp_path, stage1_steps=1, stage2_steps=0)
    cfg.model.cpu_linear = "onednn"
    cfg.optim.gradient_checkpointing = checkpointing
    trainer = make_trainer(cfg)
    assert trainer.onednn
    problems = trainer.next_problems()
    ro = trainer.draw(problems, 2)
    assert calls, "the rollout ran through oneDNN"
    verify(trainer.task, ro)
    _, _, adv, valid = trainer.advantages(ro, 1)
    grads = {}
    for on in (False, True):
        trainer.onednn = on
        trainer.optimizer.zero_grad(set_to_none=True)
        calls.clear()
        trainer._accumulate_gradients(ro, adv, valid, 1)
        assert bool(calls) == on
        grads[on] = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    assert grads[True] and len(grads[True]) == len(grads[False])
    assert any(g.abs().max() > 0 for g in grads[False])
    for a, b in zip(grads[True], grads[False]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_training_run_reads_the_setting_and_trains_alike_either_way(tmp_path):
    losses = {}
    for mode, on in (("torch", False), ("onednn", True)):
        cfg = tiny_config(tmp_path / mode, stage1_steps=2, stage2_steps=0)
        cfg.model.cpu_linear = mode
        trainer = make_trainer(cfg)
        assert trainer.onednn == on
        losses[mode] = [m["loss"] for m in trainer.train()]
    assert losses["onednn"] == pytest.approx(losses["torch"], rel=1e-3, abs=1e-5)


def test_fp32_logits_under_autocast_stay_with_their_own_switch():
    from selfcorrect.precision import fp32_logits

    tok = tiny_tokenizer()
    model = tiny_model(tok).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with fp32_logits(model):
            want = model(input_ids=IDS).logits
            with onednn_linears(model, pack=True):
                assert "forward" not in vars(model.get_output_embeddings())
                got = model(input_ids=IDS).logits
    assert want.dtype == got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-2, atol=2e-2)


@pytest.mark.parametrize("turn1", ["policy", "base"])
def test_torch_kernels_asked_keep_every_product_of_the_rollout_torchs(tmp_path, monkeypatch, turn1):
    """model.cpu_linear torch: neither the linears nor the cached engine's output layer (which
    otherwise switches to oneDNN on any CPU) reach oneDNN, the base model's sampled first
    attempts included; `auto` does reach it (through one of the two), so the check can fail."""
    from selfcorrect.engines import cpu_output_layer

    calls = []
    product = cpu_linear.product
    record = lambda *a: calls.append(1) or product(*a)  # noqa: E731
    monkeypatch.setattr(cpu_linear, "product", record)
    monkeypatch.setattr(cpu_output_layer, "product", record)
    for mode in ("torch", "auto"):
        cfg = tiny_config(tmp_path / mode, stage1_steps=1, stage2_steps=0, turn1=turn1)
        cfg.model.cpu_linear = mode
        cfg.rollout.engine = "cached"
        trainer = make_trainer(cfg)
        calls.clear()
        trainer.draw(trainer.next_problems(), 2)
        assert bool(calls) == (mode == "auto"), mode


def test_torch_only_is_a_block_without_onednn():
    model = layers()
    assert not cpu_linear.torch_only_asked()
    with onednn_linears(model, False, torch_only=True):
        assert cpu_linear.torch_only_asked() and not patched(model)
    assert not cpu_linear.torch_only_asked()
    with pytest.raises(ValueError, match="torch_only"), onednn_linears(model, True, torch_only=True):
        pass


def test_cpu_model_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: Other\n")
    assert cpu_linear.cpu_model(str(info)) == "AMD EPYC (family 25, model 17)"
    info.write_text("processor\t: 0\nmodel name\t: Some ARM core\n")  # no family numbers: the name alone
    assert cpu_linear.cpu_model(str(info)) == "Some ARM core"
    assert cpu_linear.cpu_model(str(tmp_path / "absent")) != ""  # platform.processor() or "unknown"
