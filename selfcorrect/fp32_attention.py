"""On a CPU, attention in fp32 while the rest of the forward runs under bf16 / fp16 autocast.

Autocast puts `scaled_dot_product_attention` on its half-precision list, so every call casts
the query, keys and values to bf16 first. In a Llama-style model trained on fp32 master weights
the query and keys leave the rotary embedding in fp32 (its cos / sin follow the fp32 residual
stream) while the values come out of a bf16 product, so a decode step cast each layer's whole
key cache, and on a CPU that cast cost more than the attention itself: a 16-row SmolLM2 decode
step's attention took 0.7 ms a layer under autocast against 0.2 ms here (fp32, with the value
cache upcast instead: bf16 -> fp32 is the cheaper cast), a third of a bf16 rollout; in the
update the fp32 attention's forward and backward are faster too (docs/PERFORMANCE.md,
`benchmarks/cpu_attention_speed.py`). fp32 is also the more exact of the two, so on a CPU the
models' "sdpa" attention runs outside autocast, in the widest dtype of its inputs (bf16 inputs
stay bf16: a bf16 LoRA base's attention is what it was). Its result goes into the output
projection, which autocast runs in bf16 as before.

How: while any `fp32_attention(device)` block is open, transformers' "sdpa" entry of its
attention registry (the function every Hugging Face model calls through
`config._attn_implementation`) is wrapped, process-wide (a count of open blocks, so nested
blocks and blocks in several threads share one wrapper, put back when the last one closes);
the wrapper acts only where CPU autocast is on at the call. optim.autocast enters it, so the
trainer's rollouts (every in-process engine) and log-prob passes compute attention the same
way and the engine log-prob gap stays a rounding difference; the trainer also runs its
backward inside a block, where gradient checkpointing recomputes the forward. GPUs keep
autocast's half-precision attention (their flash kernels want it). Other attention
implementations (eager, paged, flash) are untouched. An "sdpa" function registered while a
block is open takes effect once the last block closes.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch

ENABLED = True  # benchmarks/cpu_attention_speed.py turns it off to time autocast's attention
_LOCK = threading.Lock()
_OPEN = {"blocks": 0, "before": None}  # open blocks; the "sdpa" entry found by the first one


@contextlib.contextmanager
def fp32_attention(device: torch.device):
    """While the block is open, on a CPU, models' "sdpa" attention runs outside autocast (see the module doc)."""
    registry = _registry() if device.type == "cpu" and ENABLED else None
    if registry is None or registry.get("sdpa") is None:  # not a CPU, switched off, or no transformers
        yield
        return
    with _LOCK:
        if _OPEN["blocks"] == 0:
            _OPEN["before"] = _local_entry(registry)
            registry["sdpa"] = _outside_autocast(registry["sdpa"])  # an instance-local override
        _OPEN["blocks"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _OPEN["blocks"] -= 1
            if _OPEN["blocks"] == 0:
                before, _OPEN["before"] = _OPEN["before"], None
                if before is None:
                    del registry["sdpa"]  # drops the local override: the class-wide entry shows again
                else:
                    registry["sdpa"] = before


def _registry():
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return None
    return ALL_ATTENTION_FUNCTIONS


def _local_entry(registry):
    """The registry instance's own "sdpa" override (a user's), or None where it reads the class-wide one."""
    return registry._local_mapping.get("sdpa")


def _outside_autocast(attend):
    @functools.wraps(attend)
    def fp32_attend(module, query, key, value, attention_mask, *args, **kwargs):
        if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
            return attend(module, query, key, value, attention_mask, *args, **kwargs)
        dtype = functools.reduce(torch.promote_types, (query.dtype, key.dtype, value.dtype))
        # additive masks, position biases, sinks: operands of the same product, so the same dtype
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.to(dtype)
        kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                  for k, v in kwargs.items()}
        with torch.autocast("cpu", enabled=False):
            return attend(module, query.to(dtype), key.to(dtype), value.to(dtype), attention_mask, *args, **kwargs)

    return fp32_attend
