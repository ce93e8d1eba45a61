"""Generation: a key/value cache, sampling, and text in / text out for scripts and notebooks.

    from lit_gpt_char import load_generator
    gen = load_generator("outputs/train/runs/<run>")      # or a .ckpt, or an export dir
    print(gen.generate("ROMEO:", max_new_tokens=200, seed=1))
    for piece in gen.stream("JULIET:", max_new_tokens=200):
        print(piece, end="", flush=True)

The prompt is prefilled once through `GPT.forward` with a `KVCache`; every new character is one
more position through that same forward. Needs only the checkpoint (model config and tokenizer
travel inside it), and no Lightning.
"""

from __future__ import annotations

import functools
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_gpt_char.core.model import GPT
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import SEED, Options, build, option

PRECISIONS = {
    "32": torch.float32,
    "32-true": torch.float32,
    "bf16": torch.bfloat16,
    "bf16-true": torch.bfloat16,
    "16": torch.float16,
    "16-true": torch.float16,
    "int8": torch.bfloat16,
}


def precision_option() -> Any:
    """The `precision` option of sample and serve."""
    shown = [p for p in PRECISIONS if not p.endswith("-true")]
    return option(
        "auto", f"auto (int8 weights on CPU, bf16 on GPU) | {' | '.join(shown)}", choices=("auto", *PRECISIONS)
    )


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
    # overflow (the others go to -inf: the greedy limit), and softmax never sees inf - inf.
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
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


# --- int8 weights -----------------------------------------------------------------------------------------
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


# --- text in, text out --------------------------------------------------------------------------------------
def pick_device(device: str = "auto") -> torch.device:
    """auto, cpu, cuda, cuda:N or mps, and only one that this machine has."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    found = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", str(device))
    if found is None or (found.group(1) != "cuda" and found.group(2) is not None):
        raise UserError(f"device={device}: must be one of auto, cpu, cuda, cuda:N, mps")
    kind, index = found.group(1), found.group(2)
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device}: no CUDA device is available here: use device=cpu or device=auto")
    if kind == "cuda" and index is not None and int(index) >= torch.cuda.device_count():
        raise UserError(
            f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s): "
            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device={device}: MPS is not available here: use device=cpu or device=auto")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on GPUs that support it; int8 weights on CPUs, where a decode step is bound by
    reading every weight once: int8 weights sample faster than float32 at the same quality on CPUs with
    native bf16 (~3x, AVX512-BF16) and without (1.2x eager, 3x compiled, AVX2: docs/benchmarks.md)."""
    precision = str(precision)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "32"
        return "int8" if device.type == "cpu" and INT8_KERNEL else ("bf16" if device.type == "cpu" else "32")
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision}: must be one of auto, {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type == "cpu" and not INT8_KERNEL:
        print(
            f"note: this torch ({torch.__version__}) has no int8 CPU kernel: sampling with bf16 weights instead",
            file=sys.stderr,
        )
        return "bf16"
    return precision


COMPILE_PAYS = 20_000  # characters from which compile=auto compiles the decode step (see resolve_compile)


def resolve_compile(compile: bool | str, device: torch.device, chars: int) -> bool:
    """compile=auto by rule: compile the decode step when the generation is long enough to repay the
    warm-up. Measured on a 2-core CPU: the compile takes 20-50 s and saves 2.5-3 ms a character at the
    default and the seed sizes, so it pays from ~15,000 characters (COMPILE_PAYS, with a margin); the
    same rule on a GPU, unmeasured there. On a CPU without a C++ compiler (torch.compile's inductor
    needs one): never."""
    if compile != "auto":
        return bool(compile)
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++", "cl")):
        return False
    return chars >= COMPILE_PAYS


class TextGenerator:
    """A trained model and its tokenizer on one device, ready to write text.

    int8=True stores the blocks' weights as int8 (see Int8Linear); dtype is then bf16.
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: CharTokenizer,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        int8: bool = False,
        fast_norms: bool = True,
    ):
        self.num_params = model.num_params()
        self.model = model.to(device=device, dtype=dtype).eval()
        if int8:
            quantize_int8(self.model)
        if fast_norms and device.type == "cpu":
            two_op_norms(self.model)
        self.tokenizer, self.device, self.dtype, self.int8 = tokenizer, device, dtype, int8
        self.compiled = False

    @property
    def precision(self) -> str:
        return "int8 weights, bf16 activations" if self.int8 else str(self.dtype).removeprefix("torch.")

    def compile(self) -> TextGenerator:
        """torch.compile the forward that prefills and decodes; worth it for long generations on a
        GPU above all: the first call compiles."""
        self.compiled = True
        return self

    def encode_prompt(self, prompt: str, on_unknown: str = "error") -> list[int]:
        if on_unknown not in ("error", "skip"):
            raise UserError(f"on_unknown={on_unknown}: must be one of error, skip")
        unknown = self.tokenizer.unknown(prompt)
        if unknown and on_unknown == "error":
            shown = ", ".join(repr(c) for c in unknown)
            raise UserError(
                f"the prompt has {len(unknown)} character(s) not in the model's vocabulary: {shown}. "
                "Remove them, or pass on_unknown=skip to drop them."
            )
        skip = set(unknown)
        prompt = "".join(c for c in prompt if c not in skip)
        if not prompt:
            raise UserError("the prompt is empty (after dropping unknown characters): give at least one character")
        return self.tokenizer.encode(prompt)

    def stream(self, prompt: str = "\n", *, on_unknown: str = "error", **options) -> Iterator[str]:
        """Yield the new text one character at a time (the prompt is not repeated). A byte-level
        model's bytes are held until they complete a character (invalid ones come out as U+FFFD),
        and max_new_tokens counts bytes.

        options are SamplingOptions' (max_new_tokens, temperature, top_k, top_p, seed, slide).
        Bad options and prompts raise here, at the call, not at the first character."""
        opts = self.options(options)
        return self._new_chars(self.encode_prompt(prompt, on_unknown), opts)

    def options(self, options: dict[str, Any]) -> SamplingOptions:
        """SamplingOptions from keyword options, checked against this model too."""
        opts = build(SamplingOptions, options)
        w = self.model.config.block_size
        if opts.slide is not None and opts.slide > w:
            raise UserError(f"slide={opts.slide}: must be <= the model's block_size={w} (null: {max(1, w // 2)})")
        return opts

    def _new_chars(self, ids: list[int], opts: SamplingOptions) -> Iterator[str]:
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(opts.seed) if opts.seed is not None else generator.seed()
        decoder = self.tokenizer.stream_decoder()
        for nxt in generate_stream(
            self.model,
            idx,
            opts.max_new_tokens,
            opts.temperature,
            opts.top_k,
            opts.top_p,
            generator,
            opts.slide,
            compile=self.compiled,
        ):
            piece = decoder.feed(int(nxt[0]))
            if piece:
                yield piece
        if tail := decoder.flush():
            yield tail

    def generate(self, prompt: str = "\n", *, on_unknown: str = "error", **options) -> str:
        """The prompt (less any skipped characters) followed by max_new_tokens generated characters."""
        opts = self.options(options)
        ids = self.encode_prompt(prompt, on_unknown)
        return self.tokenizer.decode(ids) + "".join(self._new_chars(ids, opts))
