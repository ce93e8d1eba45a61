"""Training for a time budget (`budget=10m`): the run stops when that much training time is spent, and
the learning-rate schedule follows the fraction of the budget used instead of the step.

What counts: the wall time of training steps, data loading included, from the first step on.
Validation, sampling, plots and checkpoint writes between steps are not counted: the clock pauses
when a validation starts and goes on at the next training batch. So the schedule's warm-down gets
the same share of training on every machine, whatever validation costs there, and the whole
command takes the budget plus its validations (and start-up).

Step-keyed parts: the warmup stays `optim.warmup_steps` steps (it protects the first steps, while
the optimizer's moments are young, a number of steps on any machine); the EMA's decay is per
step and its horizon (1 / (1 - decay) steps) does not depend on the run's length; Muon's momentum
is constant. So nothing else needs the clock.

With several processes, rank 0's clock decides: its fraction is broadcast after every step, so every
rank stops at the same step and applies the same learning rate (their own clocks would differ by
microseconds, enough to stop one rank a step before the others and hang the run).

A resumed budget run continues its clock: the time spent is saved in every checkpoint.
Budget runs depend on the machine's speed by nature; step runs (budget=null, the default of
experiment=seed and of the tests) stay bit-reproducible.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lit_gpt_char.errors import UserError

UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_budget(value: object) -> float | None:
    """Seconds of `budget`: null, a number of seconds, or a duration like 90s, 10m, 2.5m, 1h30m."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text)
        if not text or parts is None or not any(parts.groups()):
            raise UserError(f"budget={value}: expected a duration such as 90s, 10m, 2.5m or 1h30m (or null: by steps)")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = 3600 * h + 60 * m + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"budget={value}: must be a positive duration such as 90s or 10m")
    return seconds


def describe(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class BudgetClock(Callback):
    """Counts training time and stops the run when the budget is spent (the last step is validated and
    checkpointed, as a run that reaches max_steps); `fraction()` is what the schedule follows."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.spent = 0.0  # training seconds before `_since`
        self._since: float | None = None  # running since then (None: paused)
        self._decided = 0.0  # the fraction at the end of the last step, the same on every rank

    def elapsed(self) -> float:
        """Training seconds spent so far on this process's clock."""
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self.spent + running

    def fraction(self) -> float:
        """The share of the budget spent at the end of the last training step (0 .. 1), as rank 0
        measured it: what the schedule follows and what ends the run."""
        return self._decided

    def _pause(self) -> None:
        if self._since is not None:
            self.spent += time.perf_counter() - self._since
            self._since = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        # Lightning steps the lr scheduler just before this hook, so a step's rate follows the fraction decided
        # one step earlier (1/steps of the budget late: nothing a schedule by the clock can feel).
        f = min(1.0, self.elapsed() / self.seconds)
        if trainer.world_size > 1:
            f = trainer.strategy.broadcast(f, src=0)
        self._decided = f
        if f >= 1.0:
            trainer.should_stop = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "spent": self.elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.spent = float(state_dict.get("spent", 0.0))
        self._decided = min(1.0, self.spent / self.seconds)


def budget_schedule(
    warmup_steps: int, lr: float, min_lr: float, kind: str, warmdown_fraction: float, clock: BudgetClock
) -> Callable[[int], float]:
    """The learning-rate factor (1 at the peak) of a budget run: the usual warmup over the first
    warmup_steps steps, then by the fraction f of the budget spent: wsd holds the peak until
    f = 1 - warmdown_fraction and goes down in a straight line to min_lr at f = 1; cosine goes from
    the peak to min_lr as f goes from 0 to 1."""
    floor = min_lr / lr

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        f = clock.fraction()
        if kind == "wsd":
            start = 1.0 - warmdown_fraction
            return 1.0 if f < start else 1.0 + (floor - 1.0) * (f - start) / warmdown_fraction
        return floor + 0.5 * (1.0 + math.cos(math.pi * f)) * (1.0 - floor)

    return factor
