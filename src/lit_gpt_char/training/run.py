"""Training, from a config to a finished run: what `python -m lit_gpt_char.train` runs.

Checks every option first, then wires the config to objects (data module, LightningModule,
callbacks, loggers, Trainer) and runs `Trainer.fit`; returns the best val loss so Hydra sweepers
can minimise it. Everything a run writes lands in its Hydra run directory; a resumed run keeps
writing into the directory of the run it continues.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lit_gpt_char.config import options, print_config_tree
from lit_gpt_char.core.checkpoint import safe_load
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError, find_user_error
from lit_gpt_char.results.status import record_status, update_status
from lit_gpt_char.training.config import PathsConfig, TrainConfig, TrainerConfig
from lit_gpt_char.training.data import DataConfig, TextDataModule
from lit_gpt_char.training.distributed import best_model_score, check_launch, choose_main_port, effective_batch
from lit_gpt_char.training.loggers import LogHyperparams
from lit_gpt_char.training.module import LitGPT, ModelConfig
from lit_gpt_char.training.optim import OptimConfig

log = logging.getLogger(__name__)


@dataclass
class Settings:
    """Every group of a training config as checked options."""

    run: TrainConfig
    model: ModelConfig
    optim: OptimConfig
    data: DataConfig
    trainer: TrainerConfig
    paths: PathsConfig


def check_config(cfg: DictConfig, root: type[TrainConfig] = TrainConfig) -> Settings:
    """The whole config, checked (types and ranges) before any work starts; root: the schema of
    the top-level keys (the bench command adds its own)."""
    return Settings(
        options(cfg, root),
        options(cfg.model, ModelConfig),
        options(cfg.optim, OptimConfig),
        options(cfg.data, DataConfig),
        options(cfg.trainer, TrainerConfig),
        options(cfg.paths, PathsConfig),
    )


def instantiate(node: DictConfig, where: str, **kwargs: Any) -> Any:
    """hydra.utils.instantiate(node), a constructor's complaint about its arguments as a UserError."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        if find_user_error(e) is not None:
            raise find_user_error(e) from None
        cause = e.__cause__ or e
        raise UserError(f"{where}: {str(cause).strip().splitlines()[0]}") from None


def find_resume_checkpoint(log_dir: str | Path, task_name: str, experiment: str | None) -> Path:
    """resume=auto: the newest last.ckpt among earlier runs of the same experiment."""
    found = []
    for ckpt in Path(log_dir, task_name).glob("**/checkpoints/last.ckpt"):
        hydra_yaml = ckpt.parent.parent / ".hydra" / "hydra.yaml"
        if hydra_yaml.is_file():
            choices = OmegaConf.load(hydra_yaml).hydra.runtime.choices
            if choices.get("experiment") == experiment:
                found.append(ckpt)
    if not found:
        raise UserError(
            f"resume=auto found no last.ckpt of experiment={experiment} under {Path(log_dir, task_name)}: "
            "start without resume, or pass ckpt_path=... explicitly"
        )
    return max(found, key=lambda p: p.stat().st_mtime)


def resolve_resume(cfg: DictConfig) -> dict | None:
    """The checkpoint to resume from (ckpt_path, or the one resume=auto finds), loaded safely.

    It also points paths.output_dir at the run it continues, so checkpoints and TensorBoard
    curves carry on in one place."""
    if cfg.get("resume") == "auto" and cfg.ckpt_path is None:
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        with open_dict(cfg):
            cfg.ckpt_path = str(find_resume_checkpoint(cfg.paths.log_dir, cfg.task_name, choices.get("experiment")))
    elif cfg.get("resume") not in (None, "auto"):
        raise UserError(f"resume={cfg.resume!r}: use resume=auto, or ckpt_path=PATH to resume from a given file")
    if cfg.ckpt_path is None:
        return None
    path = Path(cfg.ckpt_path)
    if not path.is_file():
        raise UserError(f"ckpt_path={path} does not exist: pass a .ckpt file to resume from, or drop ckpt_path")
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or "tokenizer" not in ckpt or "global_step" not in ckpt:
        raise UserError(f"ckpt_path={path} is not a lit-gpt-char training checkpoint")
    if path.parent.name == "checkpoints":
        with open_dict(cfg):
            cfg.paths.output_dir = str(path.parent.parent.resolve())
    return ckpt


def check_same_vocabulary(ckpt: dict, vocab: list[str], path: str) -> None:
    old = CharTokenizer.from_dict(ckpt["tokenizer"]).chars
    if old != vocab:
        raise UserError(
            f"ckpt_path={path} was trained with a vocabulary of {len(old)} characters, but this corpus gives "
            f"{len(vocab)} (or other ones): resume on the corpus it was trained on (data.path)"
        )


def hyperparameters_of(s: Settings) -> dict[str, Any]:
    """What a run's loggers compare runs by: the model, optimizer and data options, the length of the
    training and the seed."""
    t = s.trainer
    trainer = {k: getattr(t, k) for k in ("max_steps", "precision", "accumulate_grad_batches", "gradient_clip_val")}
    return {
        "model": s.model.to_dict(),
        "optim": s.optim.to_dict(),
        "data": s.data.to_dict(),
        "trainer": trainer,
        "seed": s.run.seed,
    }


def main(cfg: DictConfig) -> float | None:
    """The train command: refuse a launch that cannot work (a whole sweep stops at once), then train."""
    check_launch(cfg)
    return train(cfg)


@record_status  # status.json in the run dir; under -m a failed or diverged job scores +inf
def train(cfg: DictConfig) -> float | None:
    """Fit a model as `cfg` says; return the best val loss (None if no validation ran)."""
    settings = check_config(cfg)
    L.seed_everything(settings.run.seed, workers=True)
    if settings.run.matmul_precision:
        torch.set_float32_matmul_precision(settings.run.matmul_precision)

    resume = resolve_resume(cfg)
    out = Path(cfg.paths.output_dir)
    callbacks = [instantiate(c, f"callbacks.{name}") for name, c in (cfg.get("callbacks") or {}).items() if c]
    loggers = []
    for name, c in (cfg.get("logger") or {}).items():
        if c:
            # A resumed run drops what a killed run logged after its last checkpoint: no duplicate steps.
            tb = resume is not None and c._target_.endswith("TensorBoardLogger")
            loggers.append(instantiate(c, f"logger.{name}", **({"purge_step": resume["global_step"]} if tb else {})))
    if loggers:  # the hyperparameters, with the best val loss as their metric, to every logger at the end
        callbacks.append(LogHyperparams(hyperparameters_of(settings)))
    choose_main_port(cfg.trainer)
    trainer: L.Trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)

    datamodule = TextDataModule(
        settings.data,
        block_size=settings.model.block_size,
        seed=settings.run.seed,
        data_dir=settings.paths.data_dir,
        tokenizer_path=str(out / "tokenizer.json"),
    )
    vocab = datamodule.tokenizer.chars
    if resume is not None:
        check_same_vocabulary(resume, vocab, cfg.ckpt_path)
    if rank_zero_only.rank == 0 and settings.run.print_config:
        print_config_tree(cfg)
    module = LitGPT(vocab, settings.model, settings.optim)
    if trainer.is_global_zero:
        update_status(out, params=module.model.num_params())
        log.info(effective_batch(trainer, settings.data.batch_size, settings.model.block_size))

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
    except SIGTERMException:
        sys.exit(143)  # SaveOnInterrupt saved last.ckpt and said how to resume

    ckpt = trainer.checkpoint_callback
    best = best_model_score(trainer)
    if trainer.is_global_zero:
        print(f"Run directory:   {cfg.paths.output_dir}")
        if ckpt is not None and ckpt.best_model_path:
            print(f"Best checkpoint: {ckpt.best_model_path}")
        print(f"Best val loss:   {float(best):.4f}" if best is not None else "Best val loss:   (no validation ran)")
    return float(best) if best is not None else None
