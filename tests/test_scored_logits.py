"""Log-probs with logits only at scored positions equal those read off the model's full logits."""

import pytest
import torch

from selfcorrect.batches import pad_rows, token_logprobs
from selfcorrect.shared_prompt import first_scored, shared_prompt_logprobs
from tiny import tiny_model, tiny_tokenizer


def _full_logprobs(model, ids, mask, first, temperature=1.0):
    """The plain way: every position's logits, log-softmax, pick: [b, T - first]."""
    z = model(input_ids=ids, attention_mask=mask).logits[:, first - 1:-1].double() / temperature
    return torch.log_softmax(z, dim=-1).gather(-1, ids[:, first:, None])[..., 0]


def _rows(tok):
    """Three right-padded rows [prompt, attempt, glue, attempt] and their turn ids."""
    g = torch.Generator().manual_seed(3)
    rows, turns = [], []
    for a1, glue, a2 in ((4, 3, 2), (1, 3, 5), (6, 3, 1)):
        prompt = torch.randint(5, len(tok), (5,), generator=g).tolist()
        rows.append(prompt + torch.randint(5, len(tok), (a1 + glue + a2,), generator=g).tolist())
        turns.append([0] * 5 + [1] * a1 + [0] * glue + [2] * a2)
    ids, mask = pad_rows(rows, tok.pad_token_id)
    turn_ids, _ = pad_rows(turns, 0)
    return ids, mask, turn_ids


class HeadRows:
    """Counts the positions the output layer is given."""

    def __init__(self, model):
        self.seen = []
        self.handle = model.get_output_embeddings().register_forward_hook(
            lambda module, args, out: self.seen.append(args[0].shape[:-1].numel()))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_scored_positions_only_values_and_gradients(temperature):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2).train()
    ids, mask, turn_ids = _rows(tok)
    first = 5
    scored = turn_ids[:, first:] > 0
    counter = HeadRows(model)
    got = token_logprobs(model, ids, mask, first, temperature=temperature, scored=scored)
    assert counter.seen == [int(scored.sum())]  # no logits for the glue, the padding or the prompt
    want = _full_logprobs(model, ids, mask, first, temperature)
    torch.testing.assert_close(got[scored].double(), want[scored], atol=1e-5, rtol=1e-5)
    assert bool((got[~scored] == 0).all())

    weights = torch.randn(scored.shape, generator=torch.Generator().manual_seed(0)) * scored
    grads = []
    for logp in (got, want):
        model.zero_grad()
        (logp.double() * weights).sum().backward(retain_graph=True)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0].double(), grads[1].double(), atol=1e-5, rtol=1e-4)


def test_shared_prompt_path_scores_only_the_attempts():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2)
    ids, mask, turn_ids = _rows(tok)
    starts = first_scored(turn_ids, mask.sum(dim=1))
    first = int(starts.min())
    scored = turn_ids[:, first:] > 0
    with torch.no_grad():
        want = _full_logprobs(model, ids, mask, first)
        counter = HeadRows(model)
        got = shared_prompt_logprobs(model, ids, mask, starts, first, scored=scored)
    # the prompt forward keeps its last position (one per distinct prompt); then the scored
    # positions other than each row's first attempt token, which that prompt position predicts
    assert counter.seen == [3, int(scored.sum()) - 3]
    torch.testing.assert_close(got[scored].double(), want[scored], atol=1e-5, rtol=1e-5)
    assert bool((got[~scored] == 0).all())


def test_soft_capped_logits_are_capped_after_the_gather():
    """Gemma 2 soft-caps its logits after the output layer; the gathered positions get it too."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=8, final_logit_softcapping=0.5)
    model = Gemma2ForCausalLM(cfg).eval()
    ids = torch.randint(1, 60, (2, 9))
    mask = torch.ones_like(ids)
    scored = torch.zeros(2, 6, dtype=torch.bool)
    scored[0, 1:4] = scored[1, 5] = True
    with torch.no_grad():
        got = token_logprobs(model, ids, mask, 3, scored=scored)
        want = _full_logprobs(model, ids, mask, 3)
    torch.testing.assert_close(got[scored].double(), want[scored], atol=1e-5, rtol=1e-5)


def test_model_without_an_output_layer_falls_back_to_full_logits(monkeypatch):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2)
    monkeypatch.setattr(model, "get_output_embeddings", lambda: None)
    ids, mask, turn_ids = _rows(tok)
    scored = turn_ids[:, 5:] > 0
    with torch.no_grad():
        got = token_logprobs(model, ids, mask, 5, scored=scored)
        want = _full_logprobs(model, ids, mask, 5)
    torch.testing.assert_close(got[scored].double(), want[scored], atol=1e-5, rtol=1e-5)


def test_nothing_scored_gives_zeros_and_a_zero_gradient():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2).train()
    ids, mask, _ = _rows(tok)
    got = token_logprobs(model, ids, mask, 5, scored=torch.zeros(ids.shape[0], ids.shape[1] - 5, dtype=torch.bool))
    assert bool((got == 0).all())
    got.sum().backward()
    assert all(p.grad is None or bool((p.grad == 0).all()) for p in model.parameters())


def test_default_scores_every_real_token():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=2)
    ids, mask, _ = _rows(tok)
    with torch.no_grad():
        got = token_logprobs(model, ids, mask, 2)
        want = _full_logprobs(model, ids, mask, 2)
    real = mask[:, 2:].bool()
    torch.testing.assert_close(got[real].double(), want[real], atol=1e-5, rtol=1e-5)
    assert bool((got[~real] == 0).all())
    with pytest.raises(ValueError, match="scored must be"):
        token_logprobs(model, ids, mask, 2, scored=real[:, 1:])
