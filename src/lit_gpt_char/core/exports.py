"""Exports: the model as plain files other tools read, and those files read back.

format=native: model.safetensors (the weights; the head tied to the token embedding is stored once),
config.json (the GPTConfig) and tokenizer.json (the seed's format). Exports written before safetensors
hold model.pt (a plain state dict) instead; they load the same way. format=hf: a transformers
directory (core/hf.py); format=onnx: native + model.onnx and generate.py (core/onnx_export.py).
Every export is written into a temporary directory that replaces the target only once complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from lit_gpt_char.core.checkpoint import TIED, Loaded, bare_keys, model_config, safe_load, tied_names
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError

WEIGHTS_FILE = "model.safetensors"  # what export writes
LEGACY_WEIGHTS_FILE = "model.pt"  # what exports held before: a plain state dict, still read
TOKENIZER_FILE, CONFIG_FILE = "tokenizer.json", "config.json"
EXPORT_FILES = (WEIGHTS_FILE, LEGACY_WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE)
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
    return _tie(bare_keys(tensors)), meta


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


def read_export(path: Path, map_location: str | torch.device = "cpu") -> Loaded | None:
    """The model of an export directory of any format (None if path is none): a format=hf one, or
    model.safetensors / model.pt with tokenizer.json and config.json."""
    from lit_gpt_char.core.hf import is_hf_export, read_hf

    if path.is_dir() and is_hf_export(path):
        config, tok, state_dict, info = read_hf(path, map_location)
        cfg = model_config(config, path / CONFIG_FILE)
        return Loaded(cfg, tok, state_dict, path / WEIGHTS_FILE, str(path / CONFIG_FILE), info).check()
    weights = find_export(path)
    if weights is None:
        return None
    cfg = path / CONFIG_FILE
    return load_exported(weights, path / TOKENIZER_FILE, cfg if cfg.is_file() else None, map_location=map_location)


# --- writing ----------------------------------------------------------------------------------------------------
# What each format needs beyond the core dependencies, checked before any work.
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
