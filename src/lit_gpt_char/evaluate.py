"""Score a trained model on text: `python -m lit_gpt_char.evaluate ckpt=PATH [text=FILE] [stride=N]`.

Loss (nats per character), bits per character, perplexity and the number of characters scored,
on the checkpoint's own val split by default (the checkpoint records its corpus, sha256 and
splits) or on any UTF-8 file. A table goes to stderr; stdout gets one JSON line, so
`... > result.json` keeps only the numbers. Needs only the checkpoint (and the text), no Lightning.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from lit_gpt_char.config import register, run
from lit_gpt_char.core.checkpoint import Loaded
from lit_gpt_char.core.corpus import DATA_DIR_ENV, SPLITS, split_ids
from lit_gpt_char.core.evaluation import Score, read_text, score
from lit_gpt_char.errors import UserError
from lit_gpt_char.helptext import help_text
from lit_gpt_char.loading import load_any, load_generator
from lit_gpt_char.options import Options, build, option


@dataclass
class EvaluateConfig(Options):
    """The options of `python -m lit_gpt_char.evaluate`."""

    ckpt: str = option("???", "a .ckpt file, a training run directory (its best checkpoint) or an export directory")
    text: str | None = option(None, "score this UTF-8 file; null: a split of the corpus the checkpoint was trained on")
    split: str | None = option(
        None, "with text=null: which split of the checkpoint's corpus to score; null: val", choices=SPLITS
    )
    stride: int | None = option(
        None,
        "null: consecutive windows of block_size, as training's val/loss; N: sliding windows every N "
        "characters, every character scored once with at least block_size - N + 1 characters of context",
        ge=1,
    )
    precision: str = option(
        "32",
        "32 | bf16 (bf16 weights) | int8 (int8 weights, bf16 activations, as sampling on CPUs)",
        choices=("32", "bf16", "int8"),
    )
    batch_size: int = option(32, "windows per forward pass (the result does not depend on it)", ge=1, le=1 << 20)
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    on_unknown: str = option(
        "error", "characters of text= the model has never seen: error | skip (drop them)", choices=("error", "skip")
    )

    def check(self) -> None:
        if self.text is not None and self.split is not None:
            raise UserError(
                f"split={self.split} and text={self.text}: give one of them (split scores the checkpoint's own corpus)"
            )


register("evaluate", EvaluateConfig)


def log(msg: str = "") -> None:
    print(msg, file=sys.stderr, flush=True)


def text_ids(cfg: EvaluateConfig, loaded: Loaded) -> tuple[Any, dict[str, Any]]:
    """The ids to score and what they are (for the table and the JSON line)."""
    tok = loaded.tokenizer
    if cfg.text is None:
        return corpus_split(cfg.split or "val", loaded)
    text = read_text(cfg.text, "text")
    unknown = tok.unknown(text)
    if unknown and cfg.on_unknown == "error":
        shown = ", ".join(repr(c) for c in unknown[:20]) + (
            f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        )
        raise UserError(
            f"text={cfg.text}: {len(unknown)} character(s) not in the model's vocabulary: {shown}. "
            "Pass on_unknown=skip to drop them, or score text the model can read"
        )
    kept = "".join(c for c in text if c in tok.stoi) if unknown else text
    if len(kept) < 2:
        what = "after dropping unknown characters, " if unknown else ""
        raise UserError(
            f"text={cfg.text}: {what}it has {len(kept)} character(s); scoring needs at least 2 "
            "(the first is only read, every later one is predicted)"
        )
    return tok.encode_tensor(kept), {
        "source": str(Path(cfg.text).expanduser()),
        "split": None,
        "text": str(Path(cfg.text).expanduser()),
        "corpus": None,
        "skipped": len(text) - len(kept),
    }


def corpus_split(split: str, loaded: Loaded) -> tuple[Any, dict[str, Any]]:
    """The ids of `split` of the corpus the checkpoint was trained on, cut as training cut them
    (core.corpus.split_ids over the recorded data config), from the recorded file if it is still
    there, else the same name in $LIT_GPT_CHAR_DATA_DIR or ./data, else (a downloaded corpus) where
    training keeps it; checked to be the very text and vocabulary the model was trained on."""
    meta = loaded.corpus
    if not meta or not isinstance(meta.get("data"), dict):
        raise UserError(
            f"ckpt={loaded.source}: the checkpoint does not record which corpus it was trained on (an export, or "
            "a checkpoint from an older lit-gpt-char): pass text=FILE to score a text file"
        )
    data = dict(meta["data"])
    name = str(meta.get("corpus", ""))
    candidates = [Path(p) for p in (data.get("path"), meta.get("file")) if p]
    candidates += [Path(d) / name for d in (os.environ.get(DATA_DIR_ENV), "data") if d and name]
    found = next((p for p in candidates if p.is_file()), None)
    if found is not None:
        data["path"] = str(found)
    elif data.get("path"):
        raise UserError(
            f"ckpt={loaded.source} was trained on {data['path']}, which is not there (nor {name} in "
            f"${DATA_DIR_ENV} or ./data): put it back, or pass text=FILE to score another text file"
        )
    if split == "test" and not data.get("test_size"):
        raise UserError(
            f"split=test: ckpt={loaded.source} was trained with data.test_size={data.get('test_size', 0)}, which "
            "holds out no test split: train with data.test_size=N (tokens at the end of the corpus, taken from "
            "training) or a benchmark config (data=enwik8, data=text8), or score split=val"
        )
    s = split_ids(data, split)
    if meta.get("sha256") and s.meta["sha256"] != meta["sha256"]:
        raise UserError(
            f"the corpus {s.meta['file']} is not the text ckpt={loaded.source} was trained on (sha256 "
            f"{s.meta['sha256'][:12]}..., recorded {str(meta['sha256'])[:12]}...): restore that file, or pass "
            "text=FILE to score it as any text"
        )
    if s.tokenizer != loaded.tokenizer:
        raise UserError(
            f"ckpt={loaded.source}: the corpus {s.meta['file']} gives another vocabulary than the "
            "model's: pass text=FILE to score it as any text"
        )
    n_train, n_val, _ = (s.meta["splits"][k] for k in ("train", "val", "test"))
    start = {"train": 0, "val": n_train, "test": n_train + n_val}[split]
    return s.ids, {
        "source": f"the {split} split of {s.meta['file']} (tokens {start:,} to {start + len(s.ids):,})",
        "split": split,
        "text": None,
        "corpus": s.meta["file"],
        "skipped": 0,
    }


def scoring_words(stride: int | None, block_size: int) -> str:
    """Which scoring, in words: a target predicted from the i characters before it has context i."""
    if stride is None:
        return (
            f"consecutive windows of {block_size} characters, each character with the context of its window "
            f"(1 to {block_size} characters): as training's val/loss"
        )
    return (
        f"sliding windows of {block_size} characters every {stride}: every character with at least "
        f"{block_size - stride + 1} characters of context (fewer only in the first {block_size})"
    )


def evaluate(raw: DictConfig | EvaluateConfig) -> dict[str, Any]:
    """Score cfg.ckpt on its val split (or cfg.split, or cfg.text); print the table and the JSON line;
    return the result as a dict. Ctrl-C: one line and exit status 130, no traceback."""
    cfg = build(EvaluateConfig, raw)
    try:
        return _evaluate(cfg)
    except KeyboardInterrupt:
        log("interrupted: nothing was scored")
        sys.exit(130)


def _evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    loaded = load_any(cfg.ckpt)
    block_size = loaded.config.block_size
    if cfg.stride is not None and cfg.stride > block_size:
        raise UserError(
            f"stride={cfg.stride}: must be in [1, block_size={block_size}] (the model's context), "
            "or null for consecutive windows"
        )
    ids, what = text_ids(cfg, loaded)
    if len(ids) < 2:
        raise UserError(f"{what['source']}: has {len(ids)} character(s); scoring needs at least 2")
    gen = load_generator(loaded, device=cfg.device, precision=cfg.precision, fast_norms=False)
    t0 = time.perf_counter()
    try:
        result = _score_with_progress(gen.model, ids, cfg)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "memory" not in str(e):
            raise
        raise UserError(
            f"batch_size={cfg.batch_size}: out of memory on {gen.device}: use a smaller batch_size"
        ) from None
    seconds = time.perf_counter() - t0
    out = {
        "loss": result.loss,
        "bpc": result.bpc,
        "ppl": result.ppl,
        "chars": result.chars,
        "scoring": "consecutive" if cfg.stride is None else "sliding",
        "stride": cfg.stride,
        "block_size": block_size,
        "precision": cfg.precision,
        "device": str(gen.device),
        "ckpt": str(loaded.source),
        **what,
        "seconds": round(seconds, 3),
    }
    _table(out, gen.precision, cfg)
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}
    try:
        print(json.dumps(finite, ensure_ascii=False), flush=True)  # strict JSON: a diverged model's NaN is null
    except BrokenPipeError:  # `| head -0`: nobody reads stdout; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    return out


def _score_with_progress(model: Any, ids: Any, cfg: EvaluateConfig) -> Score:
    if not sys.stderr.isatty():
        return score(model, ids, cfg.batch_size, cfg.stride)
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("scoring", total=None)
        return score(
            model, ids, cfg.batch_size, cfg.stride, lambda done, total: bar.update(task, completed=done, total=total)
        )


def _table(out: dict[str, Any], precision: str, cfg: EvaluateConfig) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="evaluate", title_justify="left", show_header=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")  # paths whole, never cut with an ellipsis
    t.add_row("checkpoint", out["ckpt"])
    t.add_row("scored", out["source"])
    t.add_row("scoring", scoring_words(cfg.stride, out["block_size"]))
    t.add_row("precision", f"{precision} on {out['device']}")
    skipped = f" ({out['skipped']:,} unknown characters dropped)" if out["skipped"] else ""
    t.add_row("characters", f"{out['chars']:,}{skipped}")
    t.add_row("loss", f"{out['loss']:.4f} nats/character")
    t.add_row("bits per character", f"{out['bpc']:.4f}")
    t.add_row("perplexity", f"{out['ppl']:.3f}")
    t.add_row("time", f"{out['seconds']:.1f} s ({out['chars'] / max(out['seconds'], 1e-9):,.0f} characters/s)")
    Console(stderr=True, soft_wrap=False).print(t)


def usage() -> str:
    """`lit-gpt-char evaluate --help`: this command's options, from EvaluateConfig."""
    return help_text(
        "lit-gpt-char evaluate: loss, bits per character and perplexity of a checkpoint (a table to stderr, "
        "one JSON line to stdout).",
        "lit-gpt-char evaluate ckpt=PATH|latest [split=val|train|test | text=FILE] [stride=N] [key=value ...]",
        [("", EvaluateConfig)],
        notes=[
            "Without text=, it scores a split of the corpus the checkpoint was trained on (its record of the "
            "file, sha256 and splits)."
        ],
    )


main = run("evaluate", evaluate, help=usage)

if __name__ == "__main__":
    main()
