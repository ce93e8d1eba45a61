"""What Lightning calls during fit, of our own: callbacks, and the atomic checkpoint writer.

Lightning's stock callbacks are configured in conf/callbacks/ as they are.
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint, RichProgressBar, WeightAveraging
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from lit_gpt_char.core.checkpoint import atomic_save
from lit_gpt_char.core.generation import SamplingOptions, generate
from lit_gpt_char.errors import TrainingDiverged, UserError
from lit_gpt_char.options import SEED, Options, build, option
from lit_gpt_char.results import plots
from lit_gpt_char.training.loggers import log_images, log_text
from lit_gpt_char.training.module import LitGPT


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning writes checkpoints in place: a process killed mid-write would leave a truncated file
    where the previous good one was. This writes through core.checkpoint.atomic_save (temporary
    file, fsync, rename), so last.ckpt is always the old or the new checkpoint, never half of one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        try:
            atomic_save(checkpoint, path)
        except OSError as e:  # a full disk, a quota, a read-only mount: the user's to fix, and nothing is lost
            raise write_failed(e, Path(path)) from None


# Errors of a write that the user can fix (and that lose nothing: every write of a run is atomic or appends).
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def write_failed(e: OSError, path: Path, checkpoints: Path | None = None) -> UserError:
    """The one line for a run's write that failed: what, why, and the last good checkpoint to resume from
    (in `checkpoints`, by default path's directory)."""
    folder = checkpoints or path.parent
    saved = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if path.suffix == ".ckpt" and path.is_file():
        good = f"the previous {path} is intact"
    else:
        good = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was saved before"
    what = f"the checkpoint {path}" if path.suffix == ".ckpt" else (f"{path}" if path.is_file() else f"into {path}")
    return UserError(
        f"could not write {what}: {e.strerror or e}: {good}. Free disk space (or fix the directory's "
        "permissions), then resume with ckpt_path=..."
    )


def quiet_write_errors_in_threads() -> None:
    """A logger's writer thread (TensorBoard's) that meets a full disk would print its traceback and die;
    the main thread fails on its next write to that logger and says it in one line, so the thread's
    traceback is dropped. Any other error of a thread still prints."""
    if getattr(threading.excepthook, "quiet_write_errors", False):
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRORS):
            previous(args)

    hook.quiet_write_errors = True
    threading.excepthook = hook


def last_checkpoint_path(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
        return f"{ckpt.dirpath}/{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    return None


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


class PicklableEMA(EMAWeightAveraging):
    """Lightning's EMAWeightAveraging (callbacks.ema) with its decay checked, and picklable: ddp_spawn
    sends the callbacks to its worker processes, and the parent class holds a local function
    (torch's get_ema_avg_fn). A copy is the callback built again from the same arguments, which is
    all there is before training starts (the average itself is made in the workers)."""

    def __init__(self, decay: float = 0.99, **kwargs: Any):
        kwargs["decay"] = decay  # conf/callbacks/ema.yaml sets the same (a test holds them equal)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay <= 1:
            raise UserError(
                f"callbacks.ema.decay={decay}: must be a number in [0, 1], the old average's weight at each "
                "step (about 1 - 1/steps of memory, e.g. 0.99)"
            )
        super().__init__(**kwargs)
        self._init_kwargs = kwargs

    def __reduce__(self) -> tuple:
        return functools.partial(type(self), **self._init_kwargs), ()


@dataclass
class GenerateSamplesConfig(Options):
    """callbacks.generate_samples.*: text written during training."""

    KEY = "callbacks.generate_samples"
    every_n_steps: int | None = option(
        500, "write a sample every N optimizer steps (and at the end); null: only at the end", ge=1
    )
    prompt: str = option("\n", "the text each sample continues (characters the corpus lacks are dropped)")
    max_new_tokens: int = option(300, "characters per sample; 0: no samples", ge=0, le=1_000_000)
    temperature: float = option(SamplingOptions.temperature, "0: greedy; 1: the model's distribution", ge=0, le=1e4)
    top_k: int | None = option(SamplingOptions.top_k, "sample among the k most likely characters only; null: all", ge=1)
    seed: int = option(
        SEED, "the samples' own generator seed (training's random streams are untouched)", ge=0, le=2**64 - 1
    )


class GenerateSamples(L.Callback):
    """Every `every_n_steps` optimizer steps and at the end of training, write some text.

    Seeing the text go from noise to Shakespeare is the quickest sanity check there is. The
    sample is printed on rank 0 and logged as text to every active logger (training.loggers). It uses its own seeded
    generator and restores train mode, so it never changes what training does next.
    With weight averaging on (callbacks.ema), it samples from the averaged weights, as validation
    and the checkpoints do. Options: GenerateSamplesConfig's.
    """

    def __init__(self, **options: Any):
        self.options = build(GenerateSamplesConfig, options)
        self._last_step = -1
        self._fsdp_warned = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step, every = trainer.global_step, self.options.every_n_steps
        if every and step > 0 and step % every == 0 and step != self._last_step:
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
                rank_zero_warn(
                    "GenerateSamples is off under FSDP (sharded weights); sample from a checkpoint instead: "
                    "python -m lit_gpt_char.sample ckpt=<run dir>"
                )
                self._fsdp_warned = True
            return None
        o = self.options
        if not trainer.is_global_zero or not isinstance(pl_module, LitGPT) or o.max_new_tokens <= 0:
            return None
        tok, model = pl_module.tokenizer, pl_module.model
        averaging = next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)
        if averaging is not None and getattr(averaging, "_average_model", None) is not None:
            model = averaging._average_model.module.model  # the weights validation and checkpoints use
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            return None  # diverged weights; StopOnNonFiniteLoss reports it
        prompt = "".join(c for c in o.prompt if not tok.unknown(c))
        idx = torch.tensor([tok.encode(prompt) if prompt else [0]], device=pl_module.device)
        prompt = prompt or tok.decode([0])
        generator = torch.Generator(device=pl_module.device).manual_seed(o.seed)
        was_training = model.training
        model.eval()
        try:
            out = generate(model, idx, o.max_new_tokens, temperature=o.temperature, top_k=o.top_k, generator=generator)
        finally:
            model.train(was_training)
        text = prompt + tok.decode(out[0, idx.shape[1] :])
        Console().print(Panel(Text(text), title=f"sample at step {trainer.global_step}", expand=False))
        log_text(trainer.loggers, "samples", text, trainer.global_step)  # to every active logger
        return text


@dataclass
class PlotCurvesConfig(Options):
    """callbacks.plot_curves.*: the run's PNG curves."""

    KEY = "callbacks.plot_curves"
    out_dir: str = option("plots", "where the PNGs go (the train config puts them in <run dir>/plots)")
    smoothing: float = option(plots.SMOOTHING, "EMA weight of the smoothed lines (TensorBoard's slider)", ge=0, lt=1)


class PlotCurves(L.Callback):
    """At the end of fit, draw the run's loss curves into `out_dir` (see results.plots).

    They are drawn from the TensorBoard event files, not from values kept in memory, so they are
    the same plots `python -m lit_gpt_char.plot RUN_DIR` redraws later. A run that crashes or
    diverges is drawn too: its curves show how it got there. Options: PlotCurvesConfig's.
    """

    def __init__(self, **options: Any):
        o = build(PlotCurvesConfig, options)
        self.out_dir, self.smoothing = Path(o.out_dir), o.smoothing

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.draw(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:
            self.draw(trainer)
        except Exception as e:  # never hide the exception that ended the run
            if not (isinstance(e, OSError) and e.errno in WRITE_ERRORS):  # a full disk: the run's error says it
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
        written = plots.draw_run(plots.read_scalars(tb.log_dir), self.out_dir, self.smoothing)
        log_images(trainer.loggers, written, trainer.global_step)  # to every active logger
        return written


# --- progress where no terminal is watching ---------------------------------------------------------------------
@dataclass
class ProgressLogConfig(Options):
    """callbacks.progress_log.*: progress as lines of text, for runs nobody watches live."""

    KEY = "callbacks.progress_log"
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

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # the logger's version: always "" here (one directory per run)
        if trainer.max_steps > 0:
            items = {"step": f"{trainer.global_step}/{trainer.max_steps}", **items}
        return items
