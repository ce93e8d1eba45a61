"""Checkpoint files: written atomically, loaded safely, exported as plain files.

Every load goes through `torch.load(weights_only=True)`: a file whose pickle would build
arbitrary objects (and so could run code) is refused before anything in it runs. What loads
is then checked to be ours: a model config, a tokenizer and a state dict that fit together.
Every write goes to a temporary file that replaces the target only once complete.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import build

WEIGHTS_FILE, TOKENIZER_FILE, CONFIG_FILE = "model.pt", "tokenizer.json", "config.json"


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save(obj, path) through a temporary file in the same directory, flushed, fsynced and
    renamed over path (an atomic step on POSIX): path is always the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass
class Loaded:
    """A model's config, tokenizer and weights (state dict keys as in `GPT`); `corpus`: what a
    training checkpoint records of the corpus it was trained on (None for exports and older files)."""

    config: GPTConfig
    tokenizer: CharTokenizer
    state_dict: dict[str, torch.Tensor]
    source: Path
    corpus: dict[str, Any] | None = None

    def build(self) -> GPT:
        model = GPT(self.config)
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        if missing or unexpected:
            raise UserError(
                f"{self.source}: the weights do not fit the model config "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}): is it from another version of lit-gpt-char?"
            )
        return model.eval()


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> object:
    """torch.load(weights_only=True), with every way a file can be bad turned into a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist: pass ckpt=<file.ckpt or run directory>")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file")
    try:
        # mmap: tensors are read when used, so checking a checkpoint before training resumes
        # from it (which loads it again) costs next to nothing.
        return torch.load(path, map_location=map_location, weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        # weights_only refuses any pickle that would import and call something: say which.
        found = re.search(r"(?i)unsupported global:? (?:GLOBAL )?([\w.]+)", str(e))
        if found:
            raise UserError(
                f"refused to load {path}: it asks to call or build {found.group(1)}, which could run code. "
                "lit-gpt-char's checkpoints hold plain values only; load files only from "
                "sources you trust."
            ) from None
        raise UserError(f"cannot read {path}: it is corrupt, truncated or not a PyTorch checkpoint") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(
            f"cannot read {path}: it is corrupt, truncated or not a PyTorch checkpoint "
            f"({type(e).__name__}: {str(e)[:150]})"
        ) from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A .ckpt file as given, or a run directory's best checkpoint (else its last.ckpt)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"ckpt={path} does not exist: pass a .ckpt file or a training run directory")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if best:
        return best[-1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise UserError(
        f"no checkpoint in {path}: expected checkpoints/best-*.ckpt or checkpoints/last.ckpt inside a run directory"
    )


def _strip(state_dict: dict) -> dict[str, torch.Tensor]:
    """Keys of the bare GPT: drop the LightningModule's `model.` and torch.compile's `_orig_mod.`."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("model."):
            key = key[len("model.") :]
        out[key.replace("_orig_mod.", "")] = value
    return out


def model_config(values: object, source: Path) -> GPTConfig:
    """The GPTConfig a file describes; UserError naming the file if it is not one."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: its model config is not a mapping of options: {str(values)[:80]}")
    try:
        return build(GPTConfig, values)
    except UserError as e:
        raise UserError(f"{source}: its model config is invalid: {e}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Loaded:
    """A Lightning checkpoint of ours (file or run directory) -> config, tokenizer, weights."""
    path = resolve_checkpoint(path)
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_config" not in ckpt or "tokenizer" not in ckpt:
        raise UserError(f"{path} is not a lit-gpt-char checkpoint (it lacks state_dict, model_config or tokenizer)")
    config = model_config(ckpt["model_config"], path)
    tokenizer = CharTokenizer.from_dict(ckpt["tokenizer"])
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} characters but the model was built for "
            f"{config.vocab_size}: the checkpoint was edited or mixed up"
        )
    corpus = ckpt.get("corpus")
    return Loaded(config, tokenizer, _strip(ckpt["state_dict"]), path, corpus if isinstance(corpus, dict) else None)


def load_exported(
    weights: str | Path, tokenizer: str | Path, config: str | Path | dict | None = None, n_head: int | None = None
) -> Loaded:
    """A plain state dict plus a seed-format tokenizer.json (and config.json if there is one).

    Without a config, sizes are read off the weights' shapes; only n_head cannot be, so pass it.
    """
    state_dict = safe_load(weights)
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{weights} is not a state dict (a mapping of names to tensors)")
    state_dict = _strip(state_dict)
    tok = CharTokenizer.load(tokenizer)
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    if config is None:
        if n_head is None:
            raise UserError(f"no {CONFIG_FILE} beside {weights}: pass n_head (it cannot be read off the weights)")
        try:
            config = {
                "vocab_size": state_dict["wte.weight"].shape[0],
                "n_embd": state_dict["wte.weight"].shape[1],
                "block_size": state_dict["wpe.weight"].shape[0],
                "n_layer": 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")),
                "n_head": n_head,
                "bias": "ln_f.bias" in state_dict,
                "dropout": 0.0,
            }
        except (KeyError, ValueError):
            raise UserError(f"{weights} is not a lit-gpt-char GPT state dict (no wte/wpe/blocks weights)") from None
    cfg = model_config(config, Path(weights))
    if tok.vocab_size != cfg.vocab_size:
        raise UserError(
            f"the tokenizer {tokenizer} has {tok.vocab_size} characters but the weights {weights} are for a "
            f"vocabulary of {cfg.vocab_size}: pass the tokenizer.json the model was trained with"
        )
    return Loaded(cfg, tok, state_dict, Path(weights))


def export(ckpt: str | Path, out_dir: str | Path) -> Path:
    """Write model.pt (plain state dict), tokenizer.json (seed format) and config.json into out_dir."""
    loaded = load_checkpoint(ckpt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save(loaded.state_dict, out / WEIGHTS_FILE)
    loaded.tokenizer.save(out / TOKENIZER_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(loaded.config.to_dict(), indent=1))
    return out


def load_any(path: str | Path, map_location: str | torch.device = "cpu") -> Loaded:
    """A .ckpt, a run directory, or an export directory (model.pt + tokenizer.json [+ config.json])."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / WEIGHTS_FILE).is_file() and (p / TOKENIZER_FILE).is_file():
        cfg = p / CONFIG_FILE
        return load_exported(p / WEIGHTS_FILE, p / TOKENIZER_FILE, cfg if cfg.is_file() else None)
    return load_checkpoint(p, map_location)
