"""The engine contract (engines/base.py), checked for every registered engine."""

import pytest
import torch

from selfcorrect.engines import UNSEEDED, make_engine
from selfcorrect.engines.base import SamplingSettings
from selfcorrect.engines.hf import HFGenerate
from selfcorrect.rollout import verify
from tiny import ENGINE_HIDDEN, chat_contexts, echo_rollouts, engine_params, tiny_model, tiny_tokenizer

NAMES = engine_params()


def _one_by_one(model, tok, contexts, settings, stop_ids):
    ref = HFGenerate()
    return [ref.generate(model, [c], settings, stop_ids=stop_ids, pad_id=tok.pad_token_id, batch_size=1).ids[0]
            for c in contexts]


@pytest.mark.parametrize("name", NAMES)
def test_greedy_equals_one_by_one_hf_generate(name):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3, hidden=ENGINE_HIDDEN)
    contexts = chat_contexts(tok)
    settings = SamplingSettings(greedy=True, max_new_tokens=12)
    stop = {tok.eos_token_id}
    out = make_engine(name).generate(model, contexts, settings, stop_ids=stop, pad_id=tok.pad_token_id, batch_size=3)
    assert out.ids == _one_by_one(model, tok, contexts, settings, stop)
    assert len(out.cut) == len(contexts)


@pytest.mark.parametrize("name", NAMES)
def test_each_row_stops_at_its_own_stop_token(name):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=3, hidden=ENGINE_HIDDEN)
    contexts = chat_contexts(tok)
    settings = SamplingSettings(greedy=True, max_new_tokens=12)
    free = _one_by_one(model, tok, contexts, settings, {tok.eos_token_id})
    # make the 3rd greedy token of row 0 a stop token: row 0 must end there, the others not
    stop = {tok.eos_token_id, free[0][2]}
    expected = _one_by_one(model, tok, contexts, settings, stop)
    out = make_engine(name).generate(model, contexts, settings, stop_ids=stop, pad_id=tok.pad_token_id, batch_size=4)
    assert out.ids == expected
    assert out.ids[0][-1] in stop and len(out.ids[0]) <= 3
    for ids, cut in zip(out.ids, out.cut):
        assert cut == (ids[-1] not in stop and len(ids) == 12)


@pytest.mark.parametrize("name", NAMES)
def test_k_samples_per_prompt_are_independent_draws(name):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=5, hidden=ENGINE_HIDDEN)
    contexts = chat_contexts(tok, (4,)) * 8
    settings = SamplingSettings(greedy=False, temperature=1.0, max_new_tokens=8)
    torch.manual_seed(0)
    out = make_engine(name).generate(model, contexts, settings, stop_ids={tok.eos_token_id},
                                     pad_id=tok.pad_token_id, batch_size=8)
    assert len(out.ids) == 8
    assert len({tuple(ids) for ids in out.ids}) > 1  # one shared prompt, different samples


@pytest.mark.parametrize("name", NAMES)
def test_seeded_rows_match_the_reference_engine(name):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=5, hidden=ENGINE_HIDDEN)
    contexts = chat_contexts(tok)
    settings = SamplingSettings(greedy=False, temperature=0.8, max_new_tokens=8)
    stop = {tok.eos_token_id}
    seeds = [11, 12, 13, 14]
    if name in UNSEEDED:
        with pytest.raises(ValueError, match="cannot seed rows one by one"):
            make_engine(name).generate(model, contexts, settings, stop_ids=stop, pad_id=tok.pad_token_id,
                                       batch_size=2, row_seeds=seeds)
        return
    ref = HFGenerate().generate(model, contexts, settings, stop_ids=stop, pad_id=tok.pad_token_id,
                                batch_size=4, row_seeds=seeds)
    out = make_engine(name).generate(model, contexts, settings, stop_ids=stop, pad_id=tok.pad_token_id,
                                     batch_size=2, row_seeds=seeds)
    assert out.ids == ref.ids


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seeds, top_p", [([1, 2, 3, 4], 1.0), (None, 1.0), (None, 0.9)])
def test_engine_logprobs_are_the_models_at_the_temperature(name, seeds, top_p):
    """log softmax(z / T)[token] of the full distribution, seeded or not, with or without a nucleus."""
    from selfcorrect.batches import token_logprobs

    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=5, hidden=ENGINE_HIDDEN)
    contexts = chat_contexts(tok)
    settings = SamplingSettings(greedy=False, temperature=0.7, top_p=top_p, max_new_tokens=8)
    torch.manual_seed(0)
    if name in UNSEEDED and (seeds is not None or top_p < 1):
        with pytest.raises(ValueError, match="seed rows|top_p 1.0 only"):
            make_engine(name).generate(model, contexts, settings, stop_ids={tok.eos_token_id},
                                       pad_id=tok.pad_token_id, batch_size=4, row_seeds=seeds)
        return
    out = make_engine(name).generate(model, contexts, settings, stop_ids={tok.eos_token_id},
                                     pad_id=tok.pad_token_id, batch_size=4, row_seeds=seeds)
    assert out.logprobs is not None
    for ctx, ids, lps in zip(contexts, out.ids, out.logprobs):
        assert len(lps) == len(ids)
        full = torch.tensor([ctx + ids])
        with torch.no_grad():
            want = token_logprobs(model, full, torch.ones_like(full), len(ctx), temperature=0.7)[0]
        assert torch.allclose(torch.tensor(lps), want, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_multi_turn_rollout_equals_the_reference_engine(name):
    """Attempt 2 continues [x, y1, p]: an engine that reuses state between turns must give the
    rows the stateless reference gives (greedy), and be reusable after the rollout."""
    _, task, run = echo_rollouts()
    ref = run()
    engine = make_engine(name)
    for _ in range(2):  # the same engine twice: nothing stale survives a rollout
        ro = run(engine)
        assert ro.rows == ref.rows and ro.turns == ref.turns
    verify(task, ro)
