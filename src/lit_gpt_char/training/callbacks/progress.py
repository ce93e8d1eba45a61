"""Progress where people look: lines in train.log (and stdout without a terminal), and the bar."""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from lit_gpt_char.options import Options, build, option


@dataclass
class ProgressLogConfig(Options):
    """callbacks.progress_log.*: progress as lines of text, for runs nobody watches live."""

    KEY = "callbacks.progress_log"
    _target_: str = f"{__name__}.ProgressLog"  # what Hydra builds
    every_n_steps: int = option(100, "a line (step, loss, lr, tokens/s, ETA) every N optimizer steps", ge=1)
    stdout: bool | None = option(
        None, "print the lines to stdout too; null: when stdout is not a terminal (a terminal has the progress bar)"
    )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


class ProgressLog(L.Callback):
    """Progress where no terminal is watching (SLURM, nohup, CI): a line every `every_n_steps`
    optimizer steps (the step, the mean batch loss since the last line, the learning rate,
    tokens/s and the time left) and one per validation (its losses and time), written to the
    log files of the root logger (the run's train.log) and, unless stdout is a terminal, to
    stdout. Rank 0 only. Options: ProgressLogConfig's.
    """

    def __init__(self, **options: Any):
        self.options = build(ProgressLogConfig, options)
        self._console = False
        self._reset(time.perf_counter())
        self._last_step = -1
        self._val_started: float | None = None
        self._val_seconds: float | None = None  # the last full validation's
        self._sanity_per_batch: float | None = None

    def _reset(self, now: float) -> None:
        self._t0, self._paused, self._tokens, self._loss_sum, self._loss_n = now, 0.0, 0, 0.0, 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        o = self.options
        self._console = (not _stdout_is_terminal()) if o.stdout is None else o.stdout

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset(time.perf_counter())
        self._last_step = trainer.global_step

    def emit(self, msg: str) -> None:
        """msg into the root logger's files (train.log under Hydra) and, if wanted, to stdout: through
        the root's handler on stdout (Hydra's console handler, in the log's format) if it has one."""
        record = logging.LogRecord("lit_gpt_char.progress", logging.INFO, __file__, 0, msg, None, None)
        on_stdout = []
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                if handler.level <= logging.INFO:
                    handler.handle(record)
            elif isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
                on_stdout.append(handler)
        if self._console:
            for handler in on_stdout:
                if handler.level <= logging.INFO:
                    handler.handle(record)
            if not on_stdout:
                print(msg, flush=True)

    # --- training lines
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:  # Lightning divides it by the batches accumulated into one step
            self._loss_sum = self._loss_sum + loss.detach() * trainer.accumulate_grad_batches
            self._loss_n += 1
        self._tokens += batch[1].numel() * trainer.world_size
        step = trainer.global_step
        if step == self._last_step or step % self.options.every_n_steps:
            return
        steps = step - self._last_step
        self._last_step = step
        now = time.perf_counter()
        if trainer.is_global_zero:
            self.emit(self._train_line(trainer, step, steps, now))
        self._reset(now)

    def _train_line(self, trainer: L.Trainer, step: int, steps: int, now: float) -> str:
        seconds = max(now - self._t0 - self._paused, 1e-9)
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        loss = float(self._loss_sum) / self._loss_n if self._loss_n else math.nan
        lrs = [g["lr"] for opt in trainer.optimizers for g in opt.param_groups]
        eta = (total - step) * seconds / steps + self._validations_left(trainer, step, total) * self._val_estimate(
            trainer
        )
        of = f"/{total:,}" if math.isfinite(total) else ""
        lr = f"lr {max(lrs):.2e}" if lrs else "lr ?"
        speed = f"{self._tokens / seconds:,.0f} tokens/s"
        return f"step {step:,}{of} | loss {loss:.4f} | {lr} | {speed} | ETA {_duration(eta)}"

    @staticmethod
    def _validations_left(trainer: L.Trainer, step: int, total: float) -> float:
        every = trainer.val_check_batch
        if not trainer.limit_val_batches or not isinstance(every, int) or not math.isfinite(total):
            return 0
        every = max(1, every // trainer.accumulate_grad_batches)
        return int(total) // every - step // every

    def _val_estimate(self, trainer: L.Trainer) -> float:
        """Seconds a validation takes: the last one's, else from the sanity check's batches."""
        if self._val_seconds is not None:
            return self._val_seconds
        if self._sanity_per_batch is not None:
            batches = trainer.num_val_batches
            n = sum(batches) if isinstance(batches, list) else batches
            return self._sanity_per_batch * n if math.isfinite(n) else 0.0
        return 0.0

    # --- validation lines
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_started is None:
            return
        seconds = time.perf_counter() - self._val_started
        self._val_started = None
        if trainer.sanity_checking:
            batches = trainer.num_sanity_val_batches
            n = sum(batches) if isinstance(batches, list) else batches
            self._sanity_per_batch = seconds / n if n else None
            return
        self._paused += seconds  # validation time is not training throughput
        self._val_seconds = seconds
        if trainer.is_global_zero:
            self.emit(self._val_line(trainer, seconds))

    @staticmethod
    def _val_line(trainer: L.Trainer, seconds: float) -> str:
        m = trainer.callback_metrics
        parts = [f"validation at step {trainer.global_step:,}"]
        if "val/loss" in m:
            val = float(m["val/loss"])
            ckpt = trainer.checkpoint_callback
            scores = [val] + ([float(ckpt.best_model_score)] if getattr(ckpt, "best_model_score", None) else [])
            parts.append(f"val/loss {val:.4f} (best {min(scores):.4f}, val/bpc {val / math.log(2):.4f})")
            if "train/split_loss" in m:
                split = float(m["train/split_loss"])
                parts.append(f"train/split_loss {split:.4f} (gap {val - split:+.4f})")
        parts.append(f"{seconds:.1f} s")
        return " | ".join(parts)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, with the optimizer step out of max_steps among its metrics
    and an epoch counter that makes sense when training runs by steps (with max_epochs=-1 Lightning
    shows 'Epoch 4/-2'; an epoch here is data.batches_per_epoch batches)."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = super()._get_train_description(current_epoch)
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs < 1:
            text = text.replace(f"Epoch {current_epoch}/{max_epochs - 1}", f"Epoch {current_epoch}", 1)
        return text

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Lightning sizes the bar to the steps left when it makes it, while it counts the epoch's batches
        from the epoch's start: a run resumed at step 10 of 20 ended at '20/10' (or '20/9'). Sized here to
        the epoch's batches so far plus those left."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bounded = trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0
        if bounded and self.is_enabled and self.progress is not None and self.train_progress_bar_id is not None:
            left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
            total = min(trainer.num_training_batches, batch_idx + 1 + left)
            self.progress.update(self.train_progress_bar_id, total=total)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version: always "" here (one directory per run)
        if trainer.max_steps > 0:
            items = {"step": f"{trainer.global_step}/{trainer.max_steps}", **items}
        return items
