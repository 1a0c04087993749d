"""Per-row seeded sampling: a row's tokens depend on its own seed, not on its batch or rank.

Hugging Face `generate` draws every row of a batch from one RNG stream, so which tokens a row
gets depends on how many rows came before it: on the batch size, and in a data-parallel run on
the rank that generated it. With `rollout.seeding problem` each training row instead samples
with its own generator, seeded from (run seed, the problem's position in the data order, the
sample number, the attempt), so N ranks with P/N problems each draw exactly the rows one process
with P problems draws, and a run can be reproduced at any world size.

Gumbel-max: for logits z and Gumbel noise g_v = −log(−log u_v), u_v ~ U(0, 1) i.i.d.,
argmax_v (z_v / T + g_v) is a sample from softmax(z / T) (the Gumbel-max trick). So generation
runs greedy (argmax) with a logits processor that adds the row's own noise: the sampled
distribution is exactly the full softmax(z / T) the log-probs and the KL assume (training
refuses top_p < 1, the only truncation this would have to reproduce).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def row_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SeedSequence hashing: nearby inputs give unrelated seeds)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def text_key(text: str) -> int:
    """A stable integer for a string (problem ids), the same in every process and run."""
    return zlib.crc32(text.encode("utf-8"))


class GumbelSampler:
    """A transformers LogitsProcessor for greedy decoding that turns argmax into a sample.

    seeds: one per row of the batch being generated, in order. Each row draws V uniforms per
    generated position from its own generator, so its t-th token uses its t-th draw whatever
    else is in the batch. Rows that already stopped keep drawing (generate pads them), which
    only advances their own generator."""

    def __init__(self, seeds: list[int], temperature: float, device):
        self.temperature = float(temperature)
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s))
            self.generators.append(g)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"GumbelSampler has {len(self.generators)} seeds for {scores.shape[0]} rows")
        return self.perturb(scores, range(len(self.generators)))

    def perturb(self, scores: torch.Tensor, rows) -> torch.Tensor:
        """z / T + Gumbel noise for scores [b, V] whose row i belongs to seed rows[i] (an engine
        that drops finished rows from its batch passes the survivors' seed indices)."""
        vocab = scores.shape[1]
        u = torch.stack([torch.rand(vocab, generator=self.generators[i], device=scores.device, dtype=torch.float64)
                         for i in rows])
        # u in [0, 1): u = 0 gives −inf noise (never chosen), which is the correct limit
        gumbel = -torch.log(-torch.log(u))
        return (scores.double() / self.temperature + gumbel).to(scores.dtype)
