"""Supervised fine-tuning: chat encoding with a loss mask, padding, schedule, and the loop."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import LlamaConfig, LlamaForCausalLM

from selfcorrect.demo_model import ASSISTANT, EOS, build_tokenizer
from selfcorrect.optim import lr_factor
from selfcorrect.sft import encode_chat, masked_token_loss_sum, sft_train

CHAT = [{"role": "user", "content": "47+38"}, {"role": "assistant", "content": " 75"},
        {"role": "user", "content": "Recheck."}, {"role": "assistant", "content": "7+8=15;4+3+1=8;85"}]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([])


def tiny_model(vocab: int, seed: int = 0, dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).to(dtype)


def trained_text(tokenizer, ids, mask):
    return "".join(t for t, m in zip(tokenizer.convert_ids_to_tokens(ids), mask) if m)


def test_encode_chat_masks_assistant_turns_and_their_eos(tokenizer):
    ids, mask = encode_chat(tokenizer, CHAT)
    assert len(ids) == len(mask)
    assert trained_text(tokenizer, ids, mask) == " 75" + EOS + "7+8=15;4+3+1=8;85" + EOS
    # Everything before each assistant turn, including the role token, is context.
    first = mask.index(1)
    assert tokenizer.convert_ids_to_tokens(ids[first - 1]) == ASSISTANT


@pytest.mark.parametrize("after_end, trained_tail", [("\n", "<|end|>"), ("\n\n", "<|end|>"), ("", "<|end|>")])
def test_encode_chat_does_not_train_blanks_after_the_end_of_turn_token(after_end, trained_tail):
    """ChatML-style templates write "\n" after the end token; generation stops at the end token,
    so the newline is never sampled and must not be learned."""
    from tiny import TEMPLATE, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = TEMPLATE.replace("<|end|>{% endfor %}", "<|end|>" + after_end + "{% endfor %}")
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "again"}, {"role": "assistant", "content": "yes"}]
    ids, mask = encode_chat(tok, chat)
    trained = [t for t, m in zip(ids, mask) if m]
    assert tok.decode(trained) == "ok" + trained_tail + "yes" + trained_tail
    assert tok.decode(ids) == tok.apply_chat_template(chat, tokenize=False)  # the row itself keeps the blanks


def test_encode_chat_keeps_a_blank_turn_end_when_the_template_has_no_end_token():
    from tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    ids, mask = encode_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == "ok\n"  # the newline is this template's turn end


def test_encode_chat_can_train_one_turn_only(tokenizer):
    ids, mask = encode_chat(tokenizer, CHAT, loss_turns=[1])
    assert trained_text(tokenizer, ids, mask) == "7+8=15;4+3+1=8;85" + EOS
    _, none = encode_chat(tokenizer, CHAT, loss_turns=[])
    assert sum(none) == 0


def test_masked_loss_matches_a_hand_computation():
    model = tiny_model(20)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 0]])
    attention = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]])
    total, count = masked_token_loss_sum(model, ids, attention, mask)
    logits = model(input_ids=ids, attention_mask=attention).logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    expected = -(logp[0, 1, 5] + logp[0, 2, 6] + logp[1, 0, 8])
    assert count == 3
    assert torch.allclose(total, expected, atol=1e-5)


def test_masked_loss_and_gradient_equal_plain_cross_entropy():
    """Padding, a prompt before the first trained token, and rows that start training late."""
    ids = torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 0, 0], [13, 14, 15, 16, 17, 0]])
    attention = (torch.arange(6) < torch.tensor([[6], [4], [5]])).long()
    mask = torch.tensor([[0, 0, 1, 1, 0, 1], [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0]])
    ours, plain = tiny_model(20, seed=1), tiny_model(20, seed=1)
    total, count = masked_token_loss_sum(ours, ids, attention, mask)
    logits = plain(input_ids=ids, attention_mask=attention).logits[:, :-1]
    losses = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    expected = (losses * mask[:, 1:]).sum()
    assert count == 6
    assert torch.allclose(total, expected, atol=1e-5)
    total.backward()
    expected.backward()
    for p, q in zip(ours.parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5)


class Float32Logits(TorchDispatchMode):
    """Records the largest float32 tensor made by any op whose last dimension is the vocabulary."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab, self.largest = vocab, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.dim() >= 2 \
                    and t.shape[-1] == self.vocab:
                self.largest = max(self.largest, t.numel())
        return out


def test_a_half_precision_model_never_gets_a_float32_copy_of_all_logits():
    """The loss of a bf16 model is computed in fp32 a few rows at a time, forward and backward:
    no fp32 tensor as large as the batch's [B, T - 1, V] logits is ever made."""
    vocab, batch, width = 50, 8, 12
    model = tiny_model(vocab, dtype=torch.bfloat16)
    ids = torch.randint(1, vocab, (batch, width))
    attention = torch.ones_like(ids)
    mask = torch.zeros_like(ids)
    mask[:, 2:] = 1
    with Float32Logits(vocab) as seen:
        total, _ = masked_token_loss_sum(model, ids, attention, mask)
        total.backward()
    assert torch.isfinite(total)
    assert 0 < seen.largest < batch * (width - 1) * vocab


def test_lr_schedule():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(99, 100, 10, "constant") == 1.0


def memorise_data(tokenizer):
    chats = [[{"role": "user", "content": f"{a}+{b}"}, {"role": "assistant", "content": str(a + b)}]
             for a, b in [(12, 34), (56, 21), (40, 40), (77, 11), (23, 45), (61, 18)]]
    encoded = [encode_chat(tokenizer, c) for c in chats]
    return [e[0] for e in encoded], [e[1] for e in encoded]


def test_sft_loss_decreases_and_is_reproducible(tokenizer):
    rows, masks = memorise_data(tokenizer)
    losses = sft_train(tiny_model(len(tokenizer)), rows, masks, lr=2e-2, steps=20, batch_size=6,
                       pad_id=tokenizer.pad_token_id, seed=0)
    assert len(losses) == 20 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    again = sft_train(tiny_model(len(tokenizer)), rows, masks, lr=2e-2, steps=20, batch_size=6,
                      pad_id=tokenizer.pad_token_id, seed=0)
    assert again == losses


def test_progress_in_a_log_is_a_plain_line(tokenizer, capsys):
    rows, masks = memorise_data(tokenizer)
    sft_train(tiny_model(len(tokenizer)), rows, masks, lr=1e-3, steps=3, batch_size=6,
              pad_id=tokenizer.pad_token_id, progress=True)
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err and err.startswith("sft 3/3 (100%)") and "loss=" in err


def test_micro_batches_give_the_same_step(tokenizer):
    rows, masks = memorise_data(tokenizer)
    whole, split = tiny_model(len(tokenizer)), tiny_model(len(tokenizer))
    a = sft_train(whole, rows, masks, lr=1e-2, steps=3, batch_size=6, pad_id=tokenizer.pad_token_id)
    b = sft_train(split, rows, masks, lr=1e-2, steps=3, batch_size=6, micro_batch_size=4,
                  pad_id=tokenizer.pad_token_id)
    assert a == pytest.approx(b, rel=1e-4)
    for p, q in zip(whole.parameters(), split.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_epochs_set_the_step_count(tokenizer):
    rows, masks = memorise_data(tokenizer)
    losses = sft_train(tiny_model(len(tokenizer)), rows, masks, lr=1e-3, epochs=2, batch_size=4,
                       pad_id=tokenizer.pad_token_id, schedule="constant")
    assert len(losses) == 3  # ceil(2 * 6 / 4)


def test_bad_input_fails_loudly(tokenizer):
    rows, masks = memorise_data(tokenizer)
    model = tiny_model(len(tokenizer))
    kw = dict(lr=1e-3, batch_size=2, pad_id=0)
    with pytest.raises(ValueError, match="row 0"):
        sft_train(model, [rows[0]], [masks[0][:-1]], steps=1, **kw)
    with pytest.raises(ValueError, match="no trained token"):
        sft_train(model, [rows[0]], [[0] * len(rows[0])], steps=1, **kw)
    with pytest.raises(ValueError, match="exactly one of steps and epochs"):
        sft_train(model, rows, masks, steps=1, epochs=1, **kw)
    with pytest.raises(ValueError, match="schedule"):
        sft_train(model, rows, masks, steps=1, schedule="linear", **kw)
    with pytest.raises(ValueError, match="as many loss masks"):
        sft_train(model, rows, masks[:1], steps=1, **kw)
