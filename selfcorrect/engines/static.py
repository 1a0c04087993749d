"""Hugging Face `generate` with a static (preallocated) key/value cache, in a few fixed shapes.

On CUDA, transformers compiles the decode step of a model that generates into a static cache
(torch.compile, mode "reduce-overhead": CUDA graphs), which removes the per-layer launch and
Python overhead that dominates decoding a small model; the issue's H200 anchor for a 0.5B model
is 3.8k tokens/s with the dynamic cache and 21.6k with the static cache compiled. A compiled
graph serves one shape, so batches are brought to a few: rows to the next power of two (at most
the batch size; filler rows repeat the first row and are dropped) and contexts left-padded to a
multiple of WIDTH_BUCKET tokens. (The cache is context + max_new_tokens long, or longer: newer
transformers allocate the longest length used so far, to the same end.)

Elsewhere (CPU) transformers does not compile and this is the hf engine with a preallocated
cache: the same results (tests/test_engines.py), no faster. Unlike the cached engine it keeps
finished rows in the batch and re-reads [x, y1, p] for attempt 2.
"""

from __future__ import annotations

import torch

from .hf import HFGenerate

WIDTH_BUCKET = 64  # context lengths are padded to a multiple of this


def bucket_rows(n: int, batch_size: int) -> int:
    """The row count a batch of n rows is generated as: the next power of two, capped at batch_size."""
    return min(1 << max(n - 1, 0).bit_length(), max(batch_size, n))


def bucket_width(width: int) -> int:
    return -(-width // WIDTH_BUCKET) * WIDTH_BUCKET


class StaticCacheGenerate(HFGenerate):
    name = "static"

    def _config(self, gen_cfg):
        gen_cfg.cache_implementation = "static"
        return gen_cfg

    def _batch(self, chunk, seeds, pad_id: int, batch_size: int):
        ids, mask, seeds = super()._batch(chunk, seeds, pad_id, batch_size)
        fill = bucket_rows(len(chunk), batch_size) - len(chunk)
        extra = bucket_width(ids.shape[1]) - ids.shape[1]
        ids = torch.cat([ids, ids[:1].expand(fill, -1)])
        mask = torch.cat([mask, mask[:1].expand(fill, -1)])
        ids = torch.nn.functional.pad(ids, (extra, 0), value=pad_id)
        mask = torch.nn.functional.pad(mask, (extra, 0), value=0)
        if seeds is not None:
            seeds = list(seeds) + [seeds[0]] * fill
        return ids, mask, seeds
