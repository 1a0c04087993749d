"""How the policy is replicated over the ranks of a data-parallel run: not at all, DDP, or FSDP.

`Replicated` gives the training loop four things and hides which strategy is in use:
  * `train_model`: what the update's forwards go through (the DDP / FSDP wrapper, whose
    backward averages gradients over ranks; the bare model on one process);
  * `accumulate(sync)`: gradient accumulation — the collective runs only on the micro-batch
    with sync=True, so a step makes one gradient all-reduce however many micro-batches it has;
  * `generation()`: the module to call `generate` on. DDP's wrapper has no `generate`, so the
    underlying model; under FSDP the parameters are gathered for the whole generation, so the
    ranks' generate loops (which stop at different lengths) make no collectives;
  * `grad_scale`: DDP and FSDP average gradients over the N ranks. The loss of each rank is its
    share of the global loss (its token sum / the GLOBAL token count), so the global gradient is
    the SUM of the ranks' gradients: each rank multiplies its loss by N and the average is the sum.

The reference policy is never wrapped: it takes no gradient (DDP) — see fsdp.py for FSDP.
"""

from __future__ import annotations

import contextlib
import inspect

import torch

from . import distributed

STRATEGIES = ("ddp", "fsdp")


class Replicated:
    def __init__(self, model, strategy: str = "ddp"):
        if strategy not in STRATEGIES:
            raise ValueError(f"distributed.strategy {strategy!r} is not one of {STRATEGIES}")
        self.module = model
        self.world = distributed.world_size()
        # one process: nothing to replicate, except FSDP in a group of one (the 1-GPU smoke test)
        self.strategy = strategy if self.world > 1 or (strategy == "fsdp" and distributed.in_group()) else "none"
        self.grad_scale = float(self.world)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            # no buffer sync in forward: the buffers (rotary tables) are constants, and a buffer
            # broadcast in every forward would be one more collective the ranks must match
            # (torch >= 2.13 names the switch forward_sync_buffers; older ones broadcast_buffers)
            takes_new = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            no_sync_buffers = {"forward_sync_buffers" if takes_new else "broadcast_buffers": False}
            self.train_model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=False, **no_sync_buffers)
        elif self.strategy == "fsdp":
            from .fsdp import shard_model

            self.train_model = shard_model(model)
        else:
            self.train_model = model

    @contextlib.contextmanager
    def accumulate(self, sync: bool):
        """Backward passes inside keep their gradients local unless `sync`."""
        if self.strategy == "ddp" and not sync:
            with self.train_model.no_sync():
                yield
        elif self.strategy == "fsdp":
            self.train_model.set_requires_gradient_sync(sync)
            yield
        else:
            yield

    @contextlib.contextmanager
    def generation(self):
        """The module to call `generate` on (parameters gathered under FSDP)."""
        if self.strategy == "fsdp":
            from .fsdp import gathered

            with gathered(self.train_model):
                yield self.module
        else:
            yield self.module

    def clip_grad_norm(self, max_norm: float) -> float:
        """Clip the (already averaged) gradients; return the global norm before clipping."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        return float(norm)


@contextlib.contextmanager
def generation_view(model):
    """`model` ready for `generate`: an FSDP-sharded model (e.g. a trained policy handed to
    evaluation) has its parameters gathered meanwhile; any other model is used as it is."""
    from torch.distributed.fsdp import FSDPModule

    if any(isinstance(m, FSDPModule) for m in model.modules()):
        from .fsdp import gathered

        with gathered(model):
            yield model
    else:
        yield model
