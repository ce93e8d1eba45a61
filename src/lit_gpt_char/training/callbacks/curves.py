"""A run's PNG curves when training ends (callbacks.plot_curves); results/plots.py draws them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from lit_gpt_char.options import Options, build, option
from lit_gpt_char.results import plots
from lit_gpt_char.training.callbacks.checkpoint_io import WRITE_ERRORS
from lit_gpt_char.training.loggers import log_images


@dataclass
class PlotCurvesConfig(Options):
    """callbacks.plot_curves.*: the run's PNG curves."""

    KEY = "callbacks.plot_curves"
    _target_: str = f"{__name__}.PlotCurves"  # what Hydra builds
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
