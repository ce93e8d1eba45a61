"""Write text with a trained model: `python -m lit_gpt_char.sample ckpt=PATH [prompt=...]`.

Samples go to stdout (separated clearly when there are several); diagnostics go to stderr,
so `... > samples.txt` captures only text. Needs only the checkpoint, and no Lightning.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # before the heavy imports: time to first character counts them

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from lit_gpt_char.errors import UserError, user_errors  # noqa: E402
from lit_gpt_char.generate import check_options, load_generator  # noqa: E402


def read_prompt(cfg: DictConfig) -> str:
    if cfg.prompt_file is None:
        return cfg.prompt
    path = Path(cfg.prompt_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"prompt_file={path} cannot be read as UTF-8 text: {e}") from None
    if not text:
        raise UserError(f"prompt_file={path} is empty: put some text in it, or pass prompt=... instead")
    return text


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@user_errors
def sample(cfg: DictConfig) -> list[str]:
    """Generate cfg.num_samples texts; return them (prompt included)."""
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise UserError("no checkpoint given: pass ckpt=<file.ckpt, a training run directory or an export directory>")
    check_options(cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.num_samples)
    prompt = read_prompt(cfg)
    gen = load_generator(cfg.ckpt, device=cfg.device, precision=cfg.precision, compile=cfg.compile)
    prompt_ids = gen.encode_prompt(prompt, cfg.on_unknown)
    prompt = gen.tokenizer.decode(prompt_ids)
    log(f"model: {gen.num_params / 1e6:.2f}M parameters, block size {gen.model.config.block_size}, "
        f"vocabulary {gen.tokenizer.vocab_size}, on {gen.device} ({gen.precision})")
    stream = sys.stdout.isatty() if cfg.stream is None else cfg.stream
    samples, first_char_at, n_chars, gen_time = [], None, 0, 0.0
    for i in range(cfg.num_samples):
        if cfg.num_samples > 1:
            print(f"{'=' * 20} sample {i + 1}/{cfg.num_samples} {'=' * 20}", flush=True)
        seed = None if cfg.seed is None else cfg.seed + i
        pieces = [prompt]
        if stream:
            print(prompt, end="", flush=True)
        t0 = time.perf_counter()
        for ch in gen.stream(prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, seed, "skip", cfg.slide):
            if first_char_at is None:
                first_char_at = time.perf_counter() - START
            pieces.append(ch)
            if stream:
                print(ch, end="", flush=True)
        gen_time += time.perf_counter() - t0
        n_chars += len(pieces) - 1
        text = "".join(pieces)
        samples.append(text)
        print("" if stream else text, flush=True)
    if cfg.out:
        sep = "\n" + "=" * 50 + "\n"
        Path(cfg.out).write_text(sep.join(samples), encoding="utf-8")
        log(f"wrote {len(samples)} sample(s) to {cfg.out}")
    if n_chars:
        log(f"{n_chars} characters in {gen_time:.2f}s: {n_chars / gen_time:.1f} characters/s; "
            f"first character {first_char_at:.2f}s after start")
    return samples


@hydra.main(version_base="1.3", config_path="pkg://lit_gpt_char.conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
