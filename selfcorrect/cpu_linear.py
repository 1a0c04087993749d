"""A model's linear layers on a CPU through oneDNN, with weights packed once per rollout.

torch runs an fp32 `F.linear` on a CPU through MKL's sgemm. On the AMD EPYC with AVX-512 this
project measured (2026-12-07, 2 threads, SmolLM2's layer shapes), oneDNN's inner product
(`torch.ops.mkldnn._linear_pointwise`, the kernel torch.compile's CPU backend uses) ran the
same fp32 products 1.6-2.3x faster: the forward at 1,600 rows 1.65 s -> 1.00 s for the 210
layer products, the input gradient 1.60 -> 0.93 s, the weight gradient 1.57 -> 1.03 s, and a
16-row decode step's products 41 -> 24 ms (docs/PERFORMANCE.md). On the AVX2 EPYCs of earlier
sessions oneDNN was no faster than MKL in the update, so `auto` uses it for the update only
where torch reports AVX-512 (`torch.backends.cpu.get_cpu_capability()`). On a second AVX-512
EPYC (family 25, model 17) the update gained 1.01x and a rollout 1.40x: harmless, so no finer
rule. bf16 products already run through oneDNN (MKL has none), so under bf16 autocast nothing
changes in a forward with gradients.

A rollout multiplies the same weights at every decode step; oneDNN's kernels want them in a
blocked layout, and a plain weight is reordered inside every call. `pack=True` blocks (the
trainer's rollouts, the SFT baselines' sampling, evaluation) reorder each weight once, on its
first use in the block (`_reorder_linear_weight`), in the dtype the product runs in: 16-row
decode products 24 -> 18 ms in fp32, 16 -> 10 ms in bf16 (bitwise the same results as unpacked
oneDNN). The packed copies live only for the block; a weight changed in place inside it is
packed again.

What changes numerically: oneDNN sums in another order than MKL, so fp32 results differ in the
last bits (relative 1.2e-6 against float64 on a 1,536-long dot product, MKL's 3.5e-7), as any
change of kernel does; bf16 results are the same kernel's. Samples drawn at T = 1 follow other
paths after such a difference, so runs repeat exactly on one machine kind, as before.

How: within `onednn_linears(model)` every plain `nn.Linear` of the model computes through
`linear()`, and merged_lora's folded layers call `linear()` themselves. The output layer is one
of them unless precision.fp32_logits has made it its own (fp32 logits under autocast, entered
first), whose product is oneDNN's already. In the fp32 update the output layer's forward at the
scored positions ([900, 576] x [576, 49152]) took 307 ms with MKL and 151 with oneDNN; its
weight gradient stays MKL's (VOCABULARY_SIZED). `linear()` is `F.linear` outside a block and for
anything it does not cover: another device, a sharded (DTensor) weight, an empty batch, fp16, or
autocast with gradients.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import platform
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

MODES = ("auto", "onednn", "torch")
PHASES = ("rollout", "update")
# a weight gradient of a layer with more outputs than this (an output layer: [V, n] x [n, H]) stays
# MKL's: through oneDNN it cost SmolLM2's update 1.1 s more than it saved (a transposed copy of
# the [n, V] logits' gradient; the shared prompts' 4-row call took 1.7 s in a profile)
VOCABULARY_SIZED = 16384


def wanted(device: torch.device, mode: str, phase: str = "update") -> bool:
    """Whether `mode` (model.cpu_linear) routes `phase`'s linears through oneDNN on `device`.
    phase "rollout": generation without gradients (rollouts, sampling, evaluation; weights
    packed); "update": log-probs with gradients and the backward. `auto`: both where torch
    reports AVX-512; rollouts alone where it reports AVX2 (packed products there ran a rollout
    1.25x faster, unpacked ones an update 0.9x torch's: docs/PERFORMANCE.md)."""
    if mode not in MODES:
        raise ValueError(f"cpu_linear must be one of {MODES}, got {mode!r}")
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    if device.type != "cpu" or mode == "torch" or not available():
        return False
    capability = torch.backends.cpu.get_cpu_capability()
    return mode == "onednn" or capability == "AVX512" or (phase == "rollout" and capability == "AVX2")


def describe(device: torch.device, mode: str) -> str:
    """What `mode` picks on `device`, for benchmarks' records: "onednn", "torch", or
    "onednn rollouts, torch update"."""
    rollout, update = wanted(device, mode, "rollout"), wanted(device, mode)
    return "onednn" if update else "onednn rollouts, torch update" if rollout else "torch"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name with its family and model numbers, e.g. "AMD EPYC (family 25, model 17)",
    for benchmarks' records: CPUs of one name and instruction set differ in what these kernels
    gain (an EPYC with AVX-512 whose update ran 1.66x faster through oneDNN, another, family 25
    model 17, 1.01x: docs/PERFORMANCE.md). Where /proc/cpuinfo is missing: platform.processor()."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return platform.processor() or "unknown"
    fields = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "unknown")
    if "cpu family" in fields and "model" in fields:
        return f"{name} (family {fields['cpu family']}, model {fields['model']})"
    return name


def inner_product_available() -> bool:
    """Whether this torch build has oneDNN's inner product (`product`)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def available() -> bool:
    """Whether `onednn_linears` can run: the inner product and weight packing."""
    return inner_product_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


@dataclass
class _Packed:
    weight: torch.Tensor  # the layer's own (held, so its id stays unique while packed)
    version: tuple  # _version_of(weight) when packed: an in-place change or a new storage packs again
    dtype: torch.dtype
    packed: torch.Tensor  # the weight in `dtype`, in oneDNN's blocked layout


def _version_of(weight: torch.Tensor) -> tuple:
    """What changes when the weight does: its autograd version (not bumped by writes through
    `.data`, which are not seen) and its storage. Inference tensors have no version."""
    return (0 if weight.is_inference() else weight._version, weight.data_ptr())


@dataclass
class _Block:
    pack: bool
    open: bool = True  # closed on exit: a layer still holding the block computes F.linear
    packed: dict = field(default_factory=dict)  # (id(weight), compute dtype) -> _Packed

    def weight(self, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`weight` in `dtype`, reordered once for oneDNN when this block packs."""
        if not self.pack:
            return weight.to(dtype)
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype), 16)
        self.packed[id(weight), dtype] = _Packed(weight, _version_of(weight), dtype, packed)
        return packed

    def __deepcopy__(self, memo):
        # a model copied inside a block shares it (its layers hold it); the packed copies are
        # the block's, never duplicated
        return self


_BLOCK: contextvars.ContextVar[_Block | None] = contextvars.ContextVar("onednn_linears", default=None)
# set inside a block entered with torch_only (model.cpu_linear torch): generation's oneDNN output
# layer (engines/cpu_output_layer.py), which applies on every CPU otherwise, stays torch's too
_TORCH_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("torch_only", default=False)


@contextlib.contextmanager
def onednn_linears(model, enabled: bool = True, pack: bool = False, *, torch_only: bool = False):
    """Within the block, `model`'s plain nn.Linear layers compute through oneDNN where
    `linear()` covers the call; `pack`: calls without gradients use weights reordered once
    (rollouts). Each layer holds the block that switched it, so threads that run the model
    (transformers' continuous batching) see it too; blocks nest, each putting back only the
    layers it switched (those of an outer block keep the outer block's settings).
    `torch_only` (with enabled False; model.cpu_linear torch): nothing in the block switches
    kernels, the output layer of generation included (`torch_only_asked`)."""
    if not enabled:
        token = _TORCH_ONLY.set(torch_only)
        try:
            yield
        finally:
            _TORCH_ONLY.reset(token)
        return
    if torch_only:
        raise ValueError("onednn_linears: torch_only asks for torch's kernels, enabled for oneDNN's")
    block = _Block(pack)
    layers = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in vars(m)]
    token = _BLOCK.set(block)
    for layer in layers:
        layer.onednn_block = block
        layer.forward = types.MethodType(_switched_forward, layer)  # a copy of the model rebinds it
    try:
        yield
    finally:
        block.open = False
        for layer in layers:
            del layer.forward, layer.onednn_block  # back to nn.Linear.forward
        _BLOCK.reset(token)


def torch_only_asked() -> bool:
    """Whether this thread is inside an `onednn_linears(..., torch_only=True)` block."""
    return _TORCH_ONLY.get()


def _switched_forward(self, input: torch.Tensor) -> torch.Tensor:  # nn.Linear.forward's signature
    return linear(input, self.weight, self.bias, self.onednn_block)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           block: _Block | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias): through oneDNN inside an `onednn_linears` block (`block`, else
    the innermost open one of this thread) where covered."""
    block = block or _BLOCK.get()
    if block is None or not block.open:
        return F.linear(x, weight, bias)
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))
    autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    if block.pack and not grad:  # a decode step's hot path: a few checks, one product
        held = block.packed.get((id(weight), autocast or weight.dtype))
        if held is not None and held.version == _version_of(weight) and x.device.type == "cpu" \
                and x.numel() and (autocast is not None or x.dtype == weight.dtype):
            return product(x.to(held.dtype), held.packed, None if bias is None else bias.to(held.dtype))
    if not _covered(x, weight, bias):
        return F.linear(x, weight, bias)
    if autocast is not None:
        # bf16 products are oneDNN's already; only packing (no gradients) adds anything
        if grad or not block.pack or autocast != torch.bfloat16 or not _bf16_supported():
            return F.linear(x, weight, bias)
        dtype = torch.bfloat16
    elif x.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32):
        if grad:
            return _OnednnLinear.apply(x, weight, bias)
        dtype = torch.float32
    else:
        return F.linear(x, weight, bias)
    return product(x.to(dtype), block.weight(weight, dtype), None if bias is None else bias.to(dtype))


@functools.cache
def _bf16_supported() -> bool:
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _covered(x, weight, bias) -> bool:
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return x.numel() > 0 and all(type(t.data) is torch.Tensor and t.device.type == "cpu" for t in tensors)


def product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ weight[out, in].T (+ bias [out]) -> [..., out] by oneDNN, no autograd.
    weight may be a packed copy (its shape is then oneDNN's, so `out` is read from bias or
    the result)."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(flat, weight, bias, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])


class _OnednnLinear(torch.autograd.Function):
    """fp32 F.linear with every product (forward, input and weight gradients) by oneDNN."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # what each gradient reads, as F.linear keeps it: x for the weight's, the weight for x's
        ctx.save_for_backward(x if weight.requires_grad else None, weight if x.requires_grad else None)
        ctx.has_bias, ctx.out_features = bias is not None, weight.shape[0]
        return product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        flat_grad = grad.reshape(-1, grad.shape[-1])  # [n, out]
        if ctx.needs_input_grad[0]:
            grad_x = product(grad, weight.t())  # [..., out] @ [out, in]
        if ctx.needs_input_grad[1]:  # [out, n] @ [n, in]
            flat_x = x.reshape(-1, x.shape[-1])
            if ctx.out_features > VOCABULARY_SIZED:
                grad_w = flat_grad.t().mm(flat_x)
            else:  # both operands strided views, which oneDNN copies
                grad_w = product(flat_grad.t(), flat_x.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = flat_grad.sum(0)
        return grad_x, grad_w, grad_b
