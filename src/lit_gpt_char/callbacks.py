"""Training callbacks of our own; Lightning's stock ones are configured in conf/callbacks/."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from lit_gpt_char import plots
from lit_gpt_char.errors import TrainingDiverged
from lit_gpt_char.module import LitGPT


def last_checkpoint_path(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
        return f"{ckpt.dirpath}/{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    return None


class SaveOnInterrupt(L.Callback):
    """On Ctrl-C or SIGTERM (pre-emption), save last.ckpt and say how to resume.

    Lightning turns SIGTERM into an exception at the next step boundary, so that checkpoint
    resumes exactly. In a single-process run Ctrl-C does the same: the first one stops after
    the current training (or validation) batch, never in the middle of a checkpoint write or a
    logger's locked queue, where the shutdown could hang; a second one stops at once. Across
    several processes a Ctrl-C stops each wherever it is (the ranks could not agree on a step).
    """

    def __init__(self) -> None:
        self._previous_handler = None
        self._stop_requested = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._stop_requested = False
            self._previous_handler = signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, signum: int, frame) -> None:
        self._stop_requested = True
        signal.signal(signal.SIGINT, self._previous_handler)  # a second Ctrl-C: KeyboardInterrupt at once
        print("\nCtrl-C: stopping after this batch (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def _stop_if_requested(self) -> None:
        if self._stop_requested:
            self._stop_requested = False
            raise KeyboardInterrupt  # Lightning's Ctrl-C path: on_exception below, then exit 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_if_requested()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._stop_if_requested()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        """Give SIGINT back, also when fit ends in an exception (Lightning then skips teardown)."""
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        path = last_checkpoint_path(trainer)
        if path is None:
            rank_zero_info("Interrupted; no checkpoint directory is configured, so nothing was saved.")
            return
        trainer.save_checkpoint(path)
        what = "Ctrl-C" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
        rank_zero_info(
            f"\n{what} at step {trainer.global_step}: saved {path}\n"
            f"Resume with the same command plus: ckpt_path={path}  (or resume=auto)"
        )


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN or infinite training or validation loss, before a checkpoint can store it.

    Lightning runs checkpoint callbacks after all others, so a non-finite val loss stops the
    run before ModelCheckpoint could take it for a new best or overwrite last.ckpt.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            self._stop(trainer, "training", loss.item())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
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


class GenerateSamples(L.Callback):
    """Every `every_n_steps` optimizer steps and at the end of training, write some text.

    Seeing the text go from noise to Shakespeare is the quickest sanity check there is. The
    sample is printed on rank 0 and logged to TensorBoard as text. It uses its own seeded
    generator and restores train mode, so it never changes what training does next.
    """

    def __init__(
        self,
        every_n_steps: int | None = 500,
        prompt: str = "\n",
        max_new_tokens: int = 300,
        temperature: float = 0.8,
        top_k: int | None = None,
        seed: int = 1337,
    ):
        self.every_n_steps = every_n_steps
        self.prompt, self.max_new_tokens = prompt, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed
        self._last_step = -1
        self._fsdp_warned = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step and not trainer.sanity_checking:
            self.sample(trainer, pl_module)

    def sample(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        self._last_step = trainer.global_step
        if isinstance(trainer.strategy, FSDPStrategy):
            # The weights are sharded: rank 0 alone cannot run the model (it would wait forever
            # for the other ranks to gather them). Checkpoints are whole files: sample from those.
            if not self._fsdp_warned:
                rank_zero_warn("GenerateSamples is off under FSDP (sharded weights); sample from a checkpoint instead: "
                               "python -m lit_gpt_char.sample ckpt=<run dir>")
                self._fsdp_warned = True
            return None
        if not trainer.is_global_zero or not isinstance(pl_module, LitGPT) or self.max_new_tokens <= 0:
            return None
        tok, model = pl_module.tokenizer, pl_module.model
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            return None  # diverged weights; StopOnNonFiniteLoss reports it
        prompt = "".join(c for c in self.prompt if c in tok.stoi) or tok.chars[0]
        idx = torch.tensor([tok.encode(prompt)], device=pl_module.device)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(idx, self.max_new_tokens, self.temperature, self.top_k, generator=generator)
        finally:
            model.train(was_training)
        text = prompt + tok.decode(out[0, idx.shape[1] :])
        Console().print(Panel(Text(text), title=f"sample at step {trainer.global_step}", expand=False))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Indent by 4 spaces so TensorBoard's markdown shows it verbatim, line breaks kept.
                md = "\n".join("    " + line for line in text.split("\n"))
                logger.experiment.add_text("samples", md, global_step=trainer.global_step)
        return text


class PlotCurves(L.Callback):
    """At the end of fit, draw the run's loss curves into `out_dir` (see lit_gpt_char.plots).

    They are drawn from the TensorBoard event files, not from values kept in memory, so they are
    the same plots `python -m lit_gpt_char.plot RUN_DIR` redraws later. A run that crashes or
    diverges is drawn too: its curves show how it got there.
    """

    def __init__(self, out_dir: str, smoothing: float = plots.SMOOTHING):
        self.out_dir, self.smoothing = Path(out_dir), smoothing

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.draw(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            self.draw(trainer)
        except Exception as e:  # never hide the exception that ended the run
            rank_zero_warn(f"PlotCurves: could not draw the plots of the failed run: {e}")

    @rank_zero_only
    def draw(self, trainer: L.Trainer) -> list[Path]:
        if trainer.fast_dev_run:
            return []  # no loggers, nothing to draw
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is None:
            rank_zero_warn("PlotCurves draws from TensorBoard events: add logger=tensorboard (or many) to get plots")
            return []
        tb.experiment.flush()
        return plots.draw_run(plots.read_scalars(tb.log_dir), self.out_dir, self.smoothing)
