"""The GPT, in plain PyTorch: read it top to bottom.

Token embeddings (+ learned positions, or rotary positions inside attention) -> n_layer pre-norm
blocks (causal self-attention, an MLP) -> a final norm -> a head (tied to the token embedding, or
its own). The defaults are GPT-2's parts; `GPTConfig` switches each to a newer one: RoPE,
RMSNorm, QK-norm, ReLU^2 or SwiGLU MLPs, an untied head, zero-initialised output projections.

One forward serves training, evaluation and generation. Given a key/value cache (anything with
`pos`, `dtype` and `update(layer, k, v)`, see generation.KVCache), the chunk idx continues the
cached positions: each attention layer adds the chunk's keys and values to the cache and attends
over all of them. A prompt's prefill and each one-character decode step are thus the same code as
training, and a change to a block is made here once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt_char.core.ops import attend, dropout
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import Options, option

ROPE_PAST = 1024  # rotations computed at a time for positions past the block (sampling with a rolling cache)


@dataclass
class GPTConfig(Options):
    """The network's shape and parts, saved in every checkpoint. The defaults are the CPU recipe's
    (see the README); conf/ selects and overrides them, and training takes vocab_size from the corpus."""

    KEY = "model"
    vocab_size: int = option(65, "characters in the vocabulary (training takes it from the corpus)", ge=1)
    block_size: int = option(128, "context length in characters", ge=1, le=1 << 20)
    n_layer: int = option(4, "transformer blocks", ge=1, le=1024)
    n_head: int = option(4, "attention heads per block (must divide n_embd)", ge=1)
    n_embd: int = option(192, "width of the residual stream", ge=1, le=1 << 16)
    dropout: float = option(0.0, "dropout after embeddings, attention and MLP (training only)", ge=0, lt=1)
    attn_dropout: float | None = option(None, "dropout on attention weights; null: the same as dropout", ge=0, lt=1)
    bias: bool = option(False, "biases in the Linear and LayerNorm layers")
    pos_emb: str = option(
        "rope",
        "positions: learned (a table of block_size vectors, GPT-2's) | rope (rotary, "
        "relative: sampling rolls on past block_size)",
        choices=("learned", "rope"),
    )
    rope_base: float = option(10000.0, "rope: base of the rotation frequencies", gt=1, le=1e9)
    norm: str = option("rmsnorm", "the norms: layernorm | rmsnorm", choices=("layernorm", "rmsnorm"))
    qk_norm: bool = option(True, "RMS-normalise each head's queries and keys before attention")
    mlp: str = option(
        "relu2", "the MLP: gelu | relu2 (squared ReLU) | swiglu (gated SiLU)", choices=("gelu", "relu2", "swiglu")
    )
    mlp_hidden: int | None = option(
        None,
        "the MLP's hidden width; null: 4 x n_embd (swiglu: 8/3 x n_embd, "
        "rounded up to a multiple of 16, about as many weights)",
        ge=1,
        le=1 << 18,
    )
    tie_embeddings: bool = option(False, "one matrix for the token embedding and the output head")
    zero_init: bool = option(
        True, "start the blocks' output projections (and an untied head) at zero, so each block starts as the identity"
    )

    def check(self) -> None:
        if self.n_embd % self.n_head:
            lower = self.n_embd - self.n_embd % self.n_head
            raise UserError(
                f"model.n_embd={self.n_embd}: must be divisible by model.n_head={self.n_head}: "
                f"use e.g. model.n_embd={lower or self.n_head} or a n_head that divides {self.n_embd}"
            )
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise UserError(
                f"model.pos_emb=rope: needs an even head size, but model.n_embd={self.n_embd} / "
                f"model.n_head={self.n_head} = {self.n_embd // self.n_head}: choose sizes with an even "
                "quotient, or model.pos_emb=learned"
            )
        if self.attn_dropout is None:
            self.attn_dropout = self.dropout

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def hidden(self) -> int:
        """The MLP's hidden width."""
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return -(-8 * self.n_embd // 3 // 16) * 16
        return 4 * self.n_embd


class Cache(Protocol):
    """What the forward needs of a key/value cache (generation.KVCache is the one there is)."""

    pos: int  # positions seen so far: where the next chunk starts
    dtype: torch.dtype  # of the keys and values it holds

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class LayerOps(NamedTuple):
    """What one block computes with. In training these are the block's own modules; when decoding
    (generation.Decoder) they are the same weights bound into plain functions, because at batch 1
    each module call costs about as much as the arithmetic it wraps. Either way `block` below is
    the one place the block's maths is written."""

    ln1: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], torch.Tensor]
    attn_proj: Callable[[torch.Tensor], torch.Tensor]
    ln2: Callable[[torch.Tensor], torch.Tensor]
    fc: Callable[[torch.Tensor], torch.Tensor]
    mlp_proj: Callable[[torch.Tensor], torch.Tensor]


class ModelOps(NamedTuple):
    """The whole model's operations: every block's, then the final norm and the head."""

    layers: list[LayerOps]
    ln_f: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]


Rope = tuple[torch.Tensor, torch.Tensor]  # rope_angles' tables for the chunk's positions, (T, 1, 1, head_size)


def rope_angles(base: float, head_size: int, start: int, n: int, device: torch.device | None = None) -> Rope:
    """The tables `rotate` multiplies by for positions start .. start+n-1, computed in float64:
    [cos, cos] and [-sin, sin] of each position times each frequency, (n, head_size) each."""
    freqs = base ** -(torch.arange(0, head_size, 2, dtype=torch.float64, device=device) / head_size)
    angles = torch.outer(torch.arange(start, start + n, dtype=torch.float64, device=device), freqs)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1).float(), torch.cat([-sin, sin], dim=-1).float()


def rotate(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotary position embedding of x (B, T, 2, H, hd), queries and keys: each pair of features
    (i, i + hd/2) is turned by its position times its frequency, so q.k depends on the positions'
    difference only: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), in three operations."""
    cos, sin = (r.to(x.dtype) for r in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat([x2, x1], dim=-1), sin)


def attention(
    x: torch.Tensor,
    ops: LayerOps,
    cfg: GPTConfig,
    cache: Cache | None,
    layer: int,
    training: bool,
    rope: Rope | None = None,
) -> torch.Tensor:
    """Causal self-attention of x (B, T, C); with a cache, x continues the positions cached."""
    b, t, c = x.shape
    qkv = ops.qkv(x) if cache is None else ops.qkv(x).to(cache.dtype)
    qkv = qkv.view(b, t, 3, cfg.n_head, cfg.head_size)
    qk, v = qkv[:, :, :2], qkv[:, :, 2]  # queries and keys are normalised and rotated together
    if cfg.qk_norm:
        qk = F.rms_norm(qk, (cfg.head_size,))
    if rope is not None:
        qk = rotate(qk, rope)
    # -> (B, H, T, head_size) each
    q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)
    v = v.transpose(1, 2)
    if cache is not None:
        k, v = cache.update(layer, k, v)  # the keys and values of every position so far
    y = attend(q, k, v, cfg.attn_dropout if training else 0.0).to(x.dtype)
    return dropout(ops.attn_proj(y.transpose(1, 2).reshape(b, t, c)), cfg.dropout, training)


def mlp(x: torch.Tensor, ops: LayerOps, cfg: GPTConfig, training: bool) -> torch.Tensor:
    h = ops.fc(x)
    if cfg.mlp == "gelu":
        h = F.gelu(h)
    elif cfg.mlp == "relu2":
        h = F.relu(h).square()
    else:  # swiglu: fc makes the gate and the value side by side
        gate, value = h.chunk(2, dim=-1)
        h = F.silu(gate) * value
    return dropout(ops.mlp_proj(h), cfg.dropout, training)


def block(
    x: torch.Tensor,
    ops: LayerOps,
    cfg: GPTConfig,
    cache: Cache | None = None,
    layer: int = 0,
    training: bool = False,
    rope: Rope | None = None,
) -> torch.Tensor:
    """A pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x))."""
    x = x + attention(ops.ln1(x), ops, cfg, cache, layer, training, rope)
    return x + mlp(ops.ln2(x), ops, cfg, training)


def make_norm(cfg: GPTConfig) -> nn.Module:
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias) if cfg.norm == "layernorm" else nn.RMSNorm(cfg.n_embd)


class CausalSelfAttention(nn.Module):
    """The attention's weights (the maths is `attention` above)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)


class MLP(nn.Module):
    """The MLP's weights (the maths is `mlp` above)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, (2 if cfg.mlp == "swiglu" else 1) * cfg.hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.ln1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def ops(self) -> LayerOps:
        return LayerOps(self.ln1, self.attn.qkv, self.attn.proj, self.ln2, self.mlp.fc, self.mlp.proj)

    def forward(
        self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0, rope: Rope | None = None
    ) -> torch.Tensor:
        return block(x, self.ops(), self.config, cache, layer, self.training, rope)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.pos_emb == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix reads and writes characters
        if cfg.pos_emb == "rope":  # cos and sin of every position of the block, computed once
            cos, sin = rope_angles(cfg.rope_base, cfg.head_size, 0, cfg.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._rope_past: tuple[int, torch.Tensor, torch.Tensor] | None = None  # see rope()

        # GPT-2 init: N(0, 0.02), and residual projections scaled by 1/sqrt(2 * n_layer) so the
        # residual stream's variance does not grow with depth (or zero: each block starts as x -> x).
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                if cfg.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        if cfg.zero_init and not cfg.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def ops(self) -> ModelOps:
        """The modules every block, the final norm and the head compute with."""
        return ModelOps([b.ops() for b in self.blocks], self.ln_f, self.lm_head)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (tied weights once); non_embedding drops the position table (nanoGPT's convention)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.wpe is not None else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B: 6 per
        weight that multiplies (the blocks' matrices and the head; embedding lookups do not), plus
        attention's 12 * n_layer * n_embd * T."""
        cfg, t = self.config, seq_len or self.config.block_size
        matmul = sum(p.numel() for n, p in self.named_parameters() if p.dim() == 2 and n.startswith("blocks."))
        matmul += self.lm_head.weight.numel()
        return 6 * matmul + 12 * cfg.n_layer * cfg.n_embd * t

    def rope(self, start: int, t: int) -> Rope | None:
        """The rotation tables of positions start .. start+t-1, shaped to broadcast over (B, T, 2, H, hd)."""
        if self.config.pos_emb != "rope":
            return None
        if start + t <= self.config.block_size:
            cos, sin = self.rope_cos[start : start + t], self.rope_sin[start : start + t]
        else:
            cos, sin = self._rope_past_block(start, t)
        return cos[:, None, None], sin[:, None, None]

    @torch.compiler.disable  # a Python-side cache: a compiled decode step calls it as it is
    def _rope_past_block(self, start: int, t: int) -> Rope:
        """Tables past the block (sampling with a rolling cache): computed ROPE_PAST positions at a
        time and kept, not once per character."""
        past = self._rope_past
        if (
            past is None
            or not past[0] <= start <= start + t <= past[0] + len(past[1])
            or past[1].device != self.rope_cos.device
        ):
            cfg = self.config
            past = (start, *rope_angles(cfg.rope_base, cfg.head_size, start, max(t, ROPE_PAST), self.rope_cos.device))
            self._rope_past = past
        i = start - past[0]
        return past[1][i : i + t], past[2][i : i + t]

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: Cache | None = None,
        bound: ModelOps | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (B, T); the mean cross-entropy too if targets are given.

        With a cache, idx continues the cache.pos positions already there, and the cache grows by T
        (a rolling cache of a rope model keeps only the last block_size: generation rolls on).
        `bound` (eval only): this model's ops() bound into plain functions, see generation.bind.
        """
        t = idx.shape[1]
        start = 0 if cache is None else cache.pos
        if t > self.config.block_size or (self.wpe is not None and start + t > self.config.block_size):
            raise ValueError(f"sequence of {start + t} positions is longer than block_size {self.config.block_size}")
        x = F.embedding(idx, self.wte.weight)
        if self.wpe is not None:
            x = x + self.wpe.weight[start : start + t]
        x = dropout(x, self.config.dropout, self.training)
        rope = self.rope(start, t)
        for i, blk in enumerate(self.blocks):
            # Through the module when training, so wrappers (FSDP's units) and hooks see each block.
            x = blk(x, cache, i, rope) if bound is None else block(x, bound.layers[i], self.config, cache, i, rope=rope)
        if cache is not None:
            cache.pos = start + t
        ln_f, head = (self.ln_f, self.lm_head) if bound is None else (bound.ln_f, bound.head)
        logits = head(ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
