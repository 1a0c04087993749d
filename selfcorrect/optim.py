"""Optimizer pieces shared by the RL loop and supervised fine-tuning.

- `adamw`: AdamW with weight decay on matrices only (decaying norms and biases hurts small models).
- `lr_factor`: linear warm-up, then constant or cosine decay.
- `fp32_master_weights`: trainable half-precision weights are kept in fp32 and the forward runs
  under autocast. Plain AdamW on bf16 weights rounds every update smaller than half a bf16
  step (≈ |w| / 256) to zero: at |w| ≈ 0.02 and lr 1e-5 most weights would never move.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .fp32_attention import fp32_attention

HALF = (torch.bfloat16, torch.float16)


def adamw(model, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay only on tensors with >= 2 dims.

    torch's fused kernel where every parameter is a plain CPU / CUDA float tensor: on a CPU torch
    otherwise loops over the tensors one op at a time (SmolLM2-135M: 0.59 s a step against
    0.09 s fused, measured on 2 cores). Sharded (DTensor) parameters keep torch's default."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=fused or None)


def lr_factor(step: int, total: int, warmup: int, schedule: str = "constant") -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warm-up over `warmup`
    steps, then flat ("constant") or cosine decay to 0 at `total` ("cosine")."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def fp32_master_weights(model) -> torch.dtype | None:
    """Upcast trainable bf16/fp16 parameters to fp32 in place; return the half dtype to run
    under autocast: the trainable parameters' half dtype, else that of frozen half weights (a
    bf16 LoRA base with fp32 adapters: without autocast the fp32 adapters and log-softmax pull
    the forward out of bf16), or None when the model is all fp32.

    Frozen parameters (a LoRA base) stay as they are: they are never updated."""
    half = {p.dtype for p in model.parameters() if p.requires_grad and p.dtype in HALF}
    if not half:
        frozen = {p.dtype for p in model.parameters() if p.dtype in HALF}
        return frozen.pop() if len(frozen) == 1 else None
    if len(half) > 1:
        raise ValueError(f"trainable parameters mix half dtypes {sorted(map(str, half))}")
    for p in model.parameters():
        if p.requires_grad and p.dtype in HALF:
            p.data = p.data.float()
    return half.pop()


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None, model=None):
    """Autocast to `dtype` on `device`, or a no-op when dtype is None (fp32 compute).

    With `model`, its peft LoRA layers stop casting their inputs to the adapters' fp32 dtype
    meanwhile: autocast chooses the matmul dtype anyway, and those casts copied every
    activation of every adapted layer to fp32 and back (on CPU, aten::copy_ was a fifth of a
    bf16 LoRA update). On a CPU the models' attention runs in fp32 meanwhile (fp32_attention.py:
    faster there, and more exact)."""
    if dtype is None:
        yield
        return
    # peft reads this flag in BaseTunerLayer._cast_input_dtype (peft.helpers.disable_input_dtype_casting)
    layers = [m for m in model.modules() if hasattr(m, "_cast_input_dtype")] if model is not None else []
    before = [getattr(m, "cast_input_dtype_enabled", True) for m in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        with torch.autocast(device_type=device.type, dtype=dtype), fp32_attention(device):
            yield
    finally:
        for layer, value in zip(layers, before):
            layer.cast_input_dtype_enabled = value
