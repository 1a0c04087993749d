"""fp32_attention: on a CPU, under the trainer's bf16 autocast (optim.autocast), a model's sdpa
attention runs in fp32 outside autocast; elsewhere, and after the block, nothing changes."""

import threading

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from selfcorrect import fp32_attention
from selfcorrect.fp32_attention import _outside_autocast
from selfcorrect.fp32_attention import fp32_attention as fp32_attention_block
from selfcorrect.optim import autocast
from selfcorrect.train import Trainer
from test_train import tiny_config
from tiny import EchoTask, tiny_model, tiny_tokenizer

IDS = torch.tensor([[5, 9, 12, 7, 30, 2, 14, 22], [8, 3, 3, 19, 25, 11, 6, 4]])
MASK = torch.tensor([[1] * 8, [0, 0, 1, 1, 1, 1, 1, 1]])
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    m = tiny_model(tiny_tokenizer(), hidden=64)
    assert m.config._attn_implementation == "sdpa"
    return m


@pytest.fixture
def attention_dtypes(monkeypatch):
    """The dtypes of (query, key, value) and whether autocast was on, at each call of torch's SDPA."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(((q.dtype, k.dtype, v.dtype), torch.is_autocast_enabled("cpu")))
        return sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


def sdpa_entry():
    return ALL_ATTENTION_FUNCTIONS["sdpa"]


def test_under_the_trainers_autocast_attention_runs_in_fp32_outside_autocast(model, attention_dtypes):
    before = sdpa_entry()
    with torch.no_grad(), autocast(CPU, torch.bfloat16):
        logits = model(input_ids=IDS, attention_mask=MASK).logits
    assert logits.dtype == torch.bfloat16  # the rest of the forward is still autocast's
    assert attention_dtypes and all(d == (torch.float32,) * 3 and not on for d, on in attention_dtypes)
    assert sdpa_entry() is before and "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping  # put back


def test_plain_autocast_and_the_switch_turned_off_keep_bf16_attention(model, attention_dtypes, monkeypatch):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=IDS)
    monkeypatch.setattr(fp32_attention, "ENABLED", False)
    with torch.no_grad(), autocast(CPU, torch.bfloat16):
        model(input_ids=IDS)
    # autocast casts SDPA's inputs to bf16 (the spy sees them before that cast, inside autocast)
    assert len(attention_dtypes) == 4 and all(on for _, on in attention_dtypes)


def test_fp32_runs_and_other_devices_are_untouched(model, attention_dtypes):
    before = sdpa_entry()
    with autocast(CPU, None):  # an fp32 run: no autocast, no switch
        assert sdpa_entry() is before
    with fp32_attention_block(torch.device("cuda")):  # GPUs keep half-precision attention
        assert sdpa_entry() is before


def test_nested_blocks_and_failures_restore_the_registry(model):
    before = sdpa_entry()
    with pytest.raises(RuntimeError, match="inside"):
        with autocast(CPU, torch.bfloat16):
            wrapped = sdpa_entry()
            assert wrapped is not before
            with autocast(CPU, torch.bfloat16):  # an inner block (the trainer nests them) wraps nothing more
                assert sdpa_entry() is wrapped
            assert sdpa_entry() is wrapped  # the inner block's exit leaves the outer one's switch
            raise RuntimeError("inside")
    assert sdpa_entry() is before and "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping


def test_the_logits_move_toward_an_fp32_forwards(model):
    """The switch changes the attention's precision only: the logits move, toward those of an
    fp32 forward."""
    with torch.no_grad():
        exact = model(input_ids=IDS, attention_mask=MASK).logits
        with autocast(CPU, torch.bfloat16):
            switched = model(input_ids=IDS, attention_mask=MASK).logits.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(input_ids=IDS, attention_mask=MASK).logits.float()
    assert (switched - plain).abs().max() > 0
    assert (switched - exact).pow(2).mean() < (plain - exact).pow(2).mean()


def test_a_bf16_model_keeps_bf16_attention(attention_dtypes):
    """bf16 weights (a bf16 LoRA base): the inputs are bf16 already and stay so."""
    bf16 = tiny_model(tiny_tokenizer(), hidden=64).to(torch.bfloat16)
    with torch.no_grad(), autocast(CPU, torch.bfloat16):
        bf16(input_ids=IDS, attention_mask=MASK)
    assert attention_dtypes and all(d == (torch.bfloat16,) * 3 and not on for d, on in attention_dtypes)


def test_masks_and_biases_follow_the_inputs_and_nothing_changes_outside_autocast(model):
    """A bf16 additive mask and position bias with an fp32 query and keys and bf16 values (what
    fp32 masters give): computed as the fp32 attention of the upcast operands. Without autocast
    the wrapper passes everything through as it came (mixed dtypes fail as they would)."""
    attention = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 16, generator=g), torch.randn(2, 2, 5, 16, generator=g)
    v = torch.randn(2, 2, 5, 16, generator=g).bfloat16()
    mask = torch.zeros(2, 1, 5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf")).bfloat16()
    bias = torch.randn(2, 4, 5, 5, generator=g).bfloat16()
    wrapped = _outside_autocast(sdpa_attention_forward)
    for given in ({"mask": mask}, {"mask": None, "position_bias": bias}):  # each alone
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, _ = wrapped(attention, q, k, v, given.pop("mask"), scaling=0.25, **given)
        upcast = {name: t.float() for name, t in given.items()}
        want, _ = sdpa_attention_forward(attention, q, k, v.float(), None if "position_bias" in given else mask.float(),
                                         scaling=0.25, **upcast)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="dtype"):
        wrapped(attention, q, k, v, None, scaling=0.25)


def test_a_users_own_override_is_wrapped_and_put_back(model):
    calls = []

    def mine(*args, **kwargs):
        calls.append(1)
        return sdpa_attention_forward(*args, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = mine
    try:
        with torch.no_grad(), autocast(CPU, torch.bfloat16):
            assert sdpa_entry() is not mine
            model(input_ids=IDS)
        assert calls and sdpa_entry() is mine
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]


def test_blocks_in_two_threads_share_the_switch_until_both_close():
    before = sdpa_entry()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with fp32_attention_block(CPU):
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second():
        first_in.wait(5)
        with fp32_attention_block(CPU):
            second_in.set()
            first_out.wait(5)
            seen["after_first_closed"] = sdpa_entry()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["after_first_closed"] is not before  # still switched for the block left open
    assert sdpa_entry() is before and "sdpa" not in ALL_ATTENTION_FUNCTIONS._local_mapping


def test_bf16_training_with_gradient_checkpointing(tmp_path):
    """Checkpointing recomputes the forward in the backward, after the log-prob pass's block has
    closed: the trainer's backward reopens it, or the recomputed attention would be bf16 where the
    forward saved fp32 (torch refuses: "Recomputed values ... different metadata")."""
    cfg = tiny_config(tmp_path)
    cfg.algo.stage1_steps, cfg.algo.stage2_steps = 0, 1
    cfg.optim.gradient_checkpointing = True
    tok = tiny_tokenizer()
    trainer = Trainer(cfg, EchoTask(5, answer="abcdefghij"), model=tiny_model(tok).to(torch.bfloat16), tokenizer=tok)
    assert trainer.compute_dtype == torch.bfloat16
    metrics = trainer.train()[0]
    assert torch.isfinite(torch.tensor(metrics["loss"])) and metrics["engine_logprob_gap"] < 1e-3
