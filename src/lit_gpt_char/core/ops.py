"""Two standard operations, made fast on a CPU; model.py calls them and stays plain.

- `dropout`: a mask of one random byte per element, drawn 8 bytes at a time. torch's CPU
  `bernoulli_` costs ~8 ns an element, a seventh of a seed-size training step; this ~2 ns.
- `attend`: causal scaled-dot-product attention. On a CPU in training it is written out (in bf16
  forward + backward run ~1.6x faster than SDPA's CPU flash kernel, whose bf16 backward is slow,
  and attention dropout becomes cheap); elsewhere, and over a key/value cache's mask, it is SDPA.
Elsewhere than a CPU both are torch's own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout(x, p, training), with a byte mask on CPU.

    On a CPU, p is rounded to a multiple of 1/256 (0.2 -> 51/256 = 0.199) and the kept values
    are scaled by the exact 1/(1-p) of that rounded p.
    """
    if not training or p == 0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    threshold = round(p * 256)
    n = x.numel()
    words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
    keep = words.view(torch.uint8)[:n].view(x.shape) >= threshold
    return x * keep.to(x.dtype).mul_(256 / (256 - threshold))


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal attention of queries q (B, H, Tq, hd) over keys and values k, v (B, H, Tk, hd).

    mask (a key/value cache's): which keys each query sees. Without one, q and k are the same
    positions and query i sees keys 0 .. i.
    """
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    tq = q.shape[-2]
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.dtype == torch.bfloat16 or dropout_p > 0):
        mask = torch.full((tq, tq), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        att = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1) + mask
        return dropout(att.softmax(dim=-1), dropout_p, True) @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
