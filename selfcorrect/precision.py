"""Logits in fp32 while the rest of the forward runs under bf16 / fp16 autocast.

Under autocast the output layer is a half-precision matrix product whose result, the logits,
is rounded to 8 significant bits: a logit of 20 moves by up to 0.06. A SCoRe update reads
log-probs, and its KL term a difference of two log-probs that is often a few hundredths, so
that rounding is of the size of what is measured. On SmolLM2 a few steps from its reference,
the output layer in fp32 cut the rms error of the per-token log-ratio by a fifth to two fifths
(0.068 -> 0.055 with LoRA, 0.050 -> 0.031 with full weights), for 0-14% of a bf16 log-prob pass
and no slower a rollout (benchmarks/logprob_precision.py, docs/PERFORMANCE.md). The rest of
the error is the bf16 transformer body's: small KLs stay unreliable in bf16.

`fp32_logits(model)` makes the model's output layer compute its logits in fp32 while the
block runs: used for the trainer's log-probs (policy and reference), its rollouts with the
in-process engines (hf, cached, static, paged: they sample what the trainer scores; vllm
computes its own logits, and base-model first attempts are drawn outside the block) and the
SFT baselines. Its backward stays in the autocast dtype, as autocast's own would be: only the
logits are made exact, not the gradient arithmetic. Outside autocast (fp32 runs) nothing
changes. Only a plain nn.Linear output layer is switched (not one peft adapts or accelerate
hooks), by giving it a subclass for the block: a stable class and forward, so compiled decode
steps (the static engine on CUDA) are not retraced each rollout.
- CPU: an fp32 product. A frozen half-precision output layer (a LoRA base or a reference in
  bf16) gets one fp32 copy, kept while that weight is unchanged (V x H x 4 bytes: 113 MB for
  SmolLM2).
- CUDA: the half-precision product with an fp32 result (`torch.mm(..., out_dtype=float32)`,
  torch >= 2.8: bf16 speed, no copy); on older torch an fp32 product with TF32 allowed for that
  product only. Not run on a GPU yet.
The logits the update keeps for its log-softmax are fp32 [positions, V]: twice the bytes of
bf16 ones (the selective log-softmax's chunks and the micro-batch's token budget bound them).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from .cpu_linear import inner_product_available, product
from .engines.cpu_output_layer import plain_output_layer

# frozen half-precision weight -> (its state when copied, the fp32 copy)
_FP32_COPIES = WeakIdKeyDictionary()  # by identity: tensors compare element-wise
_MM_OUT_DTYPE: list[bool] = []  # [whether torch.mm takes out_dtype on CUDA], once known
HALF = (torch.bfloat16, torch.float16)


@contextlib.contextmanager
def fp32_logits(model, enabled: bool = True):
    """Within the block, `model`'s output layer computes fp32 logits whenever autocast is on."""
    head = plain_output_layer(getattr(model, "module", model)) if enabled else None  # DDP wraps its model
    if head is None:
        yield
        return
    weight = head.weight
    exact = None  # a kept fp32 copy of a frozen half-precision weight (CPU); else read at each call
    if weight.dtype != torch.float32 and not weight.requires_grad and type(weight.data) is torch.Tensor \
            and weight.device.type != "cuda":
        exact = as_fp32(weight)  # before switching: a failure here leaves the layer as it was
    head.__class__ = Fp32OutputLayer
    head.exact_weight = exact
    try:
        yield
    finally:
        head.__class__ = torch.nn.Linear
        del head.exact_weight


class Fp32OutputLayer(torch.nn.Linear):
    """The class an output nn.Linear has inside `fp32_logits`."""

    exact_weight: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kind = hidden.device.type
        if not torch.is_autocast_enabled(kind):
            return super().forward(hidden)
        bias = None if self.bias is None else self.bias.float()
        return Fp32Product.apply(hidden, self.weight, bias, torch.get_autocast_dtype(kind), self.exact_weight)


class Fp32Product(torch.autograd.Function):
    """hidden [..., H] x weight [V, H]^T (+ bias [V]) -> [..., V] in fp32 (exact_product); the
    backward's products in `half` (the autocast dtype), gradients in the inputs' dtypes.
    exact_weight: weight's kept fp32 copy, or None."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, half, exact_weight):
        ctx.save_for_backward(hidden if ctx.needs_input_grad[1] else None, weight)
        ctx.half, ctx.hidden_dtype, ctx.bias_dtype = half, hidden.dtype, None if bias is None else bias.dtype
        with torch.autocast(hidden.device.type, enabled=False):
            return exact_product(hidden, weight, bias, half, exact_weight)

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight = ctx.saved_tensors
        g = grad_out.to(ctx.half)
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_hidden = (g @ weight.to(ctx.half)).to(ctx.hidden_dtype)
        if ctx.needs_input_grad[1]:
            rows = g.reshape(-1, g.shape[-1])
            grad_weight = (rows.T @ hidden.reshape(-1, hidden.shape[-1]).to(ctx.half)).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0).to(ctx.bias_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def exact_product(hidden, weight, bias, half: torch.dtype, exact_weight=None, kind: str | None = None) -> torch.Tensor:
    """fp32 logits [..., V]: on CUDA the half-precision product with an fp32 result (or fp32 with
    TF32 where torch lacks it), elsewhere an fp32 product. kind: the device type (default
    hidden's; a test takes the CUDA branch's fallback on a CPU)."""
    if (kind or hidden.device.type) == "cuda":
        if not _MM_OUT_DTYPE or _MM_OUT_DTYPE[0]:
            flat = hidden.reshape(-1, hidden.shape[-1]).to(half)
            try:
                out = torch.mm(flat, weight.to(half).t(), out_dtype=torch.float32)
                _MM_OUT_DTYPE[:] = [True]
                out = out if bias is None else out + bias
                return out.view(*hidden.shape[:-1], weight.shape[0])
            except (TypeError, NotImplementedError):
                _MM_OUT_DTYPE[:] = [False]
        with _tf32_allowed():
            return F.linear(hidden.float(), weight.float(), bias)
    weight = exact_weight if exact_weight is not None else weight.float()
    if hidden.device.type == "cpu" and not torch.is_grad_enabled() and inner_product_available():
        # oneDNN: faster at generation's few rows, no slower in the update (an inference-only
        # op; within Fp32Product gradients are off and its backward supplies them)
        return product(hidden.float(), weight, bias)
    return F.linear(hidden.float(), weight, bias)


def match_master_precision(reference) -> None:
    """Make a frozen half-precision reference copy compute as its policy does once the policy's
    weights are fp32 masters under autocast (optim.fp32_master_weights).

    Autocast casts what matrix products multiply to bf16, so the copy's matrices can stay in
    bf16 (the masters' values, rounded the same way). What is used as stored must match: a bf16
    embedding table starts a bf16 residual stream where the policy's fp32 one starts an fp32
    stream, and every residual addition then rounds differently. That made the KL of a
    full-weight bf16 run's first step 1.4e-3 on SmolLM2 where policy and reference are the same
    model (0 in fp32). So embedding lookups return fp32 (a hook: the tables stay bf16, and so
    does the model's dtype, which the paged engine sizes its cache by) and every vector (norms,
    biases) is upcast; the matrices (a few percent of the weights are not) stay bf16."""
    for module in reference.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight.dtype in HALF:
            module.register_forward_hook(_fp32_output)
    for p in reference.parameters():
        if p.dtype in HALF and p.dim() < 2:
            p.data = p.data.float()


def match_lora_base_precision(model, compute_dtype: torch.dtype | None, engine: str) -> None:
    """Give a LoRA policy on a half-precision base (frozen bf16 weights, fp32 adapters) the fp32
    residual stream of a full-weight policy on fp32 masters while it runs under autocast; its
    reference (the same model, adapter off) shares it. Outside autocast it computes as before.

    In a bf16 stream every residual addition, norm and rotary embedding rounds to 8 bits, and the
    casts around them cost time: on SmolLM2 (2 CPU cores, vs_trl settings, adapters folded for
    generation) a two-attempt rollout took 4.11 s in the bf16 stream and 2.91 s in fp32, the
    engine log-prob gap went 0.037 -> 0.025 and the update's log-ratio error against fp32
    0.067 -> 0.043 (docs/PERFORMANCE.md). Only the embeddings' output
    is made fp32 (a hook that acts under autocast): unlike match_master_precision the frozen
    vectors stay bf16, so the model still runs without autocast (the demo evaluates the trained
    policy that way); under autocast a norm's bf16 weight times its fp32 input promotes to the
    same fp32 product an fp32 weight gives, and autocast casts biases for its products anyway.
    Not for the paged engine, whose cache holds one dtype where the fp32 stream makes fp32 keys
    and bf16 values."""
    from peft import PeftModel

    if not isinstance(model, PeftModel) or compute_dtype is None or engine == "paged":
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.weight.dtype in HALF \
                and not getattr(module, "fp32_stream_hook", False):
            module.register_forward_hook(_fp32_output_under_autocast)
            module.fp32_stream_hook = True  # once: SftRun after the trainer (STaR as Stage II) asks again


def _fp32_output_under_autocast(module, args, output: torch.Tensor) -> torch.Tensor:
    return output.float() if torch.is_autocast_enabled(output.device.type) else output


def _fp32_output(module, args, output: torch.Tensor) -> torch.Tensor:
    return output.float()  # the same values: a bf16 table's entries are exact in fp32


def as_fp32(weight: torch.Tensor) -> torch.Tensor:
    """A frozen weight in fp32: itself if it is, else a copy kept while it is unchanged."""
    if weight.dtype == torch.float32:
        return weight
    state = (weight._version, weight.data_ptr(), weight.device, weight.dtype)
    kept = _FP32_COPIES.get(weight)
    if kept is None or kept[0] != state:
        with torch.inference_mode(False), torch.no_grad():  # usable by later passes with gradients
            kept = (state, weight.detach().float())
        _FP32_COPIES[weight] = kept
    return kept[1]


@contextlib.contextmanager
def _tf32_allowed():
    """TF32 for CUDA fp32 products within the block (torch >= 2.9 names it fp32_precision)."""
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, before)
