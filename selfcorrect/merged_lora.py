"""Generation from a LoRA policy with each adapter folded into its layer's weight.

A peft LoRA layer computes W x + s B (A x): two extra small products, a scale and an add per
adapted layer and forward. In a decode step of a small model those are as many operator calls
as the layer's own work, and each costs its fixed overhead (on 2 CPU cores SmolLM2's LoRA
rollout took 5.3 s where the same rollout with full weights took 3.0 s). Within
`merged_lora(model)` each plain LoRA Linear computes with one weight, W + s B A, made once on
entry (a [out, r] x [r, in] product and an add per layer): the same function up to rounding,
one product per layer (cpu_linear.linear: on a CPU inside an `onednn_linears` block, oneDNN's,
with the folded weight packed once). The weights live only for the block: a rollout holds one extra copy of
the adapted layers' weights, the update none.

Only what is equal by construction is folded: a peft `lora.Linear` over a plain nn.Linear, its
adapters active and unmerged, plain LoRA (no DoRA or other variant, no LoRA bias, no dropout
acting: the layer in eval mode, as the trainer samples, or dropout 0). Anything else
(other layer kinds, quantized bases, sharded weights) keeps peft's forward, layer by layer.
Inside the block, a layer whose adapters are switched off (`disable_adapter()`: the reference)
or a call with per-row adapters (`adapter_names=`) also takes peft's forward. The adapter
must not change inside the block: the folded weight is made on entry (a rollout runs between
two optimizer steps).

On CUDA the static engine compiles its decode step (CUDA graphs); there the folded weights are
the graph's inputs, made anew each rollout, and whether that costs a copy per step is not
measured yet (no GPU has run this).

Rounding: the folded weight is stored in the base weight's dtype. With an fp32 base that is a
rounding of the fp32 sum (relative 1e-7); with a bf16 base, s B A is rounded into bf16 with W,
so the sampler's policy differs from the one the update scores by about what bf16 activations
already do (the trainer logs the gap: `engine_gap_*`); `--rollout.merge_lora` decides.
"""

from __future__ import annotations

import contextlib

import torch

from .cpu_linear import linear


def _lora_linear_class():
    try:
        from peft.tuners.lora import Linear
    except ImportError:
        return None
    return Linear


def foldable(layer) -> bool:
    """Whether `layer` is a peft LoRA Linear whose active adapters fold exactly into W + s B A."""
    lora_linear = _lora_linear_class()
    if lora_linear is None or type(layer) is not lora_linear or layer.merged or layer.disable_adapters:
        return False
    base = layer.base_layer
    if type(base) is not torch.nn.Linear or base._forward_hooks or base._forward_pre_hooks \
            or hasattr(base, "_hf_hook") or type(base.weight.data) is not torch.Tensor:
        return False
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    return bool(active) and not any(_not_plain(layer, a) for a in active)


def _not_plain(layer, adapter: str) -> bool:
    """Whether `adapter` computes more than s B A x: a variant (DoRA: `lora_variant` on peft >=
    0.15, `use_dora` before), a LoRA bias, or dropout that acts (a layer in training mode)."""
    return (adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(adapter)
            or getattr(layer, "lora_bias", {}).get(adapter)
            or (layer.training and not isinstance(layer.lora_dropout[adapter], torch.nn.Identity)))


def folded_weight(layer) -> torch.Tensor:
    """W + Σ_active s B A, [out, in], in the base weight's dtype (peft's own delta: fan-in/out
    layouts and scaling as peft defines them)."""
    weight = layer.base_layer.weight
    with torch.no_grad():
        delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
        return (weight.float() + delta.float()).to(weight.dtype)  # summed in fp32, rounded once


@contextlib.contextmanager
def merged_lora(model, enabled: bool = True, engine: str = "auto"):
    """Within the block, every foldable LoRA layer of `model` computes with its folded weight.
    engine: the rollout engine's name; vllm never runs the model's forward (it copies the
    weights with the adapters merged its own way), so nothing is folded for it."""
    layers = [m for m in model.modules() if foldable(m)] if enabled and engine != "vllm" else []
    weights = [folded_weight(layer) for layer in layers]  # before switching: a failure leaves them as they were
    for layer, weight in zip(layers, weights):
        layer.__class__ = _merged_class(type(layer))
        layer.folded_weight = weight
    try:
        yield
    finally:
        for layer in layers:
            layer.__class__ = layer.__class__.__bases__[0]
            del layer.folded_weight


_CLASSES: dict[type, type] = {}


def _merged_class(lora_linear: type) -> type:
    """One subclass per peft Linear class, made once: a stable class, so a compiled decode step
    (the static engine on CUDA) is traced once, not at every rollout."""
    if lora_linear not in _CLASSES:
        def forward(self, x, *args, **kwargs):
            if self.disable_adapters or kwargs.get("adapter_names") is not None:
                return lora_linear.forward(self, x, *args, **kwargs)
            return linear(x, self.folded_weight, self.base_layer.bias)

        _CLASSES[lora_linear] = type("MergedLoraLinear", (lora_linear,), {"forward": forward, "__module__": __name__})
    return _CLASSES[lora_linear]
