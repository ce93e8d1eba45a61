"""Train a character GPT: `python -m lit_gpt_char.train [overrides]`.

Wires the Hydra config to objects and runs `Trainer.fit`; returns the best val loss so Hydra
sweepers can minimise it. Everything a run writes lands in its Hydra run directory.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lit_gpt_char.config import print_config_tree
from lit_gpt_char.errors import UserError, user_errors
from lit_gpt_char.job_status import record_status


@user_errors
@record_status  # status.json in the run dir; under -m a failed or diverged job scores +inf
def train(cfg: DictConfig) -> float | None:
    """Fit a model as `cfg` says; return the best val loss (None if no validation ran)."""
    if cfg.ckpt_path is not None and not Path(cfg.ckpt_path).is_file():
        raise UserError(f"ckpt_path={cfg.ckpt_path} does not exist: pass a .ckpt file to resume from, or drop it")
    L.seed_everything(cfg.seed, workers=True)
    if rank_zero_only.rank == 0 and cfg.get("print_config", True):
        print_config_tree(cfg)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    module: L.LightningModule = hydra.utils.instantiate(
        cfg.model,
        vocab=datamodule.tokenizer.chars,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        _convert_="all",
    )
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_score if ckpt is not None else None
    if best is None and "val/loss" in trainer.callback_metrics:
        best = trainer.callback_metrics["val/loss"]
    if trainer.is_global_zero:
        print(f"Run directory:   {HydraConfig.get().runtime.output_dir}")
        if ckpt is not None and ckpt.best_model_path:
            print(f"Best checkpoint: {ckpt.best_model_path}")
        print(f"Best val loss:   {float(best):.4f}" if best is not None else "Best val loss:   (no validation ran)")
    return float(best) if best is not None else None


@hydra.main(version_base="1.3", config_path="pkg://lit_gpt_char.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
