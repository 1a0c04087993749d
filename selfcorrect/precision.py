"""Logits in fp32 while the rest of the forward runs under bf16 / fp16 autocast.

Under autocast the output layer is a half-precision matrix product whose result, the logits,
is rounded to 8 significant bits: a logit of 20 moves by up to 0.06. A SCoRe update reads
log-probs, and its KL term a difference of two log-probs that is often a few hundredths, so
that rounding is of the size of what is measured. On SmolLM2 two LoRA steps from its
reference (fp32 KL 7.2e-4 a token), bf16 autocast logged a KL 3.2x too large, 2.0x with the
output layer in fp32, for 0-14% of a bf16 log-prob pass and no slower a rollout
(benchmarks/logprob_precision.py, docs/PERFORMANCE.md). The rest of the error is the bf16
transformer body's.

`fp32_logits(model)` makes the model's output layer compute its product in fp32 while the
block runs: used for the trainer's log-probs (policy and reference) and for the rollout, so
the engines sample from the distribution the trainer scores. Its backward stays in the
autocast dtype, as autocast's own would be: only the logits are made exact, not the gradient
arithmetic. Outside autocast (fp32 runs) nothing changes. Only a plain nn.Linear output layer
is switched (not one peft adapts or accelerate hooks), by giving it a subclass for the block:
a stable class and forward, so compiled decode steps (the static engine on CUDA) are not
retraced each rollout. A frozen half-precision output layer (a LoRA base or a reference
loaded in bf16) gets one fp32 copy, kept while that weight lives and is unchanged (V x H x 4
bytes: 113 MB for SmolLM2). On CUDA the block allows TF32 for fp32 products (10-bit operands,
fp32 result): the rounding of the result is what matters most here, and a full-fp32 product is
many times slower on GPUs; under autocast no other product of the block runs in fp32.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .engines.cpu_output_layer import onednn_available, onednn_linear

# frozen half-precision weight -> (its _version when copied, the fp32 copy)
_FP32_COPIES = WeakIdKeyDictionary()  # by identity: tensors compare element-wise


@contextlib.contextmanager
def fp32_logits(model, enabled: bool = True):
    """Within the block, `model`'s output layer runs in fp32 whenever autocast is on."""
    head = _plain_output_layer(model) if enabled else None
    if head is None:
        yield
        return
    weight = head.weight
    frozen_half = weight.dtype != torch.float32 and not weight.requires_grad and type(weight.data) is torch.Tensor
    head.__class__ = Fp32OutputLayer
    head.fp32_weight = as_fp32(weight) if frozen_half else None  # else read at each call (FSDP gathers it)
    try:
        with _tf32_allowed(weight.device.type):
            yield
    finally:
        head.__class__ = torch.nn.Linear
        del head.fp32_weight


class Fp32OutputLayer(torch.nn.Linear):
    """The class an output nn.Linear has inside `fp32_logits`."""

    fp32_weight: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kind = hidden.device.type
        if not torch.is_autocast_enabled(kind):
            return super().forward(hidden)
        weight = self.fp32_weight if self.fp32_weight is not None else self.weight
        bias = None if self.bias is None else self.bias.float()
        if kind == "cpu" and not torch.is_grad_enabled() and onednn_available():
            return onednn_linear(hidden.float(), weight.float(), bias)  # generation's faster kernel
        return Fp32Product.apply(hidden, weight, bias, torch.get_autocast_dtype(kind))


class Fp32Product(torch.autograd.Function):
    """hidden [..., H] x weight [V, H]^T (+ bias [V]) -> [..., V] computed and returned in fp32;
    the backward's products in `grad_dtype` (the autocast dtype), gradients in the inputs' dtypes."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, grad_dtype):
        ctx.save_for_backward(hidden, weight)
        ctx.grad_dtype, ctx.bias_dtype = grad_dtype, None if bias is None else bias.dtype
        with torch.autocast(hidden.device.type, enabled=False):
            return F.linear(hidden.float(), weight.float(), bias)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight = ctx.saved_tensors
        g = grad_out.to(ctx.grad_dtype)
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (g @ weight.to(ctx.grad_dtype)).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            rows = g.reshape(-1, g.shape[-1])
            grad_weight = (rows.T @ hidden.reshape(-1, hidden.shape[-1]).to(ctx.grad_dtype)).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None


def match_master_precision(reference) -> None:
    """Make a frozen half-precision reference copy compute as its policy does once the policy's
    weights are fp32 masters under autocast (optim.fp32_master_weights).

    Autocast casts what nn.Linear multiplies to bf16, so the copy's Linear weights can stay in
    bf16 (the masters' values, rounded the same way). Everything else is used as it is stored:
    a bf16 embedding table starts a bf16 residual stream where the policy's fp32 one starts an
    fp32 stream, and every residual addition then rounds differently. That made the KL of a
    full-weight bf16 run's first step 1.4e-3 on SmolLM2 where policy and reference are the same
    model (0 in fp32). So parameters owned by anything but nn.Linear modules are upcast (the
    embeddings, tied output layer included, and the norms): a few percent of the weights."""
    owners: dict[int, list[torch.nn.Module]] = {}
    for module in reference.modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(module)
    for p in reference.parameters():
        if p.dtype in (torch.bfloat16, torch.float16) and not all(
                isinstance(m, torch.nn.Linear) for m in owners[id(p)]):
            p.data = p.data.float()


def as_fp32(weight: torch.Tensor) -> torch.Tensor:
    """A frozen weight in fp32: itself if it is, else a copy kept while it is unchanged."""
    if weight.dtype == torch.float32:
        return weight
    kept = _FP32_COPIES.get(weight)
    if kept is None or kept[0] != weight._version:
        kept = (weight._version, weight.detach().float())
        _FP32_COPIES[weight] = kept
    return kept[1]


def _plain_output_layer(model):
    """The output nn.Linear of a Hugging Face model (under DDP / peft wrappers), or None where
    it is something else (a subclass, or switched already) or something replaced its forward
    (accelerate's hooks, engines.cpu_output_layer)."""
    inner = getattr(model, "module", model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if get is not None else None
    if type(head) is not torch.nn.Linear or "forward" in vars(head):
        return None
    return head


@contextlib.contextmanager
def _tf32_allowed(kind: str):
    if kind != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 has fp32_precision ("ieee" / "tf32"); mixing it with allow_tf32 warns
    name, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, before)
