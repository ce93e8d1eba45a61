"""Checkpoints as plain values: a model config, a tokenizer and a state dict that fit together.

Every load goes through `torch.load(weights_only=True)` (or safetensors, core/exports.py): a file whose
pickle would build arbitrary objects (and so could run code) is refused before anything in it runs.
What loads is then checked to be ours: a model config, a tokenizer and a state dict that fit
together (every tensor's name and shape), or one `error:` line naming the file and the tensor.
Writes are atomic (lit_gpt_char.files). Where the files come from — Lightning's checkpoints, run
directories, `latest` — is lit_gpt_char.loading's business; exports are core/exports.py's.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError
from lit_gpt_char.files import atomic_file
from lit_gpt_char.options import build

# GPT ties its head to its token embedding: one matrix, two names. Files store it once.
TIED = {"lm_head.weight": "wte.weight"}


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
        raise UserError(f"checkpoint {path} does not exist")
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


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save(obj, path), atomically (lit_gpt_char.files). A write that fails (a full disk, a quota, a
    file-size limit) raises its OSError, not the RuntimeError torch's zip writer wraps it in."""
    with atomic_file(path) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            cause = e.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise


def bare_keys(state_dict: dict) -> dict[str, torch.Tensor]:
    """Keys of the bare GPT: without torch.compile's `_orig_mod.`."""
    return {key.replace("_orig_mod.", ""): value for key, value in state_dict.items()}


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


def load_state(values: Mapping[str, Any], source: Path, info: dict[str, Any] | None = None) -> Loaded:
    """A checkpoint's plain values — `model_config` (GPTConfig's options), `tokenizer` (the seed's
    format) and `state_dict` (GPT's names) — checked to fit together; source names the file in errors."""
    if not isinstance(values.get("state_dict"), dict):
        raise UserError(f"{source}: its state_dict is not a mapping of names to tensors")
    config = model_config(values["model_config"], source)
    try:
        tokenizer = CharTokenizer.from_dict(values["tokenizer"])
    except UserError as e:
        raise UserError(f"{source}: its tokenizer is invalid: {e}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(
            f"{source}: the tokenizer has {tokenizer.vocab_size} characters but the model was built for "
            f"{config.vocab_size}: the checkpoint was edited or mixed up"
        )
    state_dict = bare_keys(values["state_dict"])
    return Loaded(config, tokenizer, state_dict, source, "its model_config", info or {}).check()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() or (a.shape == b.shape and torch.equal(a, b))


def tied_names(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The names in TIED whose tensor is its twin's (one matrix under two names)."""
    return [
        k
        for k, twin in TIED.items()
        if k in state_dict and twin in state_dict and _same(state_dict[k], state_dict[twin])
    ]
