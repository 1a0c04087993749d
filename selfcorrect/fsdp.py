"""FSDP (FULL_SHARD) for policies that do not fit on one device: torch's FSDP2 `fully_shard`.

Each decoder block (the model's `_no_split_modules`) and then the whole model become FSDP
units: parameters, gradients and AdamW state are sharded over the ranks, and a unit's full
parameters exist only while it runs (all-gathered before its forward and backward, gradients
reduce-scattered after). The full-weight reference copy is sharded the same way (frozen).

Three places need more than the training forward:
  * generation: the ranks' `generate` loops stop at different lengths, so per-unit all-gathers
    inside them would not match. `gathered` all-gathers every unit once and keeps it unsharded
    for the whole generation (memory of one full model while generating), then reshards;
  * checkpoints and the final model: `full_state` gathers full tensors to rank 0 (a collective
    every rank joins), `restore_full_state` loads them back into the shards;
  * every rank must run the same number of forwards and backwards per step: the trainer's
    zero-weight dummy micro-batches guarantee it (train.py).

Works on CPU (gloo) and GPU (NCCL) with torch >= 2.6. LoRA under FSDP is not supported (the
adapter is small: use DDP, whose reference is the same weights with the adapter disabled).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from . import distributed
from .optim import autocast


def _fsdp():
    from torch.distributed.fsdp import FSDPModule, fully_shard

    return FSDPModule, fully_shard


def _blocks(model) -> list[torch.nn.Module]:
    """The repeated blocks to shard one by one (a transformers model names their classes)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    if not names:
        raise ValueError(f"distributed.strategy fsdp: {type(model).__name__} does not name its blocks "
                         "(_no_split_modules); use ddp")
    return [m for m in model.modules() if type(m).__name__ in names]


def _warm_up(model, compute_dtype: torch.dtype | None = None) -> None:
    """One tiny forward through the root so FSDP finds its root unit now, on every rank together
    (it would otherwise do it on the first forward, which may be inside `gathered`). Under the
    training's autocast: a reference of mixed dtypes (match_master_precision) needs it."""
    device = next(model.parameters()).device
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    with torch.no_grad(), autocast(device, compute_dtype):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    # the root keeps its parameters gathered after a forward: give the shards back, so that the
    # optimizer (made next) holds the sharded parameters
    for unit in _units(model):
        unit.reshard()


def shard_model(model, compute_dtype: torch.dtype | None = None):
    """FULL_SHARD `model` in place (blocks, then the root); returns it. compute_dtype: the
    autocast dtype its forwards run under (None: fp32)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        raise ValueError("distributed.strategy fsdp does not take LoRA (model.lora true); LoRA trains a small "
                         "adapter: use distributed.strategy ddp")
    _, fully_shard = _fsdp()
    for block in _blocks(model):
        fully_shard(block)
    fully_shard(model)
    _warm_up(model, compute_dtype)
    return model


def shard_reference(reference, compute_dtype: torch.dtype | None = None) -> None:
    """Shard the frozen full-weight reference copy like the policy (LoRA has no copy)."""
    if reference.model is not None:
        shard_model(reference.model, compute_dtype)


def _units(model) -> list:
    FSDPModule, _ = _fsdp()
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model):
    """Every FSDP unit of `model` unsharded (all-gathered once) until the block ends.

    Each unit keeps its parameters after its forwards meanwhile, so `generate` makes no
    collectives and the ranks may generate different numbers of tokens."""
    units = _units(model)
    root = model if any(unit is model for unit in units) else None
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            # FSDP2's own default: reshard after forward except at the root
            unit.set_reshard_after_forward(unit is not root, recurse=False)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(replicated, optimizer) -> dict:
    """{"weights", "optimizer_state"}: full tensors on rank 0 (empty elsewhere). A collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = replicated.module
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    weights = get_model_state_dict(model, options=_options())
    optim = get_optimizer_state_dict(model, optimizer, options=_options())
    weights = {name: t.contiguous() for name, t in weights.items() if name in trainable}
    return {"weights": weights, "optimizer_state": optim}


def restore_full_state(replicated, optimizer, weights: dict, optimizer_state: dict) -> None:
    """Load full tensors (read by every rank from the checkpoint) into this rank's shards."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, strict=False)
    model = replicated.module
    unknown = set(weights) - {name for name, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"checkpoint weights do not match the model: unknown {sorted(unknown)[:3]}")
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def save_final_sharded(replicated, tokenizer, folder: Path) -> None:
    """The final model as one Hugging Face folder, written by rank 0 from the gathered weights."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from .atomic import atomic_folder

    model = replicated.module
    full = get_model_state_dict(model, options=_options())  # a collective
    # a tied weight (lm_head = embeddings) appears under both names here; keep the one name
    # named_parameters gives it, as save_pretrained does for an unsharded model
    names = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    full = {name: tensor for name, tensor in full.items() if name in names}

    def write() -> None:
        with atomic_folder(folder) as tmp:
            model.save_pretrained(tmp, state_dict=full)
            tokenizer.save_pretrained(tmp)

    distributed.on_main(write)
