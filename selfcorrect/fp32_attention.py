"""On a CPU, attention in fp32 while the rest of the forward runs under bf16 / fp16 autocast.

Autocast puts `scaled_dot_product_attention` on its half-precision list, so every call casts
the query, keys and values to bf16 first. In a Llama-style model the query and keys leave the
rotary embedding in fp32 (its cos / sin are fp32 when the residual stream is, as with fp32
master weights), so a decode step casts each layer's whole key cache, and on a CPU that cast
costs more than the attention itself: a 16-row SmolLM2 decode step's attention took 0.7 ms a
layer under autocast against 0.2 ms in fp32, a third of a bf16 rollout; in the update the fp32
attention's forward and backward are faster too (docs/PERFORMANCE.md,
`benchmarks/cpu_attention_speed.py`). fp32 is also the more exact of the two, so on a CPU the
model's "sdpa" attention runs outside autocast, in the widest dtype of its inputs (bf16 inputs
stay bf16: a bf16 LoRA base's attention is what it was). Its result goes into the output
projection, which autocast runs in bf16 as before.

How: within `fp32_attention(device)` transformers' "sdpa" entry of its attention registry (the
function every Hugging Face model calls through `config._attn_implementation`) is wrapped,
process-wide, and put back after the block. optim.autocast enters it, so the trainer's rollouts
(every in-process engine) and log-prob passes compute attention the same way and the engine
log-prob gap stays a rounding difference. GPUs keep autocast's half-precision attention (their
flash kernels want it). Other attention implementations (eager, paged, flash) are untouched.
"""

from __future__ import annotations

import contextlib
import functools

import torch

ENABLED = True  # benchmarks/cpu_attention_speed.py turns it off to time autocast's attention
_MARK = "_selfcorrect_fp32_attention"


@contextlib.contextmanager
def fp32_attention(device: torch.device):
    """Within the block, on a CPU, models' "sdpa" attention runs outside autocast (see the module doc)."""
    registry = _registry() if device.type == "cpu" and ENABLED else None
    current = registry.get("sdpa") if registry is not None else None
    if current is None or getattr(current, _MARK, False):  # not a CPU, no transformers, or already inside
        yield
        return
    registry["sdpa"] = _outside_autocast(current)  # an instance-local override of the class-wide entry
    try:
        yield
    finally:
        if current is type(registry)._global_mapping.get("sdpa"):
            del registry["sdpa"]  # drops the local override only
        else:
            registry["sdpa"] = current


def _registry():
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return None
    return ALL_ATTENTION_FUNCTIONS


def _outside_autocast(attend):
    @functools.wraps(attend)
    def fp32_attend(module, query, key, value, attention_mask, *args, **kwargs):
        if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return attend(module, query, key, value, attention_mask, *args, **kwargs)
        dtype = functools.reduce(torch.promote_types, (query.dtype, key.dtype, value.dtype))
        if attention_mask is not None and attention_mask.is_floating_point():  # additive: the query's dtype
            attention_mask = attention_mask.to(dtype)
        with torch.autocast("cpu", enabled=False):
            return attend(module, query.to(dtype), key.to(dtype), value.to(dtype), attention_mask, *args, **kwargs)

    setattr(fp32_attend, _MARK, True)
    return fp32_attend
