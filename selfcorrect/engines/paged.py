"""Transformers' continuous batching with paged attention (`init_continuous_batching`).

Rows are requests to a manager that keeps one running batch: a finished row leaves it at
once and a waiting one takes its place, prompts are prefilled in chunks alongside other
rows' decoding, and the keys/values live in pages of PAGE_SIZE tokens, so identical prompt
pages (the k samples of a problem) can be shared. Its place is a GPU, where transformers runs
it with flash or paged attention kernels; on a 2-core CPU a full SmolLM2 rollout ran at 0.74x
the hf engine's tokens/s (docs/PERFORMANCE.md), so `auto` never picks it.

What it cannot do, and so refuses rather than doing something else:
- per-row seeds (`--rollout.seeding problem`, the default on several processes): it samples
  with torch's global generator, which the manager reseeds from that generator's own stream
  at each call, so a seed fixes a call's samples but a row's draws depend on the whole batch;
- nucleus sampling (top_p < 1): its log-probs are those of the renormalised nucleus, not
  log softmax(z / T) as the engine contract (base.py) asks.
The manager generates in a thread of its own, which does not inherit the caller's autocast;
for a bf16 model the forward is wrapped in the caller's autocast for the call, so a LoRA run
on a bf16 base samples as the hf engine does (fp32 weights generate in fp32, see
_callers_autocast). A greedy call leaves torch's generators as it found them (the manager
reseeds the global one when it starts).
A fresh manager runs each call, with a cache sized for that call. Keeping one across the two
attempts would let attempt 2 share attempt 1's pages, but a restarted manager only accepts
requests once its loop runs, so its first batches (and with them which row takes which
random draw) would depend on thread timing.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch

from . import SEEDED
from .base import Generated, SamplingSettings, check_request, split_at_stop
from .hf import _own_generation_defaults, generation_config

PAGE_SIZE = 16  # small pages: more of a shared prompt fits in whole (shareable) pages
RESULT_WAIT_S = 1.0  # how long one poll for a finished request waits


def cache_pages(lengths: list[int], max_new_tokens: int, batch_size: int) -> int:
    """Pages the manager's cache needs: those of the batch_size longest rows at full length
    (at most batch_size rows run at once), plus two spare pages (rounding of the cache's
    allocation units when layers of several attention kinds share it)."""
    need = sorted(-(-(n + max_new_tokens) // PAGE_SIZE) for n in lengths)
    return sum(need[-batch_size:]) + 2


def batching_config(model_config, lengths: list[int], max_new_tokens: int, batch_size: int,
                    device: torch.device):
    """The ContinuousBatchingConfig of one call. Sized explicitly: by default transformers sizes
    the cache from the device's free memory, which on a CPU is the machine's RAM."""
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError as e:
        raise ValueError("the paged engine needs a transformers with continuous batching "
                         "(ContinuousBatchingConfig, 5.x); use another engine") from e

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    pages = cache_pages(lengths, max_new_tokens, batch_size)
    if "page_size" in fields:  # 5.24: num_blocks counts whole-model blocks
        size = {"page_size": PAGE_SIZE, "auto_switch_to_flash": False}  # keep the model's attention
    else:  # 5.17: blocks of one layer group each, and a row takes blocks in every group
        from transformers.generation.continuous_batching.cache import group_layers_by_attn_type

        size = {"block_size": PAGE_SIZE}
        pages *= len(group_layers_by_attn_type(model_config)[0])
    # tokens per forward: the attention masks grow with it times the cache length
    max_batch_tokens = 2048 if device.type == "cuda" else 512
    return ContinuousBatchingConfig(
        **size, num_blocks=pages, max_batch_tokens=max_batch_tokens, max_requests_per_batch=batch_size,
        allow_block_sharing=True, return_logprobs=True)


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
                             f"process, or another engine ({', '.join(SEEDED)})")
        if not settings.greedy and settings.top_p < 1.0:
            raise ValueError("the paged engine samples with top_p 1.0 only (under a nucleus it reports the "
                             "nucleus' log-probs, not log softmax(z / T)); use another engine for top_p < 1")
        if not hasattr(model, "init_continuous_batching"):
            raise ValueError(f"the paged engine needs a Hugging Face model with continuous batching, "
                             f"not {type(model).__name__}")
        stop_ids = frozenset(stop_ids)
        device = next(model.parameters()).device
        hf = model.init_continuous_batching.__self__  # the Hugging Face model under any wrapper (peft)
        gen_cfg = generation_config(settings, stop_ids=stop_ids, pad_id=pad_id)
        cb_cfg = batching_config(hf.config, [len(c) for c in contexts], settings.max_new_tokens, batch_size, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # transformers checks the cache against memory not reserved by torch
        cuda_rng = []  # fork_rng restores the CPU generator and these GPUs'
        if device.type == "cuda":
            cuda_rng = [torch.cuda.current_device() if device.index is None else device.index]
        with torch.random.fork_rng(devices=cuda_rng, enabled=settings.greedy), _callers_autocast(hf, device):
            outputs = _run(model, hf, [list(c) for c in contexts], gen_cfg, cb_cfg, settings.max_new_tokens)
        result = Generated([], [], [])
        for out in outputs:
            new, was_cut = split_at_stop(out.generated_tokens, stop_ids, settings.max_new_tokens)
            result.ids.append(new)
            result.cut.append(was_cut)
            result.logprobs.append(list(out.logprobs[:len(new)]))
        return result


@contextmanager
def _callers_autocast(hf, device: torch.device):
    """Run `hf`'s forward under the caller's autocast in whatever thread calls it, where the
    model's weights are in the autocast dtype (a bf16 base with fp32 adapters). The manager
    allocates its cache in the weights' dtype, so fp32 weights (full-weight training keeps fp32
    masters) generate in fp32: the engine log-prob gap the trainer logs shows that difference."""
    dtype = torch.get_autocast_dtype(device.type)
    if not torch.is_autocast_enabled(device.type) or hf.dtype != dtype:
        yield
        return
    own = hf.__dict__.get("forward")  # an instance-level forward (e.g. accelerate's hooks) is kept
    inner = hf.forward

    def forward(*args, **kwargs):
        with torch.autocast(device.type, dtype=dtype):
            return inner(*args, **kwargs)

    hf.forward = forward
    try:
        yield
    finally:
        if own is None:
            del hf.forward
        else:
            hf.forward = own


def _run(model, hf, contexts: list[list[int]], gen_cfg, cb_cfg, max_new_tokens: int) -> list:
    """The managers' outputs, in the order of `contexts`; raises if any request failed. Every
    request is queued before the manager's loop starts, so its batches do not depend on timing."""
    if getattr(hf, "_cached_continuous_batching_manager", None) is not None:
        raise ValueError("the model holds a persistent continuous batching manager (from other code), which "
                         "the paged engine would reuse with its settings; destroy it first "
                         "(model.destroy_cached_continuous_batching_manager())")
    attention = hf.config._attn_implementation
    finished = False
    ids: list[str] = []
    done: dict = {}
    with torch.no_grad(), _own_generation_defaults(model):
        manager = model.init_continuous_batching(generation_config=gen_cfg, continuous_batching_config=cb_cfg)
        try:
            ids = manager.add_requests(inputs=contexts, max_new_tokens=max_new_tokens)
            manager.start()
            while len(done) < len(ids):
                out = manager.get_result(timeout=RESULT_WAIT_S)
                if out is not None and out.is_finished():
                    done[out.request_id] = out
                elif out is None and not manager.is_running():
                    break
            finished = True
        finally:
            # on an error or interrupt, drop the pending rows instead of generating them first
            manager.stop(block=True, hard_stop=not finished)
            if hf.config._attn_implementation != attention:  # stop() restores it only if the loop started
                hf.set_attn_implementation(attention)
    failed = [f"{i}: {done[i].error}" for i in ids if i in done and done[i].error is not None]
    missing = [i for i in ids if i not in done]
    if failed or missing:
        raise RuntimeError(f"paged engine: {len(failed) + len(missing)} of {len(ids)} requests did not finish "
                           f"({'; '.join(failed[:3]) or 'the generation loop stopped'}); see the log above")
    return [done[i] for i in ids]
