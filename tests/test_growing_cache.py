"""The growing cache holds exactly what DynamicCache holds, through appends, growth and row selection."""

import torch
from transformers import DynamicCache

from selfcorrect.engines.growing_cache import SPARE_POSITIONS, growing_cache


def _feed(cache, steps, layers=2):
    for kv in steps:
        if isinstance(kv, torch.Tensor):  # row selection
            cache.batch_select_indices(kv)
            continue
        for layer in range(layers):
            out = cache.update(kv[0] + layer, kv[1] - layer, layer)
    return out


def test_matches_dynamic_cache_through_growth_and_selection():
    g = torch.Generator().manual_seed(0)

    def kv(b, n):
        return torch.randn(b, 2, n, 4, generator=g), torch.randn(b, 2, n, 4, generator=g)

    # a prefill, one-token steps past the spare room (so the buffer grows), a compaction, a long append
    steps = [kv(3, 5)] + [kv(3, 1) for _ in range(SPARE_POSITIONS + 3)]
    steps += [torch.tensor([0, 2])] + [kv(2, 1) for _ in range(4)] + [kv(2, SPARE_POSITIONS + 10)]
    plain, growing = DynamicCache(), growing_cache()
    want, got = _feed(plain, steps), _feed(growing, steps)
    assert type(growing.layers[0]).__name__ == "GrowingLayer"  # the fallback would make this test vacuous
    for w, x in zip(want, got):
        assert torch.equal(w, x)
    for a, b in zip(plain.layers, growing.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert growing.get_seq_length() == plain.get_seq_length() == 5 + SPARE_POSITIONS + 3 + 4 + SPARE_POSITIONS + 10


def test_appends_write_in_place_until_the_room_is_used():
    cache = growing_cache()
    cache.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2), 0)
    room = cache.layers[0].room_k
    cache.update(torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2), 0)
    assert cache.layers[0].room_k is room  # no copy of the cache for a new position
    assert cache.layers[0].keys.data_ptr() == room.data_ptr()


def test_cache_edits_it_does_not_keep_in_step_are_refused():
    import pytest

    cache = growing_cache()
    cache.update(torch.zeros(2, 1, 3, 2), torch.zeros(2, 1, 3, 2), 0)
    with pytest.raises(NotImplementedError):
        cache.crop(1)  # DynamicLayer's crop would shorten the views and leave the buffers' fill mark
    with pytest.raises(NotImplementedError):
        cache.batch_repeat_interleave(2)
