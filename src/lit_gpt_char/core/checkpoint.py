"""Checkpoint files: written atomically, loaded safely, exported as plain files.

Every load goes through `torch.load(weights_only=True)` or safetensors: a file whose pickle would
build arbitrary objects (and so could run code) is refused before anything in it runs. What loads
is then checked to be ours: a model config, a tokenizer and a state dict that fit together (every
tensor's name and shape), or one `error:` line naming the file and the tensor. Every write goes to
a temporary file that replaces the target only once complete.

An export directory holds model.safetensors (the weights; the head tied to the token embedding
is stored once), config.json (the GPTConfig) and tokenizer.json (the seed's format). Exports
written before safetensors hold model.pt (a plain state dict) instead; they load the same way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from lit_gpt_char.core.corpus import corpus_meta_of
from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import build

WEIGHTS_FILE = "model.safetensors"  # what export writes
LEGACY_WEIGHTS_FILE = "model.pt"  # what exports held before: a plain state dict, still read
TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "config.json"
EXPORT_FILES = (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE)
LATEST = "latest"  # ckpt=latest: the best checkpoint of the run that saved one last
LOG_DIR_ENV = "LIT_GPT_CHAR_LOG_DIR"
# GPT ties its head to its token embedding: one matrix, two names. Files store it once.
TIED = {"lm_head.weight": "wte.weight"}
# What a weights file without a config.json holds: exports from before the model had options (and
# before config.json), all of GPT-2's parts; only their sizes are read off the weights.
LEGACY_PARTS = {
    "pos_emb": "learned",
    "norm": "layernorm",
    "qk_norm": False,
    "mlp": "gelu",
    "tie_embeddings": True,
    "zero_init": False,
}


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """write(f) into a temporary file in path's directory, flushed, fsynced and renamed over path
    (an atomic step on POSIX): path is always the old file or the new, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def atomic_write_text(path: Path, text: str) -> None:
    """path.write_text(text), atomically (see _atomic_write)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save(obj, path), atomically (see _atomic_write). A write that fails (a full disk, a quota, a
    file-size limit) raises its OSError, not the RuntimeError torch's zip writer wraps it in."""

    def write(f: IO[bytes]) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            cause = e.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise

    _atomic_write(path, write)


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write data to path atomically (see _atomic_write)."""
    _atomic_write(path, lambda f: f.write(data))


@dataclass
class Loaded:
    """A model's config, tokenizer and weights (state dict keys as in `GPT`), checked to fit together.

    info: what is known of the weights' training (step, val_loss), for people to read; corpus: what a
    training checkpoint records of the corpus it was trained on (core.corpus.Corpus.meta; None for
    exports and older files)."""

    config: GPTConfig
    tokenizer: CharTokenizer
    state_dict: dict[str, torch.Tensor]
    source: Path
    config_source: str = "its model config"  # where the config came from, as errors name it
    info: dict[str, Any] = field(default_factory=dict)
    corpus: dict[str, Any] | None = None
    _model: GPT | None = field(default=None, repr=False, compare=False)  # what check() made, for build()

    def check(self) -> Loaded:
        """Every tensor the config asks for, of the shape it asks for, and no other: else a UserError
        naming the file and the first tensor that does not fit. The model it checks against is the one
        build() then loads the weights into (not a meta model: making one imports the compiler)."""
        bad = [k for k, v in self.state_dict.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise UserError(f"{self.source}: {bad[0]} is not a tensor: the file is not a state dict of lit-gpt-char")
        self._model = GPT(self.config)
        expected = self._model.state_dict()
        missing = [k for k in expected if k not in self.state_dict]
        unexpected = [k for k in self.state_dict if k not in expected]
        if missing or unexpected:
            raise UserError(
                f"{self.source}: the weights do not fit {self.config_source} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}): is it from another version of lit-gpt-char?"
            )
        for key, want in expected.items():
            got = self.state_dict[key]
            if got.shape != want.shape:
                raise UserError(
                    f"{self.source}: tensor {key} has shape {list(got.shape)} but {self.config_source} "
                    f"({_sizes(self.config)}) needs {list(want.shape)}: the config and the weights do not belong "
                    "together"
                )
        if self.config.tie_embeddings:
            for name, twin in TIED.items():
                if not _same(self.state_dict[name], self.state_dict[twin]):
                    raise UserError(
                        f"{self.source}: {self.config_source} says tie_embeddings=true, but {name} differs from "
                        f"{twin}: the weights are of an untied model (tie_embeddings=false)"
                    )
        bad = next(
            (k for k, v in self.state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()), None
        )
        if bad is not None:
            raise UserError(
                f"{self.source}: its weights hold NaN or infinite values ({bad}): it was saved by a "
                "run that diverged; sample from an earlier checkpoint"
            )
        return self

    def build(self) -> GPT:
        """The GPT in eval mode, with these weights."""
        self.check()
        model, self._model = self._model, None
        model.load_state_dict(self.state_dict)
        return model.eval()

    def facts(self) -> dict[str, Any]:
        """What a person wants to know of the model: size, training step, val loss, where it came from."""
        tied = tied_names(self.state_dict)  # a tied matrix counts once; an untied head is its own
        n = sum(v.numel() for k, v in self.state_dict.items() if k not in tied)
        c = self.config
        return {
            "params": n,
            "layers": c.n_layer,
            "heads": c.n_head,
            "width": c.n_embd,
            "block_size": c.block_size,
            "vocab_size": c.vocab_size,
            "step": self.info.get("step"),
            "val_loss": self.info.get("val_loss"),
            "source": str(self.source),
        }


def _sizes(cfg: GPTConfig) -> str:
    return f"vocab_size={cfg.vocab_size}, block_size={cfg.block_size}, n_layer={cfg.n_layer}, n_embd={cfg.n_embd}"


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


def _strip(state_dict: dict) -> dict[str, torch.Tensor]:
    """Keys of the bare GPT: drop the LightningModule's `model.` and torch.compile's `_orig_mod.`."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith("model."):
            key = key[len("model.") :]
        out[key.replace("_orig_mod.", "")] = value
    return out


def model_config(values: object, source: str | Path) -> GPTConfig:
    """The GPTConfig a file describes; UserError naming the file if it is not one."""
    if not isinstance(values, dict):
        kind = "a list" if isinstance(values, list) else type(values).__name__
        raise UserError(
            f"{source}: its model config must be a mapping of options (vocab_size, n_layer, ...), got {kind}: "
            f"{str(values)[:80]}"
        )
    try:
        return build(GPTConfig, values)
    except UserError as e:
        raise UserError(f"{source}: its model config is invalid: {e}") from None


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


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", log_dir: str | Path | None = None
) -> Loaded:
    """A Lightning checkpoint of ours (file, run directory or `latest`) -> config, tokenizer, weights."""
    path = resolve_checkpoint(path, log_dir)
    ckpt = safe_load(path, map_location)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model_config" not in ckpt or "tokenizer" not in ckpt:
        raise UserError(f"{path} is not a lit-gpt-char checkpoint (it lacks state_dict, model_config or tokenizer)")
    if not isinstance(ckpt["state_dict"], dict):
        raise UserError(f"{path}: its state_dict is not a mapping of names to tensors")
    config = model_config(ckpt["model_config"], path)
    try:
        tokenizer = CharTokenizer.from_dict(ckpt["tokenizer"])
    except UserError as e:
        raise UserError(f"{path}: its tokenizer is invalid: {e}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} characters but the model was built for "
            f"{config.vocab_size}: the checkpoint was edited or mixed up"
        )
    return Loaded(
        config,
        tokenizer,
        _strip(ckpt["state_dict"]),
        path,
        "its model_config",
        checkpoint_info(ckpt),
        corpus_meta_of(ckpt),
    ).check()


def read_config_json(path: str | Path) -> dict:
    """config.json as a mapping; UserError naming the file if it is not JSON or not an object."""
    path = Path(path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(values, dict):
        kind = "a list" if isinstance(values, list) else f"a {type(values).__name__}"
        raise UserError(f"{path}: must be a JSON object of model options (vocab_size, n_layer, ...), not {kind}")
    return values


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() or (a.shape == b.shape and torch.equal(a, b))


def tied_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names in TIED whose tensor is its twin's (one matrix under two names)."""
    return [
        k
        for k, twin in TIED.items()
        if k in state_dict and twin in state_dict and _same(state_dict[k], state_dict[twin])
    ]


def _untie(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with each tied matrix stored once (safetensors refuses two names for one tensor);
    a head that is not tied (its own values) is kept."""
    tied = tied_names(state_dict)
    return {k: v for k, v in state_dict.items() if k not in tied}


def _tie(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Give a tied matrix its second name back (files store it once)."""
    for name, twin in TIED.items():
        if name not in state_dict and twin in state_dict:
            state_dict[name] = state_dict[twin]
        elif twin not in state_dict and name in state_dict:
            state_dict[twin] = state_dict[name]
    return state_dict


def read_safetensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a .safetensors file; UserError if it is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118 (not a dict)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(
            f"cannot read {path}: it is corrupt, truncated or not a safetensors file ({str(e)[:150]})"
        ) from None


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of model.safetensors or a legacy model.pt (a plain state dict)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors, meta = read_safetensors(path, map_location)
    else:
        tensors, meta = safe_load(path, map_location), {}
        if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
            raise UserError(f"{path} is not a state dict (a mapping of names to tensors)")
    return _tie(_strip(tensors)), meta


def _info_from_metadata(meta: dict) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for key, kind in (("step", int), ("val_loss", float)):
        with contextlib.suppress(KeyError, ValueError):
            info[key] = kind(meta[key])
    return info


def load_exported(
    weights: str | Path,
    tokenizer: str | Path,
    config: str | Path | dict | None = None,
    n_head: int | None = None,
    map_location: str | torch.device = "cpu",
) -> Loaded:
    """Weights (model.safetensors or a plain state dict) plus a seed-format tokenizer.json (and
    config.json if there is one).

    Without a config, sizes are read off the weights' shapes; only n_head cannot be, so pass it.
    """
    weights = Path(weights)
    state_dict, meta = load_weights(weights, map_location)
    tok = CharTokenizer.load(tokenizer)
    config_source: str | Path = "the sizes read off the weights"
    if isinstance(config, (str, Path)):
        config_source = Path(config)
        config = read_config_json(config)
    elif isinstance(config, dict):
        config_source = "the model config given"
    if config is None:
        if n_head is None:
            raise UserError(f"no {CONFIG_FILE} beside {weights}: pass n_head (it cannot be read off the weights)")
        if "wte.weight" in state_dict and "wpe.weight" not in state_dict:
            raise UserError(
                f"no {CONFIG_FILE} beside {weights}, and its weights are not GPT-2's parts (no position table), "
                f"so their options cannot be read off them: put the {CONFIG_FILE} exported with them beside it"
            )
        try:
            config = {
                "vocab_size": state_dict["wte.weight"].shape[0],
                "n_embd": state_dict["wte.weight"].shape[1],
                "block_size": state_dict["wpe.weight"].shape[0],
                "n_layer": 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")),
                "n_head": n_head,
                "bias": "ln_f.bias" in state_dict,
                "dropout": 0.0,
                **LEGACY_PARTS,
            }
        except (KeyError, ValueError, IndexError):
            raise UserError(f"{weights} is not a lit-gpt-char GPT state dict (no wte/wpe/blocks weights)") from None
    cfg = model_config(config, config_source)
    if tok.vocab_size != cfg.vocab_size:
        raise UserError(
            f"the tokenizer {tokenizer} has {tok.vocab_size} characters but {config_source} is for a "
            f"vocabulary of {cfg.vocab_size}: pass the tokenizer.json the model was trained with"
        )
    return Loaded(cfg, tok, state_dict, weights, str(config_source), _info_from_metadata(meta)).check()


def find_export(path: Path) -> Path | None:
    """The weights file of an export directory (model.safetensors, else a legacy model.pt), if it is one."""
    if not path.is_dir() or not (path / TOKENIZER_FILE).is_file():
        return None
    return next((path / n for n in (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE) if (path / n).is_file()), None)


def load_any(path: str | Path, map_location: str | torch.device = "cpu", log_dir: str | Path | None = None) -> Loaded:
    """A .ckpt, a run directory, `latest` (see find_latest), an export directory (model.safetensors or
    model.pt, tokenizer.json, config.json; or a format=hf one), or an export's model.safetensors itself."""
    if str(path) == LATEST:
        return load_checkpoint(path, map_location, log_dir)
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    from lit_gpt_char.core.hf import is_hf_export, read_hf

    if p.is_dir() and is_hf_export(p):  # a transformers export (format=hf)
        config, tok, state_dict, info = read_hf(p, map_location)
        cfg = model_config(config, p / CONFIG_FILE)
        return Loaded(cfg, tok, state_dict, p / WEIGHTS_FILE, str(p / CONFIG_FILE), info).check()
    weights = find_export(p)
    if weights is not None:
        cfg = p / CONFIG_FILE
        return load_exported(weights, p / TOKENIZER_FILE, cfg if cfg.is_file() else None, map_location=map_location)
    return load_checkpoint(path, map_location, log_dir)


# --- export ---------------------------------------------------------------------------------------------------
# format=native: our three files; hf: a transformers directory (core/hf.py); onnx: native + model.onnx and
# generate.py (core/onnx_export.py). What each needs beyond the core dependencies, checked before any work.
FORMATS = {"native": (), "hf": ("tokenizers", "transformers"), "onnx": ("onnx", "onnxscript", "onnxruntime")}
# Every file an export of any format writes: an export replaced with force leaves none of another's behind.
ALL_EXPORT_FILES = (*EXPORT_FILES, "tokenizer_config.json", "generation_config.json", "modeling_lit_gpt_char.py")
ALL_EXPORT_FILES += ("model.onnx", "generate.py")


def check_export_target(out_dir: str | Path, force: bool = False, format: str = "native") -> Path:
    """Refuse, before any work, an out_dir that would lose files or cannot be written: a file, a directory
    holding an export already (unless force), or one this user cannot create files in; and a format whose
    libraries are not installed."""
    import importlib.util

    if format not in FORMATS:
        raise UserError(f"format={format}: must be one of {', '.join(FORMATS)}")
    missing = [m for m in FORMATS[format] if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(
            f"format={format} needs {', '.join(missing)}, not installed: pip install 'lit-gpt-char[export]' "
            "(or pip install -e '.[export]' in a clone)"
        )
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"out_dir={out} is a file: pass a directory to export into")
    existing = [n for n in ALL_EXPORT_FILES if (out / n).exists()]
    if existing and not force:
        raise UserError(
            f"out_dir={out} already holds {', '.join(existing)}: pass --force to replace them, "
            "or choose another directory"
        )
    parent = out
    while not parent.exists():  # the nearest directory that exists must let us create what is missing
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"out_dir={out}: {parent} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".lit-gpt-char-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"out_dir={out}: cannot write into {parent} ({e.strerror}): choose a writable directory"
        ) from None
    return out


def write_native(loaded: Loaded, out: Path) -> None:
    """model.safetensors, config.json and tokenizer.json into out."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in _untie(loaded.state_dict).items()}
    meta = {"format": "pt", "tied": ",".join(f"{k}={TIED[k]}" for k in tied_names(loaded.state_dict))}
    meta.update({k: str(v) for k, v in loaded.info.items() if k in ("step", "val_loss")})
    (out / WEIGHTS_FILE).write_bytes(save(tensors, metadata=meta))
    (out / CONFIG_FILE).write_text(json.dumps(loaded.config.to_dict(), indent=1) + "\n")
    (out / TOKENIZER_FILE).write_bytes(
        json.dumps(loaded.tokenizer.to_dict(), ensure_ascii=False, indent=1).encode("utf-8")
    )


def write_format(loaded: Loaded, out: Path, format: str) -> None:
    if format == "hf":
        from lit_gpt_char.core.hf import save_hf

        save_hf(loaded.config, loaded.tokenizer, loaded.state_dict, loaded.info, out)
        return
    write_native(loaded, out)
    if format == "onnx":
        from lit_gpt_char.core.onnx_export import save_onnx

        save_onnx(loaded.build(), out)


def save_export(loaded: Loaded, out_dir: str | Path, format: str = "native") -> Path:
    """Write the export into out_dir all at once: the files are made in a temporary directory beside it,
    then moved in (a new out_dir is that directory, renamed). A failure leaves out_dir as it was; an
    export of another format there is removed, so the directory holds one model."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
    try:
        write_format(loaded, tmp, format)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if not out.exists():
            tmp.chmod(0o777 & ~_umask())
            os.rename(tmp, out)
            return out
        for name in ALL_EXPORT_FILES:
            if not (tmp / name).exists():
                (out / name).unlink(missing_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export(
    ckpt: str | Path,
    out_dir: str | Path,
    force: bool = False,
    log_dir: str | Path | None = None,
    format: str = "native",
) -> Path:
    """Export a checkpoint (file, run directory, `latest`, or an export directory) into out_dir as
    format (native | hf | onnx); the target is checked before anything is loaded, and an existing export
    is replaced only with force."""
    out = check_export_target(out_dir, force, format)
    loaded = load_any(ckpt, log_dir=log_dir)
    try:
        return save_export(loaded, out, format)
    except OSError as e:  # a full disk, a quota, a directory made read-only meanwhile
        raise UserError(
            f"out_dir={out}: the export could not be written ({e.strerror or e}); {out} is as it was before"
        ) from None
