"""The output layer of generation on a CPU through oneDNN's inner product instead of MKL's sgemm.

A decode step multiplies a few rows by the whole output layer ([b, H] x [H, V]; V = 49,152 for
SmolLM2, 113 MB of fp32 weights), so its time is that of streaming the weights once. On this
project's 2-core AMD EPYC (AVX2) MKL did that at about 3.6 GB/s and oneDNN at about 8: with
b = 15, 32 ms against 14 ms a step; a profiled SmolLM2 rollout spent 11% less CPU time per
generated token (docs/PERFORMANCE.md). The other layers are smaller and gain nothing (measured),
so only the output layer is switched, only while generating without gradients or autocast, and
only where it is a plain fp32 nn.Linear on a CPU; the model's own code around it (logit scaling,
soft-capping) still runs. The logits differ from MKL's in the last bits, like any change of
kernel. Inside a cpu_linear.onednn_linears block (the trainer's rollouts, evaluation) the output
layer is already that block's, with its weight packed, and this switch leaves it alone. Inside
a block entered with torch_only (model.cpu_linear torch: torch's kernels everywhere, e.g. to
repeat runs made before oneDNN) nothing switches.
"""

from __future__ import annotations

import contextlib

import torch

from ..cpu_linear import inner_product_available, product, torch_only_asked


@contextlib.contextmanager
def onednn_output_layer(model):
    """Within the block, the model's output layer computes through oneDNN where eligible."""
    head = None if torch_only_asked() else _eligible_head(model)
    if head is None:
        yield
        return
    plain = head.forward

    def forward(hidden):  # oneDNN's op has no backward: with gradients on, the plain layer;
        # and it ignores autocast, so under autocast too (the trainer's logits are autocast's)
        if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
            return plain(hidden)
        return product(hidden, head.weight, head.bias)

    head.forward = forward
    try:
        yield
    finally:
        del head.forward  # back to nn.Linear.forward


def plain_output_layer(model):
    """`model`'s output layer when it is a plain nn.Linear whose forward nothing has replaced,
    else None: not a subclass (peft's adapted layers; precision.fp32_logits' switch) and no
    instance-level forward (accelerate's hooks, onednn_output_layer)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if type(head) is not torch.nn.Linear or "forward" in vars(head):
        return None
    return head


def _eligible_head(model):
    """The plain output nn.Linear (plain_output_layer) when it is fp32 on a CPU, with oneDNN
    available; else None. Under precision.fp32_logits it is not plain: that switch uses oneDNN
    itself."""
    if not inner_product_available():
        return None
    head = plain_output_layer(model)
    if head is None:
        return None
    weights = [head.weight] + ([head.bias] if head.bias is not None else [])
    if any(type(w.data) is not torch.Tensor or w.device.type != "cpu" or w.dtype != torch.float32 for w in weights):
        return None
    return head
