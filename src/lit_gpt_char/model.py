"""The GPT, in plain PyTorch: read it top to bottom.

Token + learned position embeddings -> n_layer pre-LayerNorm blocks (causal self-attention
through ``F.scaled_dot_product_attention``, GELU MLP) -> final LayerNorm -> a head tied to
the token embedding. Generation keeps a key/value cache so each new character costs one
position, not a forward pass over the whole context.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt_char.errors import UserError


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.2
    bias: bool = False
    # Dropout on the attention weights; None = the same as `dropout` (nanoGPT and the seed do so).
    attn_dropout: float | None = None

    def __post_init__(self) -> None:
        """Reject impossible shapes here, with the config key to change, not deep in a matmul."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            lower = self.n_embd - self.n_embd % self.n_head
            raise UserError(
                f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}: "
                f"use e.g. model.n_embd={lower or self.n_head} or a n_head that divides {self.n_embd}"
            )
        if self.attn_dropout is None:
            self.attn_dropout = self.dropout
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise UserError(f"model.{name} must be in [0, 1), got {value!r}")
        if not isinstance(self.bias, bool):
            raise UserError(f"model.bias must be true or false, got {self.bias!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class Dropout(nn.Dropout):
    """nn.Dropout with a cheaper mask on CPU: one random byte per element, drawn 8 at a time.

    torch's CPU bernoulli_ costs ~8 ns per element, a seventh of a seed-size training step;
    this costs ~2 ns. p is rounded to a multiple of 1/256 (0.2 -> 51/256 = 0.199) and the kept
    values are scaled by the exact 1/(1-p) of that rounded p. Elsewhere it is nn.Dropout.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu":
            return super().forward(x)
        threshold = round(self.p * 256)
        n = x.numel()
        words = torch.empty((n + 7) // 8, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= threshold
        return x * keep.to(x.dtype).mul_(256 / (256 - threshold))


class KVCache:
    """Keys and values of every layer for the positions seen so far (at most block_size).

    Allocated by allocate() or on the first update, on the attention's device and in its
    dtype, except on a CPU: there it is float32 whatever the weights, because the CPU
    attention kernel is ~4x slower in bf16 for a single query (and float32 is the more exact
    anyway). Later keys and values are converted to that dtype: the tensors never move, so a
    Decoder can hold on to them.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.n_layer, self.max_len = n_layer, max_len
        self.k: list[torch.Tensor] = []  # per layer (B, H, max_len, hd)
        self.v: list[torch.Tensor] = []
        self.pos = 0  # positions already stored (for all layers)

    def reset(self) -> None:
        self.pos = 0

    def allocate(self, batch: int, n_head: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        """Make room for (batch, n_head, max_len, head_dim) per layer, unless it is there already."""
        if self.k and self.k[0].shape[:2] == (batch, n_head) and self.k[0].device == device:
            return
        dtype = torch.float32 if device.type == "cpu" else dtype
        shape = (self.n_layer, batch, n_head, self.max_len, head_dim)
        self.k = list(torch.empty(shape, dtype=dtype, device=device).unbind(0))
        self.v = list(torch.empty(shape, dtype=dtype, device=device).unbind(0))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hd) at positions pos..pos+T-1; return all stored keys and values."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > block_size {self.max_len}")
        if layer == 0:
            b, h, _, hd = k.shape
            self.allocate(b, h, hd, k.dtype, k.device)
        kc, vc = self.k[layer], self.v[layer]
        kc[:, :, self.pos : end] = k
        vc[:, :, self.pos : end] = v
        return kc[:, :, :end], vc[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.attn_dropout = cfg.n_head, cfg.attn_dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_drop = Dropout(cfg.attn_dropout)
        self.resid_drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is None and q.device.type == "cpu" and torch.is_grad_enabled() and (
            q.dtype == torch.bfloat16 or (self.training and self.attn_dropout > 0)
        ):
            # Training on a CPU: in bf16 this explicit form runs forward + backward ~1.6x faster
            # than SDPA's CPU flash kernel (whose bf16 backward is slow), and it makes attention
            # dropout cheap (SDPA falls back to its math path with a slow bernoulli mask).
            t_mask = torch.full((t, t), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
            att = (q * (1.0 / math.sqrt(q.size(-1)))) @ k.transpose(-2, -1) + t_mask
            y = self.attn_drop(att.softmax(dim=-1)) @ v
        elif cache is None:
            p = self.attn_dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            # Only two shapes occur: a prefill from position 0 (causal within the chunk) and
            # one new position attending to everything cached (no mask needed).
            if t > 1 and cache.pos != 0:
                raise ValueError("a multi-token chunk must start at position 0 of the cache")
            k, v = cache.update(layer, k, v)
            y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, is_causal=t > 1).to(x.dtype)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.drop = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = Dropout(cfg.dropout)
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

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; non_embedding drops the position table (nanoGPT's convention)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B."""
        cfg, t = self.config, seq_len or self.config.block_size
        return 6 * self.num_params(non_embedding=True) + 12 * cfg.n_layer * cfg.n_embd * t

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of idx (B, T); mean cross-entropy if targets are given."""
        t = idx.shape[1]
        start = cache.pos if cache is not None else 0
        if start + t > self.config.block_size:
            raise ValueError(
                f"sequence of {start + t} positions is longer than block_size {self.config.block_size}"
            )
        x = self.drop(self.wte(idx) + self.wpe.weight[start : start + t])
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        logits = self.lm_head(self.ln_f(x))
        if cache is not None:
            cache.pos += t
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.inference_mode()
    def generate_stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        slide: int | None = None,
        compile: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Yield max_new_tokens new ids, one (B,) tensor per step, continuing each row of idx.

        The prompt is prefilled once; each new token then costs one position through the
        key/value cache. Learned positions stop at block_size, so when the cache is full the
        window slides: the context is cut to its last block_size - slide + 1 characters
        (default slide = block_size // 2) and prefilled again from position 0. Each token is
        thus predicted from at least block_size - slide + 1 characters (from all of them while
        the text is shorter than block_size), at one re-prefill every `slide` new tokens.
        slide=1 is exactly the usual "crop to the last block_size characters" rule, at the
        cost of a full forward pass per token. compile=True runs Decoder.step through
        torch.compile (the first call compiles, once per process).
        """
        if max_new_tokens <= 0:
            return
        w = self.config.block_size
        slide = max(1, w // 2) if slide is None else slide
        if not 1 <= slide <= w:
            raise ValueError(f"slide must be in [1, block_size={w}], got {slide}")
        keep = w - slide + 1  # context length right after a slide
        # The last w tokens seen so far, kept for re-prefills after a slide.
        window = idx[:, -w:]
        decoder = Decoder(self, batch=idx.shape[0], compile=compile)
        logits = decoder.prefill(window)
        for step in range(max_new_tokens):
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)
            yield nxt
            if step == max_new_tokens - 1:
                break
            window = torch.cat([window, nxt[:, None]], dim=1)[:, -w:]
            logits = decoder.prefill(window[:, -keep:]) if decoder.full else decoder.step(nxt)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        slide: int | None = None,
        compile: bool = False,
    ) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled ids; see generate_stream."""
        new = list(self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, generator, slide, compile))
        return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx


class Decoder:
    """A GPT's eval-mode forward, one new position at a time, over a key/value cache.

    prefill(idx) runs the whole chunk through GPT.forward from position 0; step(ids) then
    adds one position per row in O(context) work. step is GPT.forward specialized to that
    case: the weights are gathered into flat per-layer tuples once, here, so a step runs
    only tensor operations. At batch 1 on a CPU each nn.Module call and attribute lookup
    costs about as much as the arithmetic it wraps; skipping them makes a step ~20% faster.
    No dropout: this is inference. compile=True swaps step for one torch.compile'd copy shared
    by every Decoder (dynamic shapes, so a growing cache does not recompile it).
    """

    def __init__(self, model: GPT, batch: int, compile: bool = False):
        cfg, self.model = model.config, model
        self.shape, self.n_head = (cfg.n_embd,), cfg.n_head
        self.cache = KVCache(cfg.n_layer, cfg.block_size)
        weight = model.wte.weight
        self.cache.allocate(batch, cfg.n_head, cfg.n_embd // cfg.n_head, weight.dtype, weight.device)

        def norm(ln: nn.LayerNorm) -> tuple:
            return ln.weight, ln.bias, ln.eps

        self.layers = [
            (norm(b.ln1), fast(b.attn.qkv), fast(b.attn.proj), norm(b.ln2), fast(b.mlp.fc), fast(b.mlp.proj), k, v)
            for b, k, v in zip(model.blocks, self.cache.k, self.cache.v)
        ]
        self.wte, self.wpe, self.ln_f, self.head = weight, model.wpe.weight, norm(model.ln_f), fast(model.lm_head)
        if compile:
            self.step = functools.partial(compiled_step(), self)

    @property
    def full(self) -> bool:
        """No room for another position: prefill a shorter context (slide the window)."""
        return self.cache.pos == self.cache.max_len

    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after the context idx (B, T), which replaces whatever was cached."""
        self.cache.reset()
        return self.model(idx, cache=self.cache)[0][:, -1, :]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after one more id per row, ids (B,)."""
        pos = self.cache.pos
        if pos >= self.cache.max_len:
            raise ValueError(f"position {pos} is past block_size {self.cache.max_len}: prefill a shorter context")
        b, c, h, n = ids.shape[0], self.shape[0], self.n_head, pos + 1
        x = self.wte[ids] + self.wpe[pos]  # (B, C)
        for ln1, qkv, proj, ln2, fc, fc_proj, k, v in self.layers:
            # (B, 3, H, 1, hd) in the cache's dtype: q, k, v of the new position, head by head
            new = qkv(F.layer_norm(x, self.shape, *ln1)).view(b, 3, h, 1, -1).to(k.dtype)
            k[:, :, pos : n] = new[:, 1]
            v[:, :, pos : n] = new[:, 2]
            y = F.scaled_dot_product_attention(new[:, 0], k[:, :, :n], v[:, :, :n])  # no mask: all is past
            x = x + proj(y.view(b, c).to(x.dtype))
            x = x + fc_proj(F.gelu(fc(F.layer_norm(x, self.shape, *ln2))))
        self.cache.pos = n
        return self.head(F.layer_norm(x, self.shape, *self.ln_f))


@functools.cache
def compiled_step() -> Callable[[Decoder, torch.Tensor], torch.Tensor]:
    return torch.compile(Decoder.step, dynamic=True)


def fast(linear: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's function without nn.Module's call machinery (hooks do not run)."""
    if type(linear) is nn.Linear:
        return functools.partial(F.linear, weight=linear.weight, bias=linear.bias)
    return linear.forward  # e.g. generate.Int8Linear


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One id per row of logits (B, V): greedy at temperature 0, else from the filtered softmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
