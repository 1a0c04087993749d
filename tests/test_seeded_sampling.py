"""Per-row seeded sampling (rollout.seeding problem): independent of the batch, and exact."""

import numpy as np
import torch

from selfcorrect.rollout import SamplingSettings, generate
from selfcorrect.sampling import GumbelSampler, row_seed
from tiny import tiny_model, tiny_tokenizer


def test_a_rows_tokens_depend_on_its_seed_not_on_its_batch():
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=1)
    contexts = [tok("x" * n)["input_ids"] for n in (1, 30, 5, 12)]
    seeds = [row_seed(0, i) for i in range(4)]
    settings = SamplingSettings(greedy=False, temperature=1.0, max_new_tokens=8)
    kw = dict(stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id)
    together, _ = generate(model, contexts, settings, batch_size=4, row_seeds=seeds, **kw)
    apart = [generate(model, [c], settings, batch_size=1, row_seeds=[s], **kw)[0][0] for c, s in zip(contexts, seeds)]
    reversed_, _ = generate(model, contexts[::-1], settings, batch_size=2, row_seeds=seeds[::-1], **kw)
    assert together == apart == reversed_[::-1]
    other, _ = generate(model, contexts, settings, batch_size=4, row_seeds=[row_seed(1, i) for i in range(4)], **kw)
    assert other != together


def test_gumbel_argmax_samples_softmax_over_temperature():
    """Frequencies of argmax(z / T + Gumbel) over 20000 seeds match softmax(z / T) (chi-square)."""
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    temperature, n = 0.7, 20000
    sampler = GumbelSampler([row_seed(3, i) for i in range(n)], temperature, "cpu")
    picks = sampler(None, z.expand(n, -1)).argmax(dim=1)
    counts = np.bincount(picks.numpy(), minlength=5)
    expected = torch.softmax(z[0] / temperature, dim=0).numpy() * n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.5, (counts, expected)  # the 0.999 quantile of chi-square with 4 degrees of freedom
