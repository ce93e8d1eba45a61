"""Generation: a key/value cache whose shapes never change, the decode step (eager, or compiled once
by torch.compile for any length), and sampling. The text API on top is core/text_generator.py.

The prompt is prefilled once through `GPT.forward` with a `KVCache`; every new character is one
more position through that same forward. Needs only the model, and no Lightning.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from lit_gpt_char.core.model import GPT
from lit_gpt_char.options import SEED, Options, option


@dataclass
class SamplingOptions(Options):
    """How each next character is drawn; the options of `TextGenerator.generate` and of `sample`."""

    max_new_tokens: int = option(
        500, "characters to generate (past block_size the context slides)", ge=0, le=100_000_000
    )
    temperature: float = option(0.8, "0: greedy; 1: the model's distribution; higher: flatter", ge=0, le=1e4)
    top_k: int | None = option(None, "sample among the k most likely characters only; null: all", ge=1)
    top_p: float | None = option(
        None, "sample among the most likely characters holding this much probability; null: all", gt=0, le=1
    )
    seed: int | None = option(
        SEED, "same seed and options, same text (on the same device); null: random", ge=0, le=2**64 - 1
    )
    slide: int | None = option(
        None,
        "positions dropped when the context is full; null: block_size // 2, or a rolling cache for rope "
        "models (1 = crop to the last block_size characters)",
        ge=1,
    )


class KVCache(nn.Module):
    """Keys and values of every layer for up to max_len positions, in buffers whose shapes never change.

    Where the next chunk goes is a tensor (`next_pos`), and each slot remembers the position stored
    in it (`slot_pos`); a query sees the slots holding a position at or before its own. So a decode
    step is the same computation at every position: torch.compile compiles it once and CUDA graphs
    can replay it, however long the generation.

    rolling=True (for rotary positions, whose attention depends on relative positions only): once
    max_len positions are stored, each new one overwrites the oldest, so a decode step always
    costs max_len keys, and generation never has to prefill again. The slots are then out of
    position order, which attention of one new position over all of them does not mind.

    On a CPU the keys and values are float32 whatever the weights: the CPU attention kernel is ~4x
    slower in bf16 for a single query (and float32 is the more exact anyway). A module only so that
    its buffers are static inputs to a compiled step (CUDA graphs may then update them in place).
    """

    EMPTY = 2**62  # the position of a slot never written: no query sees it

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        rolling: bool = False,
    ):
        super().__init__()
        device = torch.device(device)
        dtype = torch.float32 if device.type == "cpu" else dtype
        shape = (batch, n_head, max_len, head_dim)
        # One buffer per layer: a compiled step then updates each in place (a slice of one shared buffer
        # would be copied whole at every step).
        for i in range(n_layer):
            self.register_buffer(f"k{i}", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
            self.register_buffer(f"v{i}", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.k = [getattr(self, f"k{i}") for i in range(n_layer)]
        self.v = [getattr(self, f"v{i}") for i in range(n_layer)]
        self.register_buffer("slot_pos", torch.full((max_len,), self.EMPTY, device=device), persistent=False)
        self.register_buffer("next_pos", torch.zeros((), dtype=torch.long, device=device), persistent=False)
        self.max_len, self.dtype, self.rolling = max_len, dtype, rolling
        self.slots = self.mask = None  # of the chunk being computed: where it is stored, what it sees

    @classmethod
    def for_model(cls, model: GPT, batch: int, rolling: bool = False) -> KVCache:
        cfg, w = model.config, model.wte.weight
        return cls(cfg.n_layer, batch, cfg.n_head, cfg.block_size, cfg.head_size, w.dtype, w.device, rolling)

    @property
    def pos(self) -> int:
        """Positions seen so far (reads the device: not for a compiled step)."""
        return int(self.next_pos)

    def reset(self) -> None:
        self.next_pos.zero_()
        self.slot_pos.fill_(self.EMPTY)

    def advance(self, t: int) -> torch.Tensor:
        """The next t positions; their slots (rolling: position mod max_len) and what each sees are set
        for the layers' updates. The caller keeps within max_len (a rolling cache: one at a time past it)."""
        positions = self.next_pos + torch.arange(t, device=self.next_pos.device)
        self.slots = positions % self.max_len if self.rolling else positions
        self.slot_pos.index_copy_(0, self.slots, positions)
        self.next_pos.add_(t)
        hidden = self.slot_pos > positions[:, None]  # (t, max_len): empty slots, and the chunk's own future
        self.mask = torch.zeros(hidden.shape, dtype=self.dtype, device=hidden.device).masked_fill_(hidden, -torch.inf)
        return positions

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, t, hd) in the chunk's slots of `layer`; return all of its slots and the mask."""
        keys, values = self.k[layer], self.v[layer]
        keys.index_copy_(2, self.slots, k.to(self.dtype))
        values.index_copy_(2, self.slots, v.to(self.dtype))
        return keys, values, self.mask


class Decoder:
    """A model and its cache: prefill a context, then add one position per step.

    Both run GPT.forward over the cache in eval mode: the same maths as training. compile=True runs
    each step through torch.compile (CUDA graphs on a GPU): one compile per batch size, precision and
    device, since the step's shapes never change (see KVCache); prefills stay eager.
    """

    def __init__(self, model: GPT, batch: int, compile: bool = False, rolling: bool = False):
        self.model, self.length = model, 0
        self.cache = KVCache.for_model(model, batch, rolling)
        self._step = compiled_step(model.wte.weight.device) if compile else decode_step

    @property
    def full(self) -> bool:
        """No room for another position: prefill a shorter context (slide the window)."""
        return not self.cache.rolling and self.length >= self.cache.max_len

    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after the context idx (B, T), which replaces whatever was cached."""
        if idx.shape[1] > self.cache.max_len:
            raise ValueError(f"a context of {idx.shape[1]} positions is longer than block_size {self.cache.max_len}")
        self.cache.reset()
        self.length = idx.shape[1]
        return self.model(idx, cache=self.cache)[0][:, -1]

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) after one more id per row, ids (B,)."""
        if self.full:
            raise ValueError(
                f"position {self.length} is past block_size {self.cache.max_len}: prefill a shorter context"
            )
        self.length += 1
        return self._step(self.model, ids, self.cache)


def decode_step(model: GPT, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """The logits (B, V) after one more id per row: what a decode step computes, compiled or not."""
    return model(ids[:, None], cache=cache)[0][:, -1]


@functools.cache
def compiled_step(device: torch.device) -> Callable:
    """decode_step through torch.compile, one per device kind (and so one compile per process for each
    batch size and precision): whole-graph, static shapes, CUDA graphs on a GPU."""
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(decode_step, fullgraph=True, dynamic=False, mode=mode)


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
    # Shifted so the largest is 0 first: any temperature > 0, however small, then divides without
    # overflow (the others go to -inf: the greedy limit), and softmax never sees inf - inf. One below
    # float32's range would round to 0 (0/0): its limit is taken as it is, the largest logits alone.
    logits = logits.float()
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    if temperature < torch.finfo(torch.float32).tiny:
        logits = shifted.masked_fill(shifted < 0, float("-inf"))
    else:
        logits = shifted / temperature
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


@torch.inference_mode()
def generate_stream(
    model: GPT,
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

    The prompt (its last block_size characters) is prefilled once; each new token then costs one
    position through the key/value cache. Past block_size:
    - rotary positions (pos_emb=rope, slide=None): the cache rolls. Each new position replaces
      the oldest, at the same cost per character forever, never prefilling again. This is not
      the crop rule: a key cached earlier was computed when its own context was current, so the
      deeper layers still carry some of what has left the window (with one layer the two agree
      exactly, since a rotary key depends on its character and the positions' difference only).
    - learned positions, or an explicit slide: the window slides. When the cache is full the
      context is cut to its last block_size - slide + 1 characters (default slide = block_size
      // 2) and prefilled again from position 0, so each token is predicted from at least that
      many characters, at one re-prefill every `slide` new tokens. slide=1 is exactly the usual
      "crop to the last block_size characters" rule, at a full forward pass per token.
    The model must be in eval mode.
    """
    if max_new_tokens <= 0:
        return
    w = model.config.block_size
    rolling = model.config.pos_emb == "rope" and slide is None
    slide = max(1, w // 2) if slide is None else slide
    if not 1 <= slide <= w:
        raise ValueError(f"slide must be in [1, block_size={w}], got {slide}")
    keep = w - slide + 1  # context length right after a slide
    window = idx[:, -w:]  # the last w tokens seen so far, kept for re-prefills after a slide
    decoder = Decoder(model, batch=idx.shape[0], compile=compile, rolling=rolling)
    logits = decoder.prefill(window)
    for step in range(max_new_tokens):
        nxt = sample_logits(logits, temperature, top_k, top_p, generator)
        yield nxt
        if step == max_new_tokens - 1:
            break
        if rolling:
            logits = decoder.step(nxt)
            continue
        window = torch.cat([window, nxt[:, None]], dim=1)[:, -w:]
        logits = decoder.prefill(window[:, -keep:]) if decoder.full else decoder.step(nxt)


@torch.inference_mode()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """idx (B, T) followed by max_new_tokens sampled ids; see generate_stream for the options."""
    new = list(generate_stream(model, idx, max_new_tokens, **kwargs))
    return torch.cat([idx, torch.stack(new, dim=1)], dim=1) if new else idx
