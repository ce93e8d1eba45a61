"""The GPT, in plain PyTorch: read it top to bottom.

Token + learned position embeddings -> n_layer pre-LayerNorm blocks (causal self-attention, GELU
MLP) -> final LayerNorm -> a head tied to the token embedding.

One forward serves training, evaluation and generation. Given a key/value cache (anything with
`pos` and `update(layer, k, v)`, see generation.KVCache), the chunk idx continues the cached
positions: each attention layer adds the chunk's keys and values to the cache and attends over
all of them. A prompt's prefill and each one-character decode step are thus the same code as
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


@dataclass
class GPTConfig(Options):
    """The network's shape, saved in every checkpoint. The defaults are the CPU recipe's (see the
    README); conf/ selects and overrides them, and training takes vocab_size from the corpus."""

    KEY = "model"
    vocab_size: int = option(65, "characters in the vocabulary (training takes it from the corpus)", ge=1)
    block_size: int = option(128, "context length in characters", ge=1, le=1 << 20)
    n_layer: int = option(4, "transformer blocks", ge=1, le=1024)
    n_head: int = option(4, "attention heads per block (must divide n_embd)", ge=1)
    n_embd: int = option(192, "width of the residual stream", ge=1, le=1 << 16)
    dropout: float = option(0.0, "dropout after embeddings, attention and MLP (training only)", ge=0, lt=1)
    attn_dropout: float | None = option(None, "dropout on attention weights; null: the same as dropout", ge=0, lt=1)
    bias: bool = option(False, "biases in the Linear and LayerNorm layers")

    def check(self) -> None:
        if self.n_embd % self.n_head:
            lower = self.n_embd - self.n_embd % self.n_head
            raise UserError(
                f"model.n_embd={self.n_embd}: must be divisible by model.n_head={self.n_head}: "
                f"use e.g. model.n_embd={lower or self.n_head} or a n_head that divides {self.n_embd}"
            )
        if self.attn_dropout is None:
            self.attn_dropout = self.dropout


class Cache(Protocol):
    """What the forward needs of a key/value cache (generation.KVCache is the one there is)."""

    pos: int
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


def attention(
    x: torch.Tensor, ops: LayerOps, cfg: GPTConfig, cache: Cache | None, layer: int, training: bool
) -> torch.Tensor:
    """Causal self-attention of x (B, T, C); with a cache, x continues the positions cached."""
    b, t, c = x.shape
    qkv = ops.qkv(x) if cache is None else ops.qkv(x).to(cache.dtype)
    # (B, T, 3C) -> three (B, H, T, head_dim)
    q, k, v = qkv.view(b, t, 3, cfg.n_head, c // cfg.n_head).permute(2, 0, 3, 1, 4).unbind(0)
    if cache is not None:
        k, v = cache.update(layer, k, v)  # the keys and values of every position so far
    y = attend(q, k, v, cfg.attn_dropout if training else 0.0).to(x.dtype)
    return dropout(ops.attn_proj(y.transpose(1, 2).reshape(b, t, c)), cfg.dropout, training)


def mlp(x: torch.Tensor, ops: LayerOps, cfg: GPTConfig, training: bool) -> torch.Tensor:
    return dropout(ops.mlp_proj(F.gelu(ops.fc(x))), cfg.dropout, training)


def block(
    x: torch.Tensor, ops: LayerOps, cfg: GPTConfig, cache: Cache | None = None, layer: int = 0, training: bool = False
) -> torch.Tensor:
    """A pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x))."""
    x = x + attention(ops.ln1(x), ops, cfg, cache, layer, training)
    return x + mlp(ops.ln2(x), ops, cfg, training)


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
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def ops(self) -> LayerOps:
        return LayerOps(self.ln1, self.attn.qkv, self.attn.proj, self.ln2, self.mlp.fc, self.mlp.proj)

    def forward(self, x: torch.Tensor, cache: Cache | None = None, layer: int = 0) -> torch.Tensor:
        return block(x, self.ops(), self.config, cache, layer, self.training)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: one matrix reads and writes characters

        # GPT-2 init: N(0, 0.02), and residual projections scaled by 1/sqrt(2 * n_layer) so the
        # residual stream's variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

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
        """Parameter count; non_embedding drops the position table (nanoGPT's convention)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B."""
        cfg, t = self.config, seq_len or self.config.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * t

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: Cache | None = None,
        bound: ModelOps | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (B, T); the mean cross-entropy too if targets are given.

        With a cache, idx continues the cache.pos positions already there, and the cache grows by T.
        `bound` (eval only): this model's ops() bound into plain functions, see generation.bind.
        """
        t = idx.shape[1]
        start = 0 if cache is None else cache.pos
        if start + t > self.config.block_size:
            raise ValueError(f"sequence of {start + t} positions is longer than block_size {self.config.block_size}")
        x = dropout(
            F.embedding(idx, self.wte.weight) + self.wpe.weight[start : start + t], self.config.dropout, self.training
        )
        for i, blk in enumerate(self.blocks):
            # Through the module when training, so wrappers (FSDP's units) and hooks see each block.
            x = blk(x, cache, i) if bound is None else block(x, bound.layers[i], self.config, cache, i)
        if cache is not None:
            cache.pos = start + t
        ln_f, head = (self.ln_f, self.lm_head) if bound is None else (bound.ln_f, bound.head)
        logits = head(ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
