"""The cached engine, drafting each row's next tokens from its own context and checking them in one forward.

SCoRe's attempt 2 repeats much of attempt 1 (a trained model copies what it believes right). So
before each step every row proposes a draft, the ids that followed the latest earlier occurrence
of its last n ids in its own context and output (n = 3, then 2; "prompt lookup"), the model reads
the row's last id and its draft in one forward, and the row keeps the draft up to the first
position where its own choice differs, plus that choice. A forward over more positions costs
more (on a 2-core CPU, SmolLM2 at 16 rows: 1 position 130 ms, 5 positions 350 ms), and a batch
takes as many steps as its slowest row, so drafts are fed only when every active row has one.

Exact, not approximate: at every position the token is chosen as the cached engine chooses it
(argmax, the row's own Gumbel draw, or the inverse CDF), from the logits of the prefix the row
really has, and a draw is spent only on a token the row keeps. So greedy rows are the cached
engine's, seeded rows draw the very tokens the hf engine draws, and unseeded rows draw from the
same distribution (in another order of the global generator); up to rounding, as between any two
engines: a forward over 5 positions and five over 1 differ in the last bits of the logits (up to
4e-7 in fp32 on the test models), which can flip a near-tie. Rejected draft positions stay
in the cache, masked out: no later position attends to them and their positions are not counted,
but they take memory and attention time until the row finishes (a step adds 1 + the longest
draft columns to every row of the batch).
"""

from __future__ import annotations

from .cached import CachedEngine

DRAFT_TOKENS = 4   # ids proposed per row and step
NGRAM = 3          # the longest tail looked up
MIN_NGRAM = 2      # the shortest: a one-id match (a space, a digit) predicts little
MIN_DRAFTING = 1.0  # draft only when every active row has a draft (measured: anything less cost time)


class LookupEngine(CachedEngine):
    """The cached engine's decode loop (which feeds drafts and checks them) with drafts to feed."""

    name = "lookup"

    def __init__(self, draft_tokens: int = DRAFT_TOKENS, ngram: int = NGRAM, min_ngram: int = MIN_NGRAM,
                 min_drafting: float = MIN_DRAFTING):
        super().__init__()
        self.draft_tokens, self.ngram, self.min_ngram, self.min_drafting = draft_tokens, ngram, min_ngram, min_drafting

    def _drafts(self, contexts, rows, active, result, limit) -> list[list[int]]:
        """Each active row's draft, or none for any when too few rows have one: a forward over
        the longest draft costs every row its width, and the batch takes as many steps as its
        slowest row."""
        drafts, missing = [], 0
        allowed = (1.0 - self.min_drafting) * len(active)  # rows that may go without a draft
        for i in active:
            r = rows[i]
            room = limit - len(result.ids[r]) - 1  # the token after the draft is chosen too
            drafts.append(draft_from_context(list(contexts[r]) + result.ids[r], min(room, self.draft_tokens),
                                             self.ngram, self.min_ngram))
            missing += not drafts[-1]
            if missing > allowed:  # too few drafts already: stop looking
                return [[] for _ in active]
        return drafts


def draft_from_context(seq: list[int], max_tokens: int, ngram: int = NGRAM, min_ngram: int = MIN_NGRAM) -> list[int]:
    """Up to max_tokens ids that followed the latest earlier occurrence of seq's last n ids, for
    the largest n in [min_ngram, ngram] that occurs; [] when none does."""
    if max_tokens <= 0:
        return []
    for n in range(min(ngram, len(seq) - 1), min_ngram - 1, -1):
        tail = seq[-n:]
        for start in range(len(seq) - n - 1, -1, -1):
            if seq[start:start + n] == tail:
                return seq[start + n:start + n + max_tokens]
    return []
