"""What each job of a sweep did, read back from its directory alone.

A job directory (``<sweep dir>/<n>/``) holds ``.hydra/overrides.yaml`` (what the job changed),
``tensorboard/`` (its curves, written as it trains), ``checkpoints/`` and ``status.json``
(see results.status), which also holds the parameter count. Everything here tolerates a job that
is still running or has failed, and nothing imports torch or lightning.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lit_gpt_char.results.plots import TOKENS, TRAIN, VAL, Series, read_scalars
from lit_gpt_char.results.status import read_status


@dataclass
class JobSummary:
    name: str  # the job's directory name: its number in the sweep
    path: Path
    overrides: dict[str, str]  # key -> value as given on the command line / by the sweeper
    status: str  # completed | failed | diverged | running | died | interrupted | unknown
    best_val_loss: float | None = None
    best_step: int | None = None
    steps: int | None = None  # optimizer steps logged so far
    wall_time_s: float | None = None
    started: float | None = None  # when the job first started (seconds since the epoch), for time axes
    params: int | None = None
    tokens_per_s: float | None = None  # the median of train/tokens_per_s: what a setting costs in speed
    budget_s: float | None = None  # a budget run's budget (status.json), for the frontier
    error: str | None = None
    val: Series = field(default_factory=lambda: Series([], [], []))


def find_jobs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep, in job order; a single run directory is its own one job."""
    if (sweep_dir / ".hydra").is_dir():
        return [sweep_dir]
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").is_file()]
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def read_overrides(job_dir: Path) -> dict[str, str]:
    try:
        items = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")) or []
    except Exception:  # missing, half written or not YAML: show the job without its overrides
        return {}
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def summarize_job(job_dir: Path) -> JobSummary:
    info = read_status(job_dir) or {}
    tb = job_dir / "tensorboard"
    scalars = read_scalars(tb) if tb.is_dir() else {}
    job = JobSummary(
        job_dir.name, job_dir, read_overrides(job_dir), info.get("status", "unknown"), error=info.get("error")
    )
    if VAL in scalars:
        job.val = scalars[VAL]
        best = job.val.best()
        if best is not None:
            job.best_step, job.best_val_loss = best
    if job.best_val_loss is None and isinstance(info.get("best_val_loss"), (int, float)):
        job.best_val_loss = info["best_val_loss"]
    if scalars.get(TRAIN) and scalars[TRAIN].steps:
        job.steps = scalars[TRAIN].steps[-1] + 1
    job.wall_time_s = _wall_time(info, scalars)
    if scalars.get(TOKENS) and scalars[TOKENS].values:
        job.tokens_per_s = statistics.median(scalars[TOKENS].values)
    # The first start: a resumed run's status.json holds its latest start, its events the earlier ones.
    starts = [info.get("started")] + [s.wall_times[0] for s in scalars.values() if s.wall_times]
    job.started = min((t for t in starts if isinstance(t, (int, float))), default=None)
    job.params = info.get("params") if isinstance(info.get("params"), int) else None
    budget = info.get("budget_s")
    job.budget_s = float(budget) if isinstance(budget, (int, float)) and budget > 0 else None
    return job


def _wall_time(info: dict, scalars: dict[str, Series]) -> float | None:
    """From the job's start to its end (or to now, or its last event if it died)."""
    last_event = max((s.wall_times[-1] for s in scalars.values() if s.wall_times), default=None)
    started = info.get("started")
    if started is not None:
        end = info.get("ended") or (time.time() if info.get("status") == "running" else last_event)
        return end - started if end is not None else None
    first_event = min((s.wall_times[0] for s in scalars.values() if s.wall_times), default=None)
    return last_event - first_event if first_event is not None and last_event is not None else None


_FLOAT = re.compile(r"(?<![\w.])[+-]?(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?(?![\w.])")


def readable(value: str, digits: int = 3) -> str:
    """An override's value as a person reads it: each decimal number with more than `digits` significant
    digits rounded to that many (lr=0.0027656442847589758 -> 0.00277, [0.912345,0.95] -> [0.912,0.95]);
    integers, words and short numbers as given. summary.csv keeps the exact values."""

    def short(m: re.Match) -> str:
        text = m.group()
        significant = re.split("[eE]", text)[0].lstrip("+-").replace(".", "").lstrip("0").rstrip("0")
        return f"{float(text):.{digits}g}" if len(significant) > digits else text

    return _FLOAT.sub(short, value)


def differing_keys(jobs: Sequence[JobSummary]) -> list[str]:
    """Override keys whose value is not the same in every job, in first-seen order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    return [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]


def sort_key(job: JobSummary) -> tuple:
    """Best val loss first; jobs without a finite one last, in job order."""
    v = job.best_val_loss
    finite = v is not None and math.isfinite(v)
    return (not finite, v if finite else 0.0, int(job.name) if job.name.isdigit() else math.inf, job.name)


def summarize_sweep(sweep_dir: Path) -> list[JobSummary]:
    return sorted((summarize_job(p) for p in find_jobs(sweep_dir)), key=sort_key)


def summarize_dirs(dirs: Sequence[Path]) -> list[JobSummary]:
    """The jobs of several sweep or run directories together, best first. With more than one
    directory each job is named `<directory>/<job>` (a run directory: its own name)."""
    if len(dirs) == 1:
        return summarize_sweep(dirs[0])
    jobs = []
    for d in dirs:
        for p in find_jobs(d):
            job = summarize_job(p)
            job.name = d.name if p == d else f"{d.name}/{p.name}"
            seen = sum(j.name == job.name or j.name.startswith(f"{job.name} (") for j in jobs)
            job.name += f" ({seen + 1})" if seen else ""  # two directories of the same name
            jobs.append(job)
    return sorted(jobs, key=sort_key)


def minutes_since_start(job: JobSummary) -> Series:
    """The job's val curve against minutes since it started (the whole command: start-up included)."""
    t0 = job.started if job.started is not None else (job.val.wall_times[0] if job.val.wall_times else 0.0)
    return Series([(t - t0) / 60 for t in job.val.wall_times], job.val.values, job.val.wall_times)


FRONTIER_IGNORES = ("budget", "seed")  # what a recipe is not: the x axis, and the seeds it is averaged over


def recipe_of(job: JobSummary) -> str:
    """The job's recipe, as a label: its overrides less the budget and the seed ("default" if none), with
    their exact values (rounded ones could merge two recipes)."""
    parts = [
        f"{k.lstrip('+~')}={v}"
        for k, v in job.overrides.items()
        if k.lstrip("+~") not in FRONTIER_IGNORES and not k.startswith("hydra.")
    ]
    return " ".join(parts) or "default"


def frontier(jobs: Sequence[JobSummary]) -> dict[str, dict[float, list[float]]]:
    """The best val loss of each completed budget run, by recipe and then by budget (minutes):
    {recipe: {minutes: [loss of each seed]}}. Runs without a budget or a finite loss are left out."""
    out: dict[str, dict[float, list[float]]] = {}
    for j in jobs:
        v = j.best_val_loss
        if j.budget_s is None or j.status != "completed" or v is None or not math.isfinite(v):
            continue
        out.setdefault(recipe_of(j), {}).setdefault(round(j.budget_s / 60, 3), []).append(v)
    return out
