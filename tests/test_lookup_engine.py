"""The lookup engine: drafts from the row's own context, checked in one forward, never change a row.

The engine contract (tests/test_engines.py) runs it with the drafts a tiny random model happens to
give; here drafts are forced (always the true continuation, always wrong, or a mix) so that
acceptance, rejection and the masked-out positions they leave in the cache are exercised on
purpose, and the engine must still give what the cached engine gives.
"""

import pytest
import torch

from selfcorrect.engines import lookup
from selfcorrect.engines.base import SamplingSettings
from selfcorrect.engines.cached import CachedEngine
from selfcorrect.engines.hf import HFGenerate
from selfcorrect.engines.lookup import LookupEngine, draft_from_context
from tiny import ENGINE_HIDDEN, chat_contexts, echo_rollouts, tiny_model, tiny_tokenizer


def test_draft_is_what_followed_the_latest_longest_match():
    seq = [5, 1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 6, 1, 2, 3]
    assert draft_from_context(seq, 2) == [7, 8]          # latest occurrence of [1, 2, 3]
    assert draft_from_context(seq, 10) == [7, 8, 6, 1, 2, 3]  # up to the end of the sequence
    assert draft_from_context([4, 2, 8, 3, 2], 3) == []  # only a 1-gram occurs: too weak by default
    assert draft_from_context([4, 2, 8, 3, 2], 3, min_ngram=1) == [8, 3, 2]
    assert draft_from_context([1, 2, 3], 3) == []
    assert draft_from_context(seq, 0) == []
    assert draft_from_context([4, 1, 4, 1], 5, ngram=2) == [4, 1]  # a 2-gram: [4, 1] at 0, followed by 4, 1


def _forced(monkeypatch, drafts_for):
    """Make every draft drafts_for(sequence, max_tokens) instead of a lookup."""
    monkeypatch.setattr(lookup, "draft_from_context", lambda seq, max_tokens, *args: drafts_for(seq, max_tokens))


@pytest.mark.parametrize("kind", ["true", "wrong", "mixed"])
@pytest.mark.parametrize("seeded", [False, True])
def test_forced_drafts_change_no_token(monkeypatch, kind, seeded):
    tok = tiny_tokenizer()
    model = tiny_model(tok, seed=5, hidden=ENGINE_HIDDEN)
    contexts = chat_contexts(tok)
    stop = {tok.eos_token_id}
    seeds = [21, 22, 23, 24] if seeded else None
    settings = SamplingSettings(greedy=not seeded, temperature=0.8, max_new_tokens=10)
    ref = (HFGenerate() if seeded else CachedEngine()).generate(
        model, contexts, settings, stop_ids=stop, pad_id=tok.pad_token_id, batch_size=4, row_seeds=seeds)
    truth = {tuple(c): c + ids for c, ids in zip(contexts, ref.ids)}

    def drafts_for(seq, max_tokens):
        full = next(v for k, v in truth.items() if seq[:len(k)] == list(k))
        right = full[len(seq):len(seq) + max_tokens]
        wrong = [(t + 1) % len(tok) for t in right]
        if kind == "true":
            return right
        if kind == "wrong":
            return wrong
        keep = len(seq) % 4  # right, then wrong, accepted to a different depth in different rows and steps
        return right[:keep] + wrong[keep:]

    _forced(monkeypatch, drafts_for)
    engine = LookupEngine(min_drafting=0.0)
    out = engine.generate(model, contexts, settings, stop_ids=stop, pad_id=tok.pad_token_id, batch_size=4,
                          row_seeds=seeds)
    assert out.ids == ref.ids and out.cut == ref.cut
    for got, want in zip(out.logprobs, ref.logprobs):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-4)
    one_by_one = max(map(len, out.ids)) - 1  # forwards after the prefill without drafts
    if kind == "wrong":
        assert engine.stats["accepted"] == 0 and engine.stats["forwards"] == one_by_one
    else:  # the drafts were taken: fewer forwards
        assert engine.stats["accepted"] > 0 and engine.stats["forwards"] < one_by_one


@pytest.mark.parametrize("kind", ["wrong", "mixed"])
def test_attempt_two_continues_a_cache_with_rejected_positions(monkeypatch, kind):
    """Rejected drafts leave masked positions in the keys/values attempt 2 continues: the rows
    must still be the stateless reference's."""
    tok, _, run = echo_rollouts()
    ref = run()
    truth = [list(r) for r in ref.rows]

    def drafts_for(seq, max_tokens):
        full = next(r for r in truth if r[:len(seq)] == seq)
        right = full[len(seq):len(seq) + max_tokens]
        wrong = [(t + 3) % len(tok) for t in right]
        keep = len(seq) % 3  # accepted to different depths in different rows and steps
        return wrong if kind == "wrong" else right[:keep] + wrong[keep:]

    _forced(monkeypatch, drafts_for)
    engine = LookupEngine(min_drafting=0.0)
    ro = run(engine)
    assert ro.rows == ref.rows and ro.turns == ref.turns
    assert engine.stats["drafted"] > engine.stats["accepted"]

