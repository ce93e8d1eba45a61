"""Training, from a config to a finished run: what `python -m lit_gpt_char.train` runs.

Checks every option first, then wires the config to objects (data module, LightningModule,
callbacks, loggers, Trainer) and runs `Trainer.fit`; returns the best val loss so Hydra sweepers
can minimise it. Everything a run writes lands in its Hydra run directory; a resumed run keeps
writing into the directory of the run it continues.
"""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning.pytorch.callbacks import ModelCheckpoint, WeightAveraging
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lit_gpt_char.console import print_config_tree
from lit_gpt_char.core.checkpoint import model_config, safe_load
from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.errors import UserError, find_user_error, in_multirun
from lit_gpt_char.options import build
from lit_gpt_char.results.status import RunRecord, update_status
from lit_gpt_char.training import rundir
from lit_gpt_char.training.budget import BudgetClock, describe, parse_budget
from lit_gpt_char.training.callbacks.checkpoint_io import WRITE_ERRORS, quiet_write_errors_in_threads, write_failed
from lit_gpt_char.training.callbacks.curves import PlotCurves
from lit_gpt_char.training.callbacks.stops import SaveOnInterrupt
from lit_gpt_char.training.config import TrainConfig
from lit_gpt_char.training.data import DataConfig, TextDataModule
from lit_gpt_char.training.distributed import best_model_score, check_launch, choose_main_port, effective_batch
from lit_gpt_char.training.loggers import LogHyperparams
from lit_gpt_char.training.module import LitGPT, ModelConfig, gpt_config
from lit_gpt_char.training.optim import OptimConfig
from lit_gpt_char.training.rundir import PathsConfig, RunLock
from lit_gpt_char.training.trainer import TrainerConfig

log = logging.getLogger(__name__)
# Lines Lightning prints on every run that say nothing about the run: torch 2.13's deprecation of
# a Lightning internal (LeafSpec); the model summary's "bf16-mixed is not supported ... using 32 bits"
# (right: the master weights are float32); that our RichModelSummary replaces its default summary; and
# its "💡 Tip" advertisements (a cloud logger, a model registry).
warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.")
warnings.filterwarnings("ignore", r"Precision .* is not supported by the model summary", UserWarning, r"lightning\.")
LIGHTNING_NOTICES = ("💡 Tip: ", "Trainer already configured with model summary callbacks")
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith(LIGHTNING_NOTICES)
)


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
        build(root, cfg),
        build(ModelConfig, cfg.model),
        build(OptimConfig, cfg.optim),
        build(DataConfig, cfg.data),
        build(TrainerConfig, cfg.trainer),
        build(PathsConfig, cfg.paths),
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


@dataclass
class Resume:
    """The checkpoint a run resumes from, checked against the configured run."""

    path: Path
    checkpoint: dict[str, Any]
    run_dir: Path | None  # the directory of the run it belongs to (None: a checkpoint kept elsewhere)


def resolve_resume(cfg: DictConfig, settings: Settings) -> Resume | None:
    """The checkpoint to resume from (ckpt_path, or the one resume=auto finds), loaded safely."""
    ckpt_path = settings.run.ckpt_path
    if settings.run.resume == "auto":
        choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
        ckpt_path = str(
            find_resume_checkpoint(settings.paths.log_dir, settings.run.task_name, choices.get("experiment"))
        )
        with open_dict(cfg):
            cfg.ckpt_path = ckpt_path
    if ckpt_path is None:
        return None
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise UserError(f"ckpt_path={path}: does not exist: pass a .ckpt file to resume from, or drop ckpt_path")
    ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or not {"tokenizer", "global_step", "model_config", "state_dict"} <= set(ckpt):
        raise UserError(f"ckpt_path={path}: is not a lit-gpt-char training checkpoint")
    run_dir = path.parent.parent.resolve() if path.parent.name == "checkpoints" else None
    return Resume(path, ckpt, run_dir)


def check_resume_fits(resume: Resume, tokenizer: CharTokenizer, settings: Settings) -> None:
    """The checkpoint must be of the configured model and corpus, or resuming could only fail later
    (or worse, half-way through rewriting the run's records)."""
    old = CharTokenizer.from_dict(resume.checkpoint["tokenizer"])
    if old != tokenizer:
        raise UserError(
            f"ckpt_path={resume.path}: was trained with a vocabulary of {old.vocab_size} {old.unit}s, but this "
            f"corpus gives {tokenizer.vocab_size} {tokenizer.unit}s (or other ones): resume on the corpus it was "
            "trained on (data.path, data.unit)"
        )
    want = gpt_config(tokenizer.vocab_size, settings.model).to_dict()
    have = model_config(resume.checkpoint["model_config"], resume.path).to_dict()  # defaults for older keys
    differ = [k for k in want if have.get(k) != want[k]]
    if differ:
        pairs = ", ".join(f"model.{k}={want[k]} (the checkpoint's: {have.get(k)})" for k in differ)
        raise UserError(
            f"ckpt_path={resume.path}: its model differs from the configured one: {pairs}: resume with "
            "the options it was trained with"
        )


@dataclass
class Plan:
    """What a training command will do, checked before anything is written."""

    settings: Settings
    resume: Resume | None
    datamodule: TextDataModule
    vocab: list[str]
    module: Callable[..., LitGPT]  # model._target_ with model.* bound: called with the vocabulary and optim.*


def hyperparameters_of(s: Settings) -> dict[str, Any]:
    """What a run's loggers compare runs by: the model, optimizer and data options, the length of the
    training and the seed."""
    t = s.trainer
    trainer = {k: getattr(t, k) for k in ("max_steps", "precision", "accumulate_grad_batches", "gradient_clip_val")}
    if s.run.budget is not None:  # then the clock, not max_steps, says how long it trains
        trainer = {**trainer, "max_steps": None, "budget_s": parse_budget(s.run.budget)}
    return {
        "model": s.model.to_dict(),
        "optim": s.optim.to_dict(),
        "data": s.data.to_dict(),
        "trainer": trainer,
        "seed": s.run.seed,
    }


def monitor_val_sample(callbacks: list, datamodule: TextDataModule) -> None:
    """Validations that score a sample of a large val split log val_sample/loss (val/loss only comes
    from the whole-split pass at the end): best checkpoints are then chosen by the sample."""
    if not datamodule.val_sampled:
        return
    for cb in callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor == "val/loss":
            cb.monitor = "val_sample/loss"
            if cb.filename:
                cb.filename = cb.filename.replace("val{val/loss", "val_sample{val_sample/loss")
                cb.filename = cb.filename.replace("{val/loss", "{val_sample/loss")


def validate_whole_split(trainer: L.Trainer, module: LitGPT, datamodule: TextDataModule) -> float | None:
    """After a finished fit whose validations scored a sample: one pass over the whole val split,
    logged as val/loss and val/bpc at the last step (and drawn into the plots)."""
    if not datamodule.val_sampled or trainer.state.status != TrainerStatus.FINISHED or trainer.fast_dev_run:
        return None
    if trainer.limit_val_batches == 0:
        return None
    n = datamodule.split_sizes()[1] - 1
    log.info(f"Scoring the whole val split, {n:,} tokens (the validations during training scored a fixed sample)")
    trainer.validate(module, datamodule=datamodule, verbose=False)
    for cb in trainer.callbacks:
        if isinstance(cb, PlotCurves):
            cb.draw(trainer)
    loss = trainer.callback_metrics.get("val/loss")
    return float(loss) if loss is not None else None


def prepare(cfg: DictConfig) -> Plan:
    """Check everything a run needs without writing anything: every option, the checkpoint to resume
    from, the corpus and its vocabulary, and that the checkpoint fits the configured model."""
    settings = check_config(cfg)
    resume = resolve_resume(cfg, settings)
    # Hydra builds the data module and the LightningModule from data.* and model.* (their _target_);
    # what other groups or the corpus decide comes at the call (_partial_).
    module = instantiate(cfg.model, "model", _partial_=True)
    datamodule = instantiate(cfg.data, "data", _partial_=True)(
        block_size=settings.model.block_size, seed=settings.run.seed, data_dir=settings.paths.data_dir
    )
    vocab = datamodule.tokenizer.chars
    check_fits_in_memory(gpt_config(len(vocab), settings.model), settings.trainer)
    if resume is not None:
        check_resume_fits(resume, datamodule.tokenizer, settings)
    return Plan(settings, resume, datamodule, vocab, module)


def check_fits_in_memory(config: GPTConfig, trainer: TrainerConfig) -> None:
    """Refuse a model whose weights, gradients and AdamW state (16 bytes a parameter in float32)
    alone exceed the memory this machine has free, instead of dying in an allocation later."""
    with torch.device("meta"):  # shapes only: no memory, no time
        params = GPT(config).num_params()
    need = 16 * params
    cuda = trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())
    if cuda:
        free, where = torch.cuda.mem_get_info()[0], "free on the GPU"
    else:
        free, where = available_memory(), "available"
    if free is not None and need > free:
        m = config
        raise UserError(
            f"model.n_layer={m.n_layer}, model.n_embd={m.n_embd}: {params / 1e6:,.1f}M parameters need "
            f"{need / 2**30:,.1f} GiB for training (weights, gradients and AdamW state), more than the "
            f"{free / 2**30:,.1f} GiB {where} here: use a smaller model"
        )


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def main(cfg: DictConfig) -> float | None:
    """The train command. A launch that cannot work stops a whole sweep at once; a run that cannot
    work leaves nothing behind; a resumed run continues in the directory of the run it resumes."""
    check_launch(cfg)
    fresh = Path(cfg.paths.output_dir)  # Hydra made it (or found it) for this command
    log_root = Path(str(OmegaConf.select(cfg, "paths.log_dir", default=fresh.parent)))
    our_subdir = HydraConfig.get().output_subdir if HydraConfig.initialized() else None
    record = RunRecord(fresh)
    lock = RunLock(fresh)
    try:
        plan = prepare(cfg)
        run_dir = plan.resume.run_dir if plan.resume is not None and plan.resume.run_dir else fresh
        if rank_zero_only.rank == 0:  # other ranks (started by rank 0's launch) follow rank 0
            rundir.check_free(run_dir, resuming_here=plan.resume is not None and plan.resume.run_dir == run_dir)
            lock = RunLock(run_dir).__enter__()
        if run_dir != fresh:
            rundir.adopt(fresh, run_dir, our_subdir, log_root)
            with open_dict(cfg):
                cfg.paths.output_dir = str(run_dir)
        record.run_dir = run_dir
        record.start()
        return record.finish(train(cfg, plan))
    except Exception as e:
        if not record.started and not in_multirun():
            rundir.discard(fresh, our_subdir, log_root)
        return record.failed(e)
    except BaseException as e:  # Ctrl-C, SIGTERM (as SystemExit)
        record.interrupted(e)
        raise
    finally:
        lock.__exit__()


def train(cfg: DictConfig, plan: Plan) -> float | None:
    """Fit a model as `cfg` says; return the best val loss (None if no validation ran)."""
    settings, resume = plan.settings, plan.resume
    L.seed_everything(settings.run.seed, workers=True)
    if settings.run.matmul_precision:
        torch.set_float32_matmul_precision(settings.run.matmul_precision)

    out = Path(cfg.paths.output_dir)
    callbacks = [instantiate(c, f"callbacks.{name}") for name, c in (cfg.get("callbacks") or {}).items() if c]
    loggers = []
    for name, c in (cfg.get("logger") or {}).items():
        if c:
            # A resumed run drops what a killed run logged after its last checkpoint: no duplicate steps.
            tb = resume is not None and c._target_.endswith("TensorBoardLogger")
            purge = {"purge_step": resume.checkpoint["global_step"]} if tb else {}
            loggers.append(instantiate(c, f"logger.{name}", **purge))
    if loggers:  # the hyperparameters, with the best val loss as their metric, to every logger at the end
        callbacks.append(LogHyperparams(hyperparameters_of(settings)))
    budget = parse_budget(settings.run.budget)
    clock = BudgetClock(budget) if budget is not None else None
    length = {}
    if clock is not None:  # the clock ends the run (and sets the schedule): no step count
        callbacks.append(clock)
        length = {"max_steps": -1, "max_epochs": -1}
    choose_main_port(cfg.trainer)
    trainer: L.Trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **length)
    if isinstance(trainer.strategy, FSDPStrategy) and any(isinstance(c, WeightAveraging) for c in callbacks):
        raise UserError(
            "callbacks.ema: Lightning's weight averaging keeps a whole copy of the model and cannot "
            "average one sharded by trainer=fsdp: add callbacks.ema=null"
        )

    datamodule = plan.datamodule
    datamodule.tokenizer_path = str(out / "tokenizer.json")
    monitor_val_sample(callbacks, datamodule)
    if rank_zero_only.rank == 0 and settings.run.print_config:
        print_config_tree(cfg)
    module = plan.module(plan.vocab, optim=settings.optim, unit=datamodule.tokenizer.unit)
    if trainer.is_global_zero:
        update_status(out, params=module.model.num_params())
        log.info(effective_batch(trainer, settings.data.batch_size, settings.model.block_size))

    ckpt_path = str(resume.path) if resume is not None else None
    if resume is not None:  # a resume continues its checkpoint folder: Lightning's "not empty" warning is no news
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    ckpt = trainer.checkpoint_callback
    quiet_write_errors_in_threads()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        whole = validate_whole_split(trainer, module, datamodule)
    except SIGTERMException:  # a clean stop between steps; SaveOnInterrupt saved last.ckpt, said how to resume
        stopped_by = next((c.stopped_by for c in trainer.callbacks if isinstance(c, SaveOnInterrupt)), None)
        sys.exit(1 if stopped_by == "Ctrl-C" else 143)
    except OSError as e:  # a plot, a sample, a log that a full disk (or a quota, a permission) refused
        if e.errno not in WRITE_ERRORS:
            raise
        folder = Path(ckpt.dirpath) if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath else out / "checkpoints"
        raise write_failed(e, Path(e.filename or out), folder) from None
    best = best_model_score(trainer)
    if clock is not None and trainer.is_global_zero:
        update_status(out, budget_s=clock.seconds, trained_s=round(clock.spent, 1), steps=trainer.global_step)
    if trainer.is_global_zero:
        if clock is not None:
            print(
                f"Training time:   {describe(clock.spent)} of budget={settings.run.budget} "
                f"({trainer.global_step} steps; validation not counted)"
            )
        print(f"Run directory:   {out}")
        if ckpt is not None and ckpt.best_model_path:
            print(f"Best checkpoint: {ckpt.best_model_path}")
        label = "Best val_sample loss:" if datamodule.val_sampled else "Best val loss:  "
        print(f"{label} {float(best):.4f}" if best is not None else "Best val loss:   (no validation ran)")
        if whole is not None:
            print(f"Val loss (whole split, end of training): {whole:.4f} ({whole / math.log(2):.4f} bpc)")
    return float(best) if best is not None else None
