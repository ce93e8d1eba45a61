"""The train command's config: its top-level keys (TrainConfig) and every group's schema, registered
for conf/ to build on. Each schema lives beside what it configures:

    model.*     ModelConfig       training/module.py (GPTConfig's shape + compile)
    optim.*     OptimConfig       training/optim.py
    data.*      DataConfig        training/data.py
    trainer.*   TrainerConfig     training/trainer.py (and `${fast_precision:}`)
    paths.*     PathsConfig       training/rundir.py (and `${run_id:}`, `${hydra_subdir:}`)
    callbacks.generate_samples.*, callbacks.plot_curves.*, callbacks.progress_log.*   training/callbacks/
    seed, ckpt_path, resume, ...  TrainConfig (below)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lit_gpt_char.config import register
from lit_gpt_char.errors import UserError
from lit_gpt_char.options import SEED, Options, option
from lit_gpt_char.training.budget import parse_budget
from lit_gpt_char.training.callbacks.curves import PlotCurvesConfig
from lit_gpt_char.training.callbacks.progress import ProgressLogConfig
from lit_gpt_char.training.callbacks.samples import GenerateSamplesConfig
from lit_gpt_char.training.data import DataConfig
from lit_gpt_char.training.module import ModelConfig
from lit_gpt_char.training.optim import OptimConfig
from lit_gpt_char.training.rundir import PathsConfig
from lit_gpt_char.training.trainer import TrainerConfig


@dataclass
class TrainConfig(Options):
    """The top-level keys of `python -m lit_gpt_char.train` (the groups have their own schemas)."""

    task_name: str = option("train", "runs go to paths.log_dir/<task_name>/")
    seed: int = option(SEED, "seeds weights, data order, dropout (same seed, same run)", ge=0, le=2**32 - 1)
    ckpt_path: str | None = option(
        None,
        "a .ckpt to resume from (weights, optimizer, schedule, data sampler, "
        "RNG and step); outputs go on in its run directory",
    )
    resume: str | None = option(None, "auto: resume the newest last.ckpt of the same experiment", choices=("auto",))
    budget: Any = option(
        None,
        "train for this much training time, e.g. 90s, 10m, 1h30m: the lr schedule follows the clock and "
        "trainer.max_steps is not used (results then depend on the machine's speed); null: by trainer.max_steps",
    )
    matmul_precision: str | None = option(
        "high", "float32 matmuls: highest | high (TF32 on Ampere+ GPUs) | medium", choices=("highest", "high", "medium")
    )
    print_config: bool = option(True, "print the composed config at the start")
    # The groups, each with its own schema; {} here so that merging this schema never clears one.
    model: Any = option(help="the model group: ModelConfig", factory=dict)
    optim: Any = option(help="the optim group: OptimConfig", factory=dict)
    data: Any = option(help="the data group: DataConfig", factory=dict)
    trainer: Any = option(help="the trainer group: TrainerConfig", factory=dict)
    callbacks: Any = option(help="named callbacks, each a config Hydra instantiates", factory=dict)
    logger: Any = option(help="named loggers, each a config Hydra instantiates", factory=dict)
    paths: Any = option(help="the paths group: PathsConfig", factory=dict)

    def check(self) -> None:
        parse_budget(self.budget)
        if self.resume == "auto" and self.ckpt_path is not None:
            raise UserError(f"resume=auto and ckpt_path={self.ckpt_path}: give one of them")


SCHEMAS: dict[str, type] = {
    "train": TrainConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
    "paths": PathsConfig,
    "generate_samples": GenerateSamplesConfig,
    "plot_curves": PlotCurvesConfig,
    "progress_log": ProgressLogConfig,
}
for _name, _schema in SCHEMAS.items():
    register(_name, _schema)
