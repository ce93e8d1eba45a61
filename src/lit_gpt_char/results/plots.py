"""Loss curves from a run's TensorBoard event files, drawn as PNGs with matplotlib (Agg).

The event files are the one record every run keeps (finished, crashed or still running), so
the end-of-fit callback, `python -m lit_gpt_char.plot` and the sweep report all draw from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in worker processes
import matplotlib.pyplot as plt

TRAIN, VAL = "train/loss", "val/loss"
PLOT_FILES = ("train_loss.png", "val_loss.png", "train_step_loss.png")
SMOOTHING = 0.9  # EMA weight of the smoothed lines, TensorBoard's slider


@dataclass
class Series:
    """One scalar tag: steps, values and wall-clock times (seconds since the epoch)."""

    steps: list[int]
    values: list[float]
    wall_times: list[float]

    def best(self) -> tuple[int, float] | None:
        """(step, value) of the lowest finite value, or None if there is none."""
        finite = [(v, s) for s, v in zip(self.steps, self.values) if math.isfinite(v)]
        if not finite:
            return None
        v, s = min(finite)
        return s, v


def read_scalars(tb_dir: str | Path) -> dict[str, Series]:
    """Every scalar tag in the event files of tb_dir, all points kept, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})  # 0: keep every point
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = sorted(acc.Scalars(tag), key=lambda e: e.step)
        out[tag] = Series([e.step for e in events], [e.value for e in events], [e.wall_time for e in events])
    return out


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so it starts at the data."""
    out, last, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


def _clip_ylim(ax: plt.Axes, values: Sequence[float], lo_q: float = 0.01, hi_q: float = 0.99) -> None:
    """Zoom the y axis on the bulk of the values, so a few early spikes do not flatten the rest."""
    finite = sorted(v for v in values if math.isfinite(v))
    if len(finite) < 20:
        return
    lo, hi = finite[int(lo_q * (len(finite) - 1))], finite[int(hi_q * (len(finite) - 1))]
    pad = 0.1 * (hi - lo) or 0.1
    ax.set_ylim(lo - pad, hi + pad)


def _mark_best(ax: plt.Axes, series: Series, color: str = "tab:red") -> None:
    best = series.best()
    if best is None:
        return
    step, value = best
    ax.axhline(value, color=color, lw=0.8, ls=":")
    ax.plot([step], [value], marker="*", ms=14, color=color, ls="none", label=f"best val {value:.4f} @ step {step}")


def _finish(fig: plt.Figure, ax: plt.Axes, title: str, ylabel: str, path: Path) -> Path:
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_train_loss(train: Series, path: Path, smoothing: float = SMOOTHING) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(train.steps, train.values, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (raw)")
    ax.plot(train.steps, ema(train.values, smoothing), color="tab:blue", lw=1.8, label=f"train loss (EMA {smoothing})")
    return _finish(fig, ax, "Training loss", "cross-entropy (nats/char)", path)


def draw_val_loss(val: Series, path: Path, train: Series | None = None, smoothing: float = SMOOTHING) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train is not None and train.steps:
        ax.plot(
            train.steps,
            ema(train.values, smoothing),
            color="tab:blue",
            alpha=0.4,
            lw=1.2,
            label=f"train loss (EMA {smoothing})",
        )
    ax.plot(val.steps, val.values, color="tab:orange", marker="o", ms=4, lw=1.8, label="val loss")
    _mark_best(ax, val)
    return _finish(fig, ax, "Validation loss", "cross-entropy (nats/char)", path)


def draw_train_step_loss(train: Series, path: Path, smoothing: float = SMOOTHING) -> Path:
    """The change in training loss per step: below 0 while the model is still learning."""
    steps, deltas = [], []
    for i in range(1, len(train.steps)):
        gap = train.steps[i] - train.steps[i - 1]
        if gap > 0:
            steps.append(train.steps[i])
            deltas.append((train.values[i] - train.values[i - 1]) / gap)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.axhline(0.0, color="black", lw=0.8)
    ax.plot(steps, deltas, color="tab:green", alpha=0.25, lw=0.8, label="change per step (raw)")
    ax.plot(steps, ema(deltas, smoothing), color="tab:green", lw=1.8, label=f"change per step (EMA {smoothing})")
    _clip_ylim(ax, deltas)
    return _finish(fig, ax, "Change in training loss per step", "Δ train loss per step (nats/char)", path)


def draw_run(scalars: Mapping[str, Series], out_dir: str | Path, smoothing: float = SMOOTHING) -> list[Path]:
    """The run's plots that its scalars allow: val_loss.png needs val points, the others train ones."""
    out_dir = Path(out_dir)
    train, val = scalars.get(TRAIN), scalars.get(VAL)
    written = []
    if train is not None and train.steps:
        written.append(draw_train_loss(train, out_dir / "train_loss.png", smoothing))
        written.append(draw_train_step_loss(train, out_dir / "train_step_loss.png", smoothing))
    if val is not None and val.steps:
        written.append(draw_val_loss(val, out_dir / "val_loss.png", train, smoothing))
    return written


def draw_val_curves(curves: Mapping[str, Series], path: str | Path, title: str = "Validation loss, all jobs") -> Path:
    """Several runs' val curves on one plot (a sweep); the lowest point overall is starred."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    best_label, best = None, None
    for label, series in curves.items():
        if not series.steps:
            continue
        ax.plot(series.steps, series.values, marker="o", ms=3, lw=1.4, label=label)
        b = series.best()
        if b is not None and (best is None or b[1] < best[1]):
            best_label, best = label, b
    if best is not None:
        ax.plot(
            [best[0]],
            [best[1]],
            marker="*",
            ms=16,
            color="tab:red",
            ls="none",
            label=f"best {best[1]:.4f} @ step {best[0]} ({best_label.split(':')[0]})",
        )
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss (nats/char)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="upper right", fontsize="x-small", ncol=1 + len(ax.lines) // 12)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
