"""The GPT, in plain PyTorch: read it top to bottom.

Token embeddings (+ learned positions, or rotary positions inside attention) -> n_layer pre-norm
blocks (causal self-attention, an MLP) -> a final norm -> a head (tied to the token embedding, or
its own). The defaults are the CPU recipe's parts (RoPE, RMSNorm, QK-norm, ReLU^2, an untied head,
zero-initialised output projections); `GPTConfig` switches each back to GPT-2's (`model=gpt2`).

One forward serves training, evaluation and generation. Given a key/value cache (see `Cache`;
generation.KVCache is the one there is), the chunk idx continues the cached positions: each
attention layer adds the chunk's keys and values to the cache and attends over what the cache lets
it see. A prompt's prefill and each one-character decode step (eager or torch.compile'd) are the
same code as training, and a change to a block is made here once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt_char.core.ops import attend, dropout
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import Options, option


@dataclass
class GPTConfig(Options):
    """The network's shape and parts, saved in every checkpoint. The defaults are the CPU recipe's
    (see the README); training takes vocab_size from the corpus. Errors name the fields as they are
    (n_layer=0); the train command's ModelConfig names its keys (model.n_layer=0)."""

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
        n_embd, n_head, pos_emb = (self.key(name) for name in ("n_embd", "n_head", "pos_emb"))
        if self.n_embd % self.n_head:
            lower = self.n_embd - self.n_embd % self.n_head
            raise UserError(
                f"{n_embd}={self.n_embd}: must be divisible by {n_head}={self.n_head}: "
                f"use e.g. {n_embd}={lower or self.n_head} or a n_head that divides {self.n_embd}"
            )
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise UserError(
                f"{pos_emb}=rope: needs an even head size, but {n_embd}={self.n_embd} / "
                f"{n_head}={self.n_head} = {self.n_embd // self.n_head}: choose sizes with an even "
                f"quotient, or {pos_emb}=learned"
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

    def advance(self, t: int) -> torch.Tensor:
        """The positions (t,) of the next t tokens, which the layers' updates then store."""
        ...

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, t, hd) of `layer`; return its cached keys and values and a mask (1, 1, t, slots)
        of which of them each query may see."""
        ...


Rope = tuple[torch.Tensor, torch.Tensor]  # cos and sin tables of a chunk's positions, (T, 1, 1, head_size)


def rope_angles(base: float, head_size: int, positions: torch.Tensor) -> Rope:
    """The tables `rotate` multiplies by at `positions` (n,), computed in float64 (float32 on MPS, which
    has no float64): [cos, cos] and [-sin, sin] of each position times each frequency, (n, head_size)."""
    wide = torch.float32 if positions.device.type == "mps" else torch.float64
    freqs = base ** -(torch.arange(0, head_size, 2, dtype=wide, device=positions.device) / head_size)
    angles = positions.to(wide)[:, None] * freqs
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1).float(), torch.cat([-sin, sin], dim=-1).float()


def rotate(x: torch.Tensor, rope: Rope) -> torch.Tensor:
    """Rotary position embedding of x (B, T, 2, H, hd), queries and keys: each pair of features
    (i, i + hd/2) is turned by its position times its frequency, so q.k depends on the positions'
    difference only: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), in three operations."""
    cos, sin = (r.to(x.dtype) for r in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.addcmul(x * cos, torch.cat([x2, x1], dim=-1), sin)


def make_norm(cfg: GPTConfig) -> nn.Module:
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias) if cfg.norm == "layernorm" else nn.RMSNorm(cfg.n_embd)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.qk_norm = nn.RMSNorm(cfg.head_size, elementwise_affine=False) if cfg.qk_norm else None  # no weights
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)

    def forward(
        self, x: torch.Tensor, rope: Rope | None = None, cache: Cache | None = None, layer: int = 0
    ) -> torch.Tensor:
        """Causal self-attention of x (B, T, C); with a cache, x continues the positions cached."""
        cfg, (b, t, c) = self.config, x.shape
        qkv = self.qkv(x).view(b, t, 3, cfg.n_head, cfg.head_size)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]  # queries and keys are normalised and rotated together
        if self.qk_norm is not None:
            qk = self.qk_norm(qk)
        if rope is not None:
            qk = rotate(qk, rope)
        q, k = qk.permute(2, 0, 3, 1, 4).unbind(0)  # -> (B, H, T, head_size) each
        v, mask = v.transpose(1, 2), None
        if cache is not None:
            k, v, mask = cache.update(layer, k, v)  # the keys and values of every position it holds
            q = q.to(k.dtype)
        y = attend(q, k, v, mask, cfg.attn_dropout if self.training else 0.0).to(x.dtype)
        return dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)), cfg.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.fc = nn.Linear(cfg.n_embd, (2 if cfg.mlp == "swiglu" else 1) * cfg.hidden, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.config.mlp == "gelu":
            h = F.gelu(h)
        elif self.config.mlp == "relu2":
            h = F.relu(h).square()
        else:  # swiglu: fc makes the gate and the value side by side
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        return dropout(self.proj(h), self.config.dropout, self.training)


class Block(nn.Module):
    """A pre-norm residual block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, rope: Rope | None = None, cache: Cache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), rope, cache, layer)
        return x + self.mlp(self.ln2(x))


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
            cos, sin = rope_angles(cfg.rope_base, cfg.head_size, torch.arange(cfg.block_size))
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

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

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (B, T); the mean cross-entropy too if targets are given.
        With a cache, idx continues the positions cached (see Cache)."""
        t = idx.shape[1]
        if t > self.config.block_size:
            raise ValueError(f"sequence of {t} positions is longer than block_size {self.config.block_size}")
        pos = None if cache is None else cache.advance(t)  # None: positions 0 .. t-1
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + (self.wpe.weight[:t] if pos is None else self.wpe(pos))
        x = dropout(x, self.config.dropout, self.training)
        rope = None
        if self.config.pos_emb == "rope":
            cfg = self.config
            cos, sin = (
                (self.rope_cos[:t], self.rope_sin[:t])
                if pos is None
                else rope_angles(cfg.rope_base, cfg.head_size, pos)
            )
            rope = cos[:, None, None], sin[:, None, None]  # broadcast over (B, T, 2, H, head_size)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
