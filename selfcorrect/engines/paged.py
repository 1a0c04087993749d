"""Transformers' continuous batching with paged attention (`init_continuous_batching`).

Rows are requests to a manager that keeps one running batch: a finished row leaves it at
once and a waiting one takes its place, prompts are prefilled in chunks alongside other
rows' decoding, and the keys/values live in pages of PAGE_SIZE tokens, so identical prompt
pages (the k samples of a problem) can be shared. Its place is a GPU, where transformers runs
it with flash or paged attention kernels; on a 2-core CPU it was measured 3-4x slower per
token than the cached engine (docs/PERFORMANCE.md), so `auto` never picks it.

What it cannot do, and so refuses rather than doing something else:
- per-row seeds (`--rollout.seeding problem`, the default on several processes): it samples
  with torch's global generator, which the manager reseeds from that generator's own stream
  at each call, so a seed fixes a call's samples but a row's draws depend on the whole batch;
- nucleus sampling (top_p < 1): its log-probs are those of the renormalised nucleus, not
  log softmax(z / T) as the engine contract (base.py) asks.
A fresh manager runs each call, with a cache sized for that call. Keeping one across the two
attempts would let attempt 2 share attempt 1's pages, but a restarted manager only accepts
requests once its loop runs, so its first batches (and with them which row takes which
random draw) would depend on thread timing.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import Generated, SamplingSettings, check_request, split_at_stop
from .hf import _own_generation_defaults, generation_config

PAGE_SIZE = 16  # small pages: more of a shared prompt fits in whole (shareable) pages
RESULT_WAIT_S = 1.0  # how long one poll for a finished request waits


def cache_pages(lengths: list[int], max_new_tokens: int, batch_size: int) -> int:
    """Pages the manager's cache needs: those of the batch_size longest rows at full length
    (at most batch_size rows run at once), plus one spare page."""
    need = sorted(-(-(n + max_new_tokens) // PAGE_SIZE) for n in lengths)
    return sum(need[-batch_size:]) + 1


def batching_config(lengths: list[int], max_new_tokens: int, batch_size: int, device: torch.device):
    """The ContinuousBatchingConfig of one call. Sized explicitly: by default transformers sizes
    the cache from the device's free memory, which on a CPU is the machine's RAM."""
    from transformers import ContinuousBatchingConfig

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    page = {"page_size": PAGE_SIZE} if "page_size" in fields else {"block_size": PAGE_SIZE}  # renamed in 5.17+
    # tokens per forward: the attention masks grow with it times the cache length
    max_batch_tokens = 2048 if device.type == "cuda" else 512
    return ContinuousBatchingConfig(
        **page, num_blocks=cache_pages(lengths, max_new_tokens, batch_size), max_batch_tokens=max_batch_tokens,
        max_requests_per_batch=batch_size, allow_block_sharing=True, return_logprobs=True)


class PagedGenerate:
    name = "paged"

    def reset(self) -> None:
        pass  # nothing outlives a call

    def generate(self, model, contexts, settings: SamplingSettings, *, stop_ids, pad_id: int,
                 batch_size: int, row_seeds: list[int] | None = None) -> Generated:
        check_request(contexts, settings, row_seeds)
        if row_seeds is not None and not settings.greedy:
            raise ValueError("the paged engine cannot seed rows one by one (transformers' continuous batching "
                             "samples with one generator for the batch); use --rollout.seeding stream on one "
                             "process, or another engine (cached, hf, static)")
        if not settings.greedy and settings.top_p < 1.0:
            raise ValueError("the paged engine samples with top_p 1.0 only (under a nucleus it reports the "
                             "nucleus' log-probs, not log softmax(z / T)); use another engine for top_p < 1")
        if not hasattr(model, "init_continuous_batching"):
            raise ValueError(f"the paged engine needs a Hugging Face model with continuous batching, "
                             f"not {type(model).__name__}")
        stop_ids = frozenset(stop_ids)
        device = next(model.parameters()).device
        gen_cfg = generation_config(settings, stop_ids=stop_ids, pad_id=pad_id)
        cb_cfg = batching_config([len(c) for c in contexts], settings.max_new_tokens, batch_size, device)
        outputs = _run(model, [list(c) for c in contexts], gen_cfg, cb_cfg, settings.max_new_tokens)
        result = Generated([], [], [])
        for out in outputs:
            new, was_cut = split_at_stop(out.generated_tokens, stop_ids, settings.max_new_tokens)
            result.ids.append(new)
            result.cut.append(was_cut)
            result.logprobs.append(list(out.logprobs[:len(new)]))
        return result


def _run(model, contexts: list[list[int]], gen_cfg, cb_cfg, max_new_tokens: int) -> list:
    """The managers' outputs, in the order of `contexts`; raises if any request failed. Every
    request is queued before the manager's loop starts, so its batches do not depend on timing."""
    with torch.no_grad(), _own_generation_defaults(model):
        manager = model.init_continuous_batching(generation_config=gen_cfg, continuous_batching_config=cb_cfg)
        try:
            ids = manager.add_requests(inputs=contexts, max_new_tokens=max_new_tokens)
            manager.start()
            done: dict = {}
            while len(done) < len(ids):
                out = manager.get_result(timeout=RESULT_WAIT_S)
                if out is not None and out.is_finished():
                    done[out.request_id] = out
                elif out is None and not manager.is_running():
                    break
        finally:
            manager.stop(block=True)
    failed = [f"{i}: {done[i].error}" for i in ids if i in done and done[i].error is not None]
    missing = [i for i in ids if i not in done]
    if failed or missing:
        raise RuntimeError(f"paged engine: {len(failed) + len(missing)} of {len(ids)} requests did not finish "
                           f"({'; '.join(failed[:3]) or 'the generation loop stopped'}); see the log above")
    return [done[i] for i in ids]
