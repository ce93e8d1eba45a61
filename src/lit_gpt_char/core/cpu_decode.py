"""What makes batch-1 decoding fast on a CPU, kept outside the model: int8 weight-only linears (the
CPU default of `sample precision=auto`) and a two-operation RMSNorm; TextGenerator applies them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt_char.core.model import GPT

# torch's CPU kernel for int8 weights times bf16 activations (a private op: older or other builds
# may lack it). It reads the input dimension in blocks of 16: for other widths it returns garbage
# or crashes, so weights are stored with their input dimension zero-padded to a multiple of 16.
INT8_KERNEL = hasattr(torch, "_weight_int8pack_mm")
INT8_BLOCK = 16


class Int8Linear(nn.Module):
    """A Linear with weight-only int8 weights (one scale per output row) and bf16 activations.

    Generating one character reads every weight once, so on a CPU a decode step is bound by
    memory traffic: int8 weights are 4x fewer bytes than float32 and make batch-1 sampling
    ~3x faster. Per-row scaling keeps each weight within 0.4% of its range.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127
        q = torch.round(w / scales[:, None]).to(torch.int8)
        self.register_buffer("weight", F.pad(q, (0, -q.shape[1] % INT8_BLOCK)))  # zero columns: see INT8_BLOCK
        self.register_buffer("scales", scales.to(dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.scales, self.bias)


def int8_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ (weight * scales).T + bias, for int8 weight rows with one scale each (weight's input
    dimension may be zero-padded beyond x's)."""
    k = x.shape[-1]
    rows = x.numel() // k
    if rows > 8 or not INT8_KERNEL or not weight.is_cpu:
        # A prefill (the kernel is made for a few rows), or no kernel here: dequantize instead.
        return F.linear(x, weight[:, :k].to(x.dtype) * scales[:, None], bias)
    if weight.shape[1] != k:
        x = F.pad(x, (0, weight.shape[1] - k))
    y = torch._weight_int8pack_mm(x.reshape(rows, weight.shape[1]), weight, scales).view(*x.shape[:-1], -1)
    return y if bias is None else y + bias


def quantize_int8(model: GPT) -> GPT:
    """Swap every Linear (the blocks' and the head) for Int8Linear; the token embedding stays as
    it is (the head gets its own int8 copy of the tied matrix)."""
    dtype = next(model.parameters()).dtype
    for parent in [model, *(m for block in model.blocks for m in (block.attn, block.mlp))]:
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child, dtype))
    return model


class TwoOpRMSNorm(nn.Module):
    """RMSNorm as CPU decoding computes it: x / |x| * (sqrt(width) * weight), two operations where
    F.rms_norm takes about eight (36 µs for one position on an AVX2 EPYC, ~10% of an eager seed-size
    step over 19 norms; in bf16 more, with its casts). It leaves out the norm's eps (1e-7 relative in
    float32; a zero vector stays zero): the tests hold it to the module's output."""

    def __init__(self, norm: nn.RMSNorm, dtype: torch.dtype):
        super().__init__()
        (width,) = norm.normalized_shape
        weight = norm.weight.detach() if norm.weight is not None else torch.ones(width)
        self.register_buffer("scale", (weight.float() * width**0.5).to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.div(x, torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(1e-30)) * self.scale


def two_op_norms(model: GPT) -> GPT:
    """Swap every nn.RMSNorm of model (the blocks', QK-norm's, the final one) for TwoOpRMSNorm."""
    dtype = model.wte.weight.dtype
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.RMSNorm:
                setattr(parent, name, TwoOpRMSNorm(child, dtype).to(model.wte.weight.device))
    return model
