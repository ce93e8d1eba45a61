"""How a run stops early: Ctrl-C or SIGTERM (save, say how to resume), a NaN or infinite loss (name
the step and the last good checkpoint).
"""

from __future__ import annotations

import signal
import sys
import threading
import types
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_gpt_char.errors import TrainingDiverged
from lit_gpt_char.training.callbacks.checkpoint_io import last_checkpoint_path


class SaveOnInterrupt(L.Callback):
    """Ctrl-C or SIGTERM (pre-emption): finish the current step, its validation and its logging,
    save last.ckpt, say how to resume, and end with exit status 1 (Ctrl-C) or 143 (SIGTERM).

    Stopping only between steps is what makes a resume lose nothing: every step's train loss and
    every scheduled validation are logged exactly once across the interrupted and the resumed run.
    The stop itself is Lightning's graceful SIGTERM path (an exception raised where a step ends),
    but this callback owns the signals: Lightning's own handler would also stop in the middle of a
    validation, losing that validation's point. A second signal stops at once (without saving).
    With several processes the ranks agree on the step to stop after (one all-reduce of a flag per
    step), so all stop at the same point whichever got the signal. Installed when training starts,
    after Lightning has installed its handlers.
    """

    SIGNALS: ClassVar[dict[int, str]] = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def __init__(self) -> None:
        self.stopped_by: str | None = None  # the interrupt that stopped the run ("Ctrl-C" | "SIGTERM")
        self._requested: str | None = None
        self._saved_at: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stopped_by = self._requested = self._saved_at = None
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._request)

    def _request(self, signum: int, frame: types.FrameType | None) -> None:
        if self._requested is not None:  # the second one: stop now
            self._restore_handlers()
            raise KeyboardInterrupt
        self._requested = self.SIGNALS[signum]
        print(
            f"\n{self._requested}: stopping after this step and its validation (again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _stop_here(self, trainer: L.Trainer) -> None:
        """If an interrupt came (here, or with several processes anywhere), have Lightning stop where this
        step ends: its SIGTERM flag, checked after the step's logging and validation."""
        stop = self._requested is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            self.stopped_by = self.stopped_by or self._requested or "SIGTERM"  # another rank's: a pre-emption
            trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._stop_here(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning's evaluation loop stops at its flag after any batch: hide it until validation is done.
        if not trainer.sanity_checking and self.stopped_by is not None:
            trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._stop_here(trainer)
            if self.stopped_by is not None:
                # Save here, where ModelCheckpoint saves: a checkpoint from the end of a validation
                # resumes exactly (one from the end of the step after it would shift the log steps).
                self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        path = last_checkpoint_path(trainer)
        if path is not None:
            trainer.save_checkpoint(path)
            self._saved_at = trainer.global_step

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        """Give the signals back, also when fit ends in an exception (Lightning then skips teardown)."""
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous = {}

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        path = last_checkpoint_path(trainer)
        if isinstance(exception, SIGTERMException) and self.stopped_by is not None:  # a clean stop between steps
            if path is None:
                rank_zero_info(
                    f"\n{self.stopped_by} at step {trainer.global_step}: no checkpoint directory is "
                    "configured, so nothing was saved."
                )
                return
            if self._saved_at != trainer.global_step:
                self._save(trainer)
            rank_zero_info(
                f"\n{self.stopped_by} at step {trainer.global_step}: saved {path}\n"
                f"Resume with the same command plus: ckpt_path={path}  (or resume=auto)"
            )
        else:  # stopped at once, maybe mid-step: keep the last checkpoint saved rather than write one now
            kept = f"; the last checkpoint saved is {path}" if path and Path(path).is_file() else ""
            rank_zero_info(f"\nStopped at once at step {trainer.global_step}{kept}")


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN or infinite training or validation loss, before a checkpoint can store it.

    Lightning runs checkpoint callbacks after all others, so a non-finite val loss stops the
    run before ModelCheckpoint could take it for a new best or overwrite last.ckpt.
    """

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            self._stop(trainer, "training", loss.item())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for key in ("val/loss", "val_sample/loss"):
            loss = trainer.callback_metrics.get(key)
            if loss is not None and not trainer.sanity_checking and not torch.isfinite(loss).all():
                self._stop(trainer, "validation", loss.item())

    @staticmethod
    def _stop(trainer: L.Trainer, what: str, value: float) -> None:
        last = last_checkpoint_path(trainer)
        good = f"the last good checkpoint is {last}" if last and Path(last).is_file() else "no checkpoint was saved yet"
        raise TrainingDiverged(
            f"{what} loss is {value} at step {trainer.global_step}; {good}. "
            "Lower optim.lr, raise optim.warmup_steps, or keep trainer.gradient_clip_val set."
        )
