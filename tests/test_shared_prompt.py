"""Shared-prompt log-probs equal the plain full-row ones, in value and in gradient."""

import pytest
import torch

from selfcorrect.batches import pad_rows, token_logprobs
from selfcorrect.shared_prompt import first_scored, prompt_groups, shared_prompt_logprobs
from tiny import tiny_model, tiny_tokenizer


def _batch(tok):
    """Two prompts of different lengths, three and two samples each, rows of varied length; turn
    ids 0 on the prompt (and the glue between attempts), 1 / 2 on the attempts."""
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(5, len(tok), (n,), generator=g).tolist()

    p1, p2 = ids(6), ids(9)
    rows, turns = [], []
    for prompt, shapes in ((p1, [(3, 2, 4), (5, 2, 1), (1, 2, 6)]), (p2, [(2, 2, 2), (7, 2, 3)])):
        for a1, glue, a2 in shapes:
            rows.append(prompt + ids(a1) + ids(glue) + ids(a2))
            turns.append([0] * len(prompt) + [1] * a1 + [0] * glue + [2] * a2)
    order = [0, 3, 1, 4, 2]  # rows of one prompt need not be adjacent
    return [rows[i] for i in order], [turns[i] for i in order]


def _both(model, tok, temperature):
    rows, turns = _batch(tok)
    ids, mask = pad_rows(rows, tok.pad_token_id)
    turn_ids, _ = pad_rows(turns, 0)
    starts = first_scored(turn_ids, mask.sum(dim=1))
    first = int(starts.min())
    plain = token_logprobs(model, ids, mask, first, temperature=temperature)
    shared = shared_prompt_logprobs(model, ids, mask, starts, first, temperature=temperature)
    scored = turn_ids[:, first:] > 0
    return plain, shared, scored


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_match_the_full_rows(temperature):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=1)
    with torch.no_grad():
        plain, shared, scored = _both(model, tok, temperature)
    assert shared.shape == plain.shape
    torch.testing.assert_close(shared[scored], plain[scored], atol=1e-5, rtol=1e-5)
    assert bool((shared[~scored & (plain == 0)] == 0).all())


def test_gradients_match_the_full_rows():
    tok = tiny_tokenizer()
    grads = []
    for which in (0, 1):
        model = tiny_model(tok, seed=2)
        result = _both(model, tok, 1.0)
        scored = result[2]
        weights = torch.linspace(-1, 1, int(scored.sum()))
        (result[which][scored] * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


def test_prompts_are_grouped_and_starts_clamped():
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 5, 5], [7, 7, 0, 0]])
    turns = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 2], [0, 0, 0, 0]])
    starts = first_scored(turns, torch.tensor([4, 4, 4, 2]))
    assert starts.tolist() == [2, 2, 3, 1]
    prompts, member = prompt_groups(ids, starts)
    assert prompts == [[1, 2], [1, 2, 5], [7]] and member == [0, 0, 1, 2]


def test_refuses_a_first_after_a_start():
    tok = tiny_tokenizer()
    model = tiny_model(tok)
    ids, mask = pad_rows([[5, 6, 7], [5, 6, 8]], tok.pad_token_id)
    with pytest.raises(ValueError, match="first"):
        shared_prompt_logprobs(model, ids, mask, torch.tensor([1, 2]), 2)
