"""Text in, text out for scripts, notebooks, `sample` and `serve`: TextGenerator, and the rules that
pick the device, the precision and whether to compile.

    from lit_gpt_char import load_generator
    gen = load_generator("outputs/train/runs/<run>")      # or a .ckpt, or an export dir
    print(gen.generate("ROMEO:", max_new_tokens=200, seed=1))
    for piece in gen.stream("JULIET:", max_new_tokens=200):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import torch

from lit_gpt_char.core.cpu_decode import INT8_KERNEL, quantize_int8, two_op_norms
from lit_gpt_char.core.generation import SamplingOptions, generate_stream
from lit_gpt_char.core.model import GPT
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import build, option

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
