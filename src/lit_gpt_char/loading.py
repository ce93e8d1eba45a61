"""Finding and loading a model by the path a user gives: a Lightning checkpoint, a training run's
directory, `latest`, or an export directory — without importing Lightning.

This is where the training layer's file layout is known: Lightning's checkpoint dict (the
LightningModule's `model.` keys, ModelCheckpoint's score, the data module's record of its corpus)
and the run directories under paths.log_dir. core/ sees plain values only (core.checkpoint.load_state).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lit_gpt_char.core.checkpoint import Loaded, load_state, safe_load
from lit_gpt_char.core.exports import read_export
from lit_gpt_char.core.text_generator import PRECISIONS, TextGenerator, pick_device, resolve_compile, resolve_precision
from lit_gpt_char.errors import UserError

LATEST = "latest"  # ckpt=latest: the best checkpoint of the run that saved one last
LOG_DIR_ENV = "LIT_GPT_CHAR_LOG_DIR"
DATA_STATE_KEY = "TextDataModule"  # where a training checkpoint keeps Corpus.meta() (its data module's state)


def corpus_meta_of(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a training checkpoint records about its corpus (Corpus.meta); None for checkpoints
    written before it did."""
    meta = checkpoint.get(DATA_STATE_KEY)
    return meta if isinstance(meta, dict) and meta else None


def val_loss_of(path: Path) -> float | None:
    """The val loss a best-*.ckpt was kept for: ModelCheckpoint's score saved inside it, else the
    `val<loss>` in its name; None if neither says (or the file cannot be read)."""
    try:
        ckpt = safe_load(path)
        for key, state in (ckpt.get("callbacks") or {}).items():
            if str(key).startswith("ModelCheckpoint") and state.get("current_score") is not None:
                return float(state["current_score"])
    except (UserError, AttributeError, TypeError, ValueError):
        pass
    found = re.search(r"val(\d+(?:\.\d+)?)", path.name)
    return float(found.group(1)) if found else None


def log_dir_default() -> Path:
    """Where runs are: $LIT_GPT_CHAR_LOG_DIR, else ./outputs (the train command's paths.log_dir)."""
    return Path(os.environ.get(LOG_DIR_ENV) or "outputs")


def find_latest(log_dir: str | Path | None = None) -> Path:
    """ckpt=latest: the run directory under log_dir that saved a checkpoint last (runs and sweep jobs alike)."""
    root = Path(log_dir).expanduser() if log_dir is not None else log_dir_default()
    ckpts = [p for p in root.glob("**/checkpoints/*.ckpt") if p.is_file()] if root.is_dir() else []
    if not ckpts:
        raise UserError(
            f"ckpt=latest: no checkpoint under {root}: train a model first (python -m lit_gpt_char.train), "
            "pass log_dir=<the train command's paths.log_dir>, or pass ckpt=PATH"
        )
    return max(ckpts, key=lambda p: p.stat().st_mtime).parent.parent


def resolve_checkpoint(path: str | Path, log_dir: str | Path | None = None) -> Path:
    """A .ckpt file as given, or a run directory's best checkpoint: the lowest val loss among its
    best-*.ckpt (never simply the newest file), else its last.ckpt. `latest`: that of the run under
    log_dir that saved a checkpoint last."""
    if str(path) == LATEST:
        path = find_latest(log_dir)
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"ckpt={path} does not exist: pass a .ckpt file, a training run directory or ckpt=latest")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    scored = [(val_loss_of(p), p) for p in folder.glob("best-*.ckpt")]
    known = [(v, p) for v, p in scored if v is not None and math.isfinite(v)]
    if known:
        return min(known, key=lambda vp: (vp[0], -vp[1].stat().st_mtime))[1]
    if scored:
        return max(scored, key=lambda vp: vp[1].stat().st_mtime)[1]
    if (folder / "last.ckpt").is_file():
        return folder / "last.ckpt"
    raise UserError(
        f"no checkpoint in {path}: expected checkpoints/best-*.ckpt or checkpoints/last.ckpt inside a run directory"
    )


def _number(value: object) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def checkpoint_info(ckpt: dict) -> dict[str, Any]:
    """step and val loss of a Lightning checkpoint: the val loss its ModelCheckpoint saw last
    (the weights' own for best-*.ckpt), when there is one."""
    info: dict[str, Any] = {}
    if isinstance(ckpt.get("global_step"), int):
        info["step"] = ckpt["global_step"]
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and isinstance(state, dict) and state.get("monitor") == "val/loss":
            loss = _number(state.get("current_score"))
            loss = loss if loss is not None else _number(state.get("best_model_score"))
            if loss is not None and math.isfinite(loss):
                info["val_loss"] = loss
    return info


def module_weights(state_dict: Any) -> Any:
    """The GPT's weights in a LightningModule's state dict: its `model.` attribute's, named as GPT names them."""
    if not isinstance(state_dict, dict):
        return state_dict  # load_state says what is wrong with it
    return {k.removeprefix("model."): v for k, v in state_dict.items()}


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", log_dir: str | Path | None = None
) -> Loaded:
    """A Lightning checkpoint of ours (file, run directory or `latest`) -> config, tokenizer, weights."""
    path = resolve_checkpoint(path, log_dir)
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_config" not in ckpt or "tokenizer" not in ckpt:
        raise UserError(f"{path} is not a lit-gpt-char checkpoint (it lacks state_dict, model_config or tokenizer)")
    loaded = load_state({**ckpt, "state_dict": module_weights(ckpt["state_dict"])}, path, checkpoint_info(ckpt))
    loaded.corpus = corpus_meta_of(ckpt)
    return loaded


def load_any(path: str | Path, map_location: str | torch.device = "cpu", log_dir: str | Path | None = None) -> Loaded:
    """A .ckpt, a run directory, `latest` (see find_latest), an export directory (model.safetensors or
    model.pt, tokenizer.json, config.json; or a format=hf one), or an export's model.safetensors itself."""
    if str(path) != LATEST:
        p = Path(path).expanduser()
        exported = read_export(p.parent if p.is_file() and p.suffix == ".safetensors" else p, map_location)
        if exported is not None:
            return exported
    return load_checkpoint(path, map_location, log_dir)


def load_generator(
    path: str | Path | Loaded,
    device: str = "auto",
    precision: str = "auto",
    compile: bool | str = False,
    log_dir: str | Path | None = None,
    chars: int = 0,
    fast_norms: bool = True,
) -> TextGenerator:
    """A TextGenerator from a .ckpt, a run directory, an export directory (model.safetensors or model.pt,
    tokenizer.json, config.json), or `latest`: the run under log_dir that saved a checkpoint last.
    compile: true | false | auto (compile when `chars`, the characters to be generated, repay it);
    fast_norms=False keeps the model's own norms (evaluate: scores exactly as training computed them)."""
    loaded = path if isinstance(path, Loaded) else load_any(path, log_dir=log_dir)
    dev = pick_device(device)
    precision = resolve_precision(precision, dev)
    dtype, int8 = PRECISIONS[precision], precision == "int8"
    gen = TextGenerator(loaded.build(), loaded.tokenizer, dev, dtype, int8=int8, fast_norms=fast_norms)
    return gen.compile() if resolve_compile(compile, dev, chars) else gen
