"""Write text with a trained model: `python -m lit_gpt_char.sample ckpt=PATH [prompt=...]`.

Samples go to stdout (separated clearly when there are several); diagnostics go to stderr,
so `... > samples.txt` captures only text. Needs only the checkpoint, and no Lightning.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before the heavy imports: time to first character counts them

import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from omegaconf import DictConfig  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lit_gpt_char.config import register, run  # noqa: E402
from lit_gpt_char.console import check_output_file  # noqa: E402
from lit_gpt_char.core.generation import SamplingOptions  # noqa: E402
from lit_gpt_char.core.text_generator import precision_option  # noqa: E402
from lit_gpt_char.errors import UserError  # noqa: E402
from lit_gpt_char.files import atomic_write_text  # noqa: E402
from lit_gpt_char.helptext import help_text  # noqa: E402
from lit_gpt_char.loading import load_any, load_generator  # noqa: E402
from lit_gpt_char.options import build, option  # noqa: E402


@dataclass
class SampleConfig(SamplingOptions):
    """The options of `python -m lit_gpt_char.sample` (SamplingOptions' and these)."""

    ckpt: str = option(
        "???",
        "a .ckpt file, a training run directory (its best checkpoint), an export directory, or latest "
        "(the best checkpoint of the run under log_dir that saved one last)",
    )
    log_dir: str | None = option(
        None, "where ckpt=latest looks: the train command's paths.log_dir; null: $LIT_GPT_CHAR_LOG_DIR, else outputs"
    )
    prompt: str = option("\n", "the text to continue")
    prompt_file: str | None = option(None, "read the prompt from this UTF-8 file instead (must not be empty)")
    on_unknown: str = option(
        "error", "prompt characters the model has never seen: error | skip", choices=("error", "skip")
    )
    num_samples: int = option(1, "samples to write, each from seed + i", ge=1, le=100_000)
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    precision: str = precision_option()
    compile: Any = option(
        "auto",
        "torch.compile the decode step: true | false | auto (when max_new_tokens x num_samples >= 20000, "
        "where its 20-50 s warm-up pays: 2-3x faster per character after it)",
    )
    stream: bool | None = option(None, "print characters as they come; null: when stdout is a terminal")
    progress: bool | None = option(
        None, "a progress bar on stderr; null: when not streaming, stderr is a terminal and it takes over 1 s"
    )
    out: str | None = option(None, "also write the samples to this file")

    def check(self) -> None:
        super().check()
        if self.compile not in (True, False, "auto"):
            raise UserError(f"compile={self.compile}: must be auto, true or false")


register("sample", SampleConfig)


def read_prompt(cfg: SampleConfig) -> str:
    if cfg.prompt_file is None:
        return cfg.prompt
    path = Path(cfg.prompt_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"prompt_file={path}: cannot be read as UTF-8 text: {e}") from None
    if not text:
        raise UserError(f"prompt_file={path}: is empty: put some text in it, or pass prompt=... instead")
    return text


def reader_gone(cfg: SampleConfig) -> bool:
    """stdout's reader closed the pipe, and there is no out= file to finish writing for."""
    return getattr(sys.stdout, "closed_pipe", False) and not cfg.out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def progress_bar(cfg: SampleConfig, stream: bool) -> tqdm:
    """Characters written so far, on stderr: for text going to a file or a pipe, where nothing else shows
    progress; never beside text streaming to the terminal. Unasked, it appears only after 1 s."""
    show = (not stream and sys.stderr.isatty()) if cfg.progress is None else cfg.progress
    return tqdm(
        total=cfg.max_new_tokens * cfg.num_samples,
        unit="char",
        file=sys.stderr,
        disable=not show,
        delay=1.0 if cfg.progress is None else 0.0,
        leave=False,
        dynamic_ncols=True,
    )


def sample(raw: DictConfig | SampleConfig) -> list[str]:
    """Generate cfg.num_samples texts; return them (prompt included)."""
    cfg = build(SampleConfig, raw)
    if cfg.out:
        check_output_file(cfg.out, "out")
    prompt = read_prompt(cfg)
    loaded = load_any(cfg.ckpt, log_dir=cfg.log_dir)
    chars = cfg.max_new_tokens * cfg.num_samples
    gen = load_generator(loaded, device=cfg.device, precision=cfg.precision, compile=cfg.compile, chars=chars)
    prompt_ids = gen.encode_prompt(prompt, cfg.on_unknown)
    prompt = gen.tokenizer.decode(prompt_ids)
    log(
        f"model: {gen.num_params / 1e6:.2f}M parameters, block size {gen.model.config.block_size}, "
        f"vocabulary {gen.tokenizer.vocab_size}, on {gen.device} ({gen.precision}"
        f"{', compiled decode step' if gen.compiled else ''}), from {loaded.source}"
    )
    # Into a file or a pipe, text is written as it is generated (buffered: a reader that goes away,
    # `... | head`, ends the run quietly); `stream` flushes every character for a terminal watching.
    # On a terminal without stream, each sample appears whole, where the progress bar was.
    stream = sys.stdout.isatty() if cfg.stream is None else cfg.stream
    live = stream or not sys.stdout.isatty()
    bar = progress_bar(cfg, stream)
    samples, first_char_at, n_chars, gen_time = [], None, 0, 0.0
    for i in range(cfg.num_samples):
        if reader_gone(cfg):
            break
        if cfg.num_samples > 1:
            print(f"{'=' * 20} sample {i + 1}/{cfg.num_samples} {'=' * 20}", flush=stream)
        seed = None if cfg.seed is None else (cfg.seed + i) % 2**64
        pieces = [prompt]
        if live:
            sys.stdout.write(prompt)
        t0 = time.perf_counter()
        for ch in gen.stream(
            prompt,
            on_unknown="skip",
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            seed=seed,
            slide=cfg.slide,
        ):
            if first_char_at is None:
                first_char_at = time.perf_counter() - START
            pieces.append(ch)
            bar.update()
            if live:
                sys.stdout.write(ch)
            if stream:
                sys.stdout.flush()
            if reader_gone(cfg):
                break
        gen_time += time.perf_counter() - t0
        n_chars += len(pieces) - 1
        text = "".join(pieces)
        samples.append(text)
        if not live:
            bar.clear()  # the text goes where the bar is when both are on a terminal
        print("" if live else text, flush=True)
    bar.close()
    if cfg.out:
        sep = "\n" + "=" * 50 + "\n"
        atomic_write_text(Path(cfg.out), sep.join(samples))
        log(f"wrote {len(samples)} sample(s) to {cfg.out}")
    if n_chars:
        log(
            f"{n_chars} characters in {gen_time:.2f}s: {n_chars / gen_time:.1f} characters/s; "
            f"first character {first_char_at:.2f}s after start"
        )
    return samples


def usage() -> str:
    """`lit-gpt-char sample --help`: this command's options, from SampleConfig."""
    return help_text(
        "lit-gpt-char sample: write text with a trained model (text to stdout, diagnostics to stderr).",
        "lit-gpt-char sample ckpt=PATH|latest [key=value ...]   (or python -m lit_gpt_char.sample ...)",
        [("", SampleConfig)],
        notes=["Quote a value with spaces for the shell and for Hydra: \"prompt='Wherefore art thou'\"."],
    )


main = run("sample", sample, help=usage)

if __name__ == "__main__":
    main()
