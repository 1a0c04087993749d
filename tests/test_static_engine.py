"""The static-cache engine's shape buckets (its results are checked with every engine in test_engines.py)."""

import torch

from selfcorrect.engines.base import SamplingSettings
from selfcorrect.engines.hf import HFGenerate
from selfcorrect.engines.static import WIDTH_BUCKET, StaticCacheGenerate, bucket_rows, bucket_width
from selfcorrect.rollout import ChatFormat
from tiny import tiny_model, tiny_tokenizer


def test_rows_go_to_the_next_power_of_two_within_the_batch_size():
    assert [bucket_rows(n, 8) for n in (1, 2, 3, 4, 5, 8)] == [1, 2, 4, 4, 8, 8]
    assert bucket_rows(5, 6) == 6 and bucket_rows(3, 3) == 3


def test_widths_go_to_a_multiple_of_the_bucket():
    assert [bucket_width(w) for w in (1, WIDTH_BUCKET, WIDTH_BUCKET + 1)] == [WIDTH_BUCKET, WIDTH_BUCKET, 2 * WIDTH_BUCKET]


def test_filler_rows_and_padding_change_no_row(monkeypatch):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=5)
    fmt = ChatFormat(tok)
    contexts = [fmt.first_ids([{"role": "user", "content": "x" * n}]) for n in (2, 9, 5)]
    settings = SamplingSettings(greedy=False, temperature=0.9, max_new_tokens=6)
    seeds = [21, 22, 23]
    shapes = []
    generate = model.generate

    def spy(**kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return generate(**kwargs)

    args = dict(stop_ids={tok.eos_token_id}, pad_id=tok.pad_token_id, batch_size=8, row_seeds=seeds)
    ref = HFGenerate().generate(model, contexts, settings, **args)
    monkeypatch.setattr(model, "generate", spy)
    out = StaticCacheGenerate().generate(model, contexts, settings, **args)
    assert shapes == [(4, WIDTH_BUCKET)]  # 3 rows -> 4, the longest context -> one bucket
    assert out.ids == ref.ids and out.cut == ref.cut
    assert all(torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5) for a, b in zip(out.logprobs, ref.logprobs))
