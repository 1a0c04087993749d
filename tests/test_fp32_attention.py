"""fp32_attention: on a CPU, under the trainer's bf16 autocast (optim.autocast), a model's sdpa
attention runs in fp32 outside autocast; elsewhere, and after the block, nothing changes."""

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from selfcorrect import fp32_attention
from selfcorrect.fp32_attention import fp32_attention as fp32_attention_block
from selfcorrect.optim import autocast
from tiny import tiny_model, tiny_tokenizer

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
