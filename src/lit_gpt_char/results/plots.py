"""A run's curves from its TensorBoard event files, drawn as PNGs with matplotlib (Agg).

The event files are the one record every run keeps (finished, crashed or still running), so
the end-of-fit callback, `python -m lit_gpt_char.plot` and the sweep report all draw from them.
The tags a run logs (training.module, Lightning's LearningRateMonitor):

    train/loss          the loss of each training batch, every step (dropout on, if any)
    train/split_loss    at each validation: a fixed sample of training windows, scored in eval mode
    val/loss, val/bpc   at each validation: the whole val split, per character (nats, bits)
    train/tokens_per_s  training throughput over the last 50 steps
    lr-<Optimizer>/pgN  the learning rate of each parameter group, every step

A run from before a tag existed gets the plots its tags allow (`skipped` says which not, and why).
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, safe in worker processes
import matplotlib.pyplot as plt

TRAIN, VAL, SPLIT, TOKENS, LR = "train/loss", "val/loss", "train/split_loss", "train/tokens_per_s", "lr-"
PLOT_FILES = (
    "train_loss.png",  # train-split and val loss at each validation: the generalisation gap
    "val_loss.png",  # val loss, best starred, over the smoothed batch loss
    "train_step_loss.png",  # the batch loss at every step, raw and smoothed
    "lr.png",  # learning rate per step
    "tokens_per_s.png",  # throughput
    "val_loss_time.png",  # val loss against wall-clock minutes
)
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
    # TensorBoard logs each event file it moves to, and warns when a resumed run's purge_step drops what
    # the stopped run logged after its checkpoint (the point of purge_step): not for the run's console.
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.ERROR)
    try:
        acc.Reload()
    finally:
        tb_log.setLevel(level)
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


def _finish(fig: plt.Figure, ax: plt.Axes, title: str, ylabel: str, path: Path, xlabel: str = "step") -> Path:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_train_loss(split: Series, val: Series | None, path: Path) -> Path:
    """The train-split loss (a fixed sample of training windows, scored in eval mode) and the val
    loss at each validation: both estimated the same way, so the gap between them is the
    generalisation gap, not dropout or batch noise."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(split.steps, split.values, color="tab:blue", marker="o", ms=4, lw=1.8, label="train split (fixed sample)")
    if val is not None and val.steps:
        ax.plot(val.steps, val.values, color="tab:orange", marker="o", ms=4, lw=1.8, label="val split (whole)")
        at = dict(zip(split.steps, split.values))
        both = [(s, at[s], v) for s, v in zip(val.steps, val.values) if s in at]
        if both:
            steps, lo, hi = zip(*both)
            ax.fill_between(steps, lo, hi, color="tab:red", alpha=0.12, lw=0)
            s, t, v = both[-1]
            ax.plot([], [], color="tab:red", alpha=0.3, lw=6, label=f"gap {v - t:+.4f} at step {s}")
    return _finish(fig, ax, "Train-split and val loss at each validation", "cross-entropy (nats/char)", path)


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
    """The loss of every training batch (raw: noisy, with dropout if the model has any) and its EMA."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(train.steps, train.values, color="tab:blue", alpha=0.25, lw=0.8, label="batch loss (raw)")
    ax.plot(train.steps, ema(train.values, smoothing), color="tab:blue", lw=1.8, label=f"batch loss (EMA {smoothing})")
    _clip_ylim(ax, train.values, lo_q=0.0, hi_q=0.995)
    return _finish(fig, ax, "Training batch loss, every step", "cross-entropy (nats/char)", path)


def draw_lr(rates: Mapping[str, Series], path: Path) -> Path:
    """The learning rate of each parameter group (warmup, then the schedule)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (tag, series) in enumerate(sorted(rates.items())):
        ax.plot(series.steps, series.values, lw=1.8 if i == 0 else 1.2, ls="-" if i == 0 else "--", label=tag)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    return _finish(fig, ax, "Learning rate", "learning rate", path)


def draw_tokens_per_s(tokens: Series, path: Path) -> Path:
    """One point per 50-step window. (Runs from before the value went straight to the loggers wrote
    it again at every step until the next window's: those repeats are dropped.)"""
    kept = [(s, v) for i, (s, v) in enumerate(zip(tokens.steps, tokens.values)) if i == 0 or v != tokens.values[i - 1]]
    tokens = Series([s for s, _ in kept], [v for _, v in kept], [])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(tokens.steps, tokens.values, color="tab:purple", marker=".", lw=1.4, label="tokens/s (50-step windows)")
    finite = [v for v in tokens.values if math.isfinite(v)]
    if finite:
        mean = sum(finite) / len(finite)
        ax.axhline(mean, color="tab:purple", lw=0.8, ls=":", label=f"mean {mean:,.0f}")
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, "Training throughput", "tokens/s (all processes)", path)


def draw_val_loss_time(val: Series, path: Path, start: float) -> Path:
    """Val loss against wall-clock minutes since the run's first logged point (validation time and,
    for a resumed run, the time it was stopped included)."""
    minutes = [(t - start) / 60 for t in val.wall_times]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(minutes, val.values, color="tab:orange", marker="o", ms=4, lw=1.8, label="val loss")
    best = val.best()
    if best is not None:
        i = val.steps.index(best[0])
        ax.plot(
            [minutes[i]],
            [best[1]],
            marker="*",
            ms=14,
            color="tab:red",
            ls="none",
            label=f"best val {best[1]:.4f} after {minutes[i]:.1f} min",
        )
    ax.set_xlim(left=0)
    return _finish(fig, ax, "Validation loss against wall-clock time", "cross-entropy (nats/char)", path, "minutes")


def draw_frontier(points: Mapping[str, Mapping[float, Sequence[float]]], path: str | Path, title: str) -> Path:
    """Best val loss against the time budget, one line per recipe through the mean of its seeds at each
    budget, each seed's run a dot: which recipe is best for how many minutes (log-scaled minutes)."""
    fig, ax = plt.subplots(figsize=(9, 6.5))
    budgets = sorted({m for by_budget in points.values() for m in by_budget})
    for label, by_budget in sorted(points.items(), key=lambda kv: min(min(v) for v in kv[1].values())):
        minutes = sorted(by_budget)
        means = [sum(by_budget[m]) / len(by_budget[m]) for m in minutes]
        seeds = max(len(v) for v in by_budget.values())
        text = "\n".join(textwrap.wrap(f"{label} (seeds: up to {seeds})", 110))
        (line,) = ax.plot(minutes, means, marker="o", ms=5, lw=1.6, label=text)
        for m in minutes:
            ax.plot(
                [m] * len(by_budget[m]), by_budget[m], ls="none", marker=".", ms=7, alpha=0.6, color=line.get_color()
            )
        for m, v in zip(minutes, means):
            ax.annotate(f"{v:.3f}", (m, v), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    if len(budgets) > 1:
        ax.set_xscale("log")
        ax.set_xticks(budgets, [f"{m:g}" for m in budgets])
        ax.minorticks_off()
    ax.set_title(title)
    ax.set_xlabel("training-time budget (minutes)")
    ax.set_ylabel("best val loss (nats/char)")
    ax.grid(alpha=0.3)
    if ax.lines:  # below the axes: recipes' labels are long, and the points fill the plot
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.12), fontsize="x-small", frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _rates(scalars: Mapping[str, Series]) -> dict[str, Series]:
    return {tag: s for tag, s in scalars.items() if tag.startswith(LR) and s.steps}


def skipped(scalars: Mapping[str, Series]) -> dict[str, str]:
    """The plots the run's tags do not allow: file name -> why (a run without validation yet, or
    from before a tag was logged, or with the logging callback removed)."""
    has = {tag for tag, s in scalars.items() if s.steps}
    why = {}
    if TRAIN not in has:
        why["train_step_loss.png"] = f"no {TRAIN} points"
    if VAL not in has:
        for name in ("val_loss.png", "val_loss_time.png"):
            why[name] = f"no {VAL} points (no validation has run)"
    if SPLIT not in has:
        why["train_loss.png"] = (
            f"no {SPLIT} points (no validation has run, data.train_sample_chars=0, or a run from before it was logged)"
        )
    if not _rates(scalars):
        why["lr.png"] = f"no {LR}* points (the lr_monitor callback logs them)"
    if TOKENS not in has:
        why["tokens_per_s.png"] = f"no {TOKENS} points (logged every 50 steps)"
    return why


def draw_run(scalars: Mapping[str, Series], out_dir: str | Path, smoothing: float = SMOOTHING) -> list[Path]:
    """Every plot of PLOT_FILES the run's scalars allow (see `skipped` for the others)."""
    out_dir = Path(out_dir)
    train, val, split, tokens = (scalars.get(t) for t in (TRAIN, VAL, SPLIT, TOKENS))
    todo = set(PLOT_FILES) - set(skipped(scalars))
    start = min((s.wall_times[0] for s in scalars.values() if s.wall_times), default=0.0)
    draw = {
        "train_loss.png": lambda p: draw_train_loss(split, val, p),
        "val_loss.png": lambda p: draw_val_loss(val, p, train, smoothing),
        "train_step_loss.png": lambda p: draw_train_step_loss(train, p, smoothing),
        "lr.png": lambda p: draw_lr(_rates(scalars), p),
        "tokens_per_s.png": lambda p: draw_tokens_per_s(tokens, p),
        "val_loss_time.png": lambda p: draw_val_loss_time(val, p, start),
    }
    return [draw[name](out_dir / name) for name in PLOT_FILES if name in todo]


def _x_text(x: float, x_label: str) -> str:
    return f"step {x}" if x_label == "step" else f"{x:.1f} {x_label.split()[0]}"


def draw_val_curves(
    curves: Mapping[str, Series], path: str | Path, title: str = "Validation loss, all jobs", x_label: str = "step"
) -> Path:
    """Several runs' val curves on one plot (a sweep); the lowest point overall is starred. The
    series' steps are the x values (x_label names them: `step`, or minutes for a time axis)."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    best_label, best = None, None
    for i, (label, series) in enumerate(curves.items()):
        if not series.steps:
            continue
        style = ("-", "--", ":", "-.")[i // 10 % 4]  # the default cycle has 10 colours: then a new line style
        ax.plot(series.steps, series.values, marker="o", ms=3, lw=1.4, ls=style, label=label)
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
            label=f"best {best[1]:.4f} @ {_x_text(best[0], x_label)} ({best_label.split(':')[0]})",
        )
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel("val loss (nats/char)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(loc="upper right", fontsize="x-small", ncol=1 + len(ax.lines) // 12)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
