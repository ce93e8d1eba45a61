"""Summarise a sweep: `python -m lit_gpt_char.report SWEEP_DIR`.

Prints one row per job (the overrides that differ between jobs, best val loss and its step,
steps run, wall time, parameters, status), best first, and writes SWEEP_DIR/summary.csv,
SWEEP_DIR/val_loss_all.png (val loss by step) and SWEEP_DIR/val_loss_time.png (by minutes since
each job started); with budget runs (`budget=`), also SWEEP_DIR/frontier.png and a frontier table:
each recipe's best val loss against the budget, the mean over its seeds and each seed's run.
Works while the sweep still runs and with failed jobs. Several directories (sweeps or single runs,
`report RUN_A RUN_B --out DIR`) are compared in one table and one plot.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lit_gpt_char.console import ArgumentParser, check_output_dir, quiet_broken_pipes
from lit_gpt_char.errors import UserError, user_errors
from lit_gpt_char.results.plots import Series, draw_frontier, draw_val_curves
from lit_gpt_char.results.sweeps import (
    JobSummary,
    differing_keys,
    frontier,
    minutes_since_start,
    readable,
    summarize_dirs,
)

STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "failed": "bold red",
    "diverged": "bold red",
    "died": "bold red",
    "interrupted": "yellow",
}
CSV_COLUMNS = [
    "job",
    "status",
    "best_val_loss",
    "best_step",
    "steps",
    "wall_time_s",
    "tokens_per_s",
    "params",
    "error",
    "path",
]


def _num(v: float | None, fmt: str = ".4f") -> str:
    return "-" if v is None else (str(v) if not math.isfinite(v) else format(v, fmt))


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _params(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def table(jobs: Sequence[JobSummary], keys: Sequence[str], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("job", justify="right")
    for k in keys:
        t.add_column(k)
    for name in ("best val", "best step", "steps", "wall", "tokens/s", "params"):
        t.add_column(name, justify="right")
    t.add_column("status")
    for j in jobs:
        t.add_row(
            j.name,
            *(readable(j.overrides.get(k, "-")) for k in keys),
            _num(j.best_val_loss),
            _num(j.best_step, "d"),
            _num(j.steps, "d"),
            _duration(j.wall_time_s),
            _num(j.tokens_per_s, ",.0f"),
            _params(j.params),
            f"[{STATUS_STYLE.get(j.status, 'dim')}]{j.status}[/]",
        )
    return t


def frontier_table(points: dict[str, dict[float, list[float]]]) -> Table:
    """Each recipe's best val loss at each budget: the mean of its seeds, and each seed's."""
    t = Table(title="The frontier: best val loss by budget (mean of the seeds)", title_justify="left")
    for name, justify in (("recipe", "left"), ("budget", "right"), ("mean", "right"), ("runs", "left")):
        t.add_column(name, justify=justify)
    for recipe, by_budget in points.items():
        for minutes in sorted(by_budget):
            losses = by_budget[minutes]
            t.add_row(
                recipe, f"{minutes:g}m", _num(sum(losses) / len(losses)), ", ".join(_num(v) for v in sorted(losses))
            )
    return t


def write_csv(jobs: Sequence[JobSummary], keys: Sequence[str], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([CSV_COLUMNS[0], *keys, *CSV_COLUMNS[1:]])
        for j in jobs:
            w.writerow(
                [
                    j.name,
                    *(j.overrides.get(k, "") for k in keys),
                    j.status,
                    j.best_val_loss,
                    j.best_step,
                    j.steps,
                    None if j.wall_time_s is None else round(j.wall_time_s, 1),
                    None if j.tokens_per_s is None else round(j.tokens_per_s),
                    j.params,
                    j.error,
                    j.path,
                ]
            )
    return path


def legend(jobs: Sequence[JobSummary], keys: Sequence[str]) -> dict[str, Series]:
    """Each job's val curve under its legend label: `job 3: lr=0.00277 n_layer=4` (the last part of each
    key keeps labels short; numbers to about 3 significant digits)."""
    return {
        " ".join(
            [f"job {j.name}" + (":" if keys else "")]
            + [f"{k.rsplit('.', 1)[-1]}={readable(j.overrides.get(k, '-'))}" for k in keys]
        ): j.val
        for j in jobs
    }


@user_errors
def report(
    dirs: str | Path | Sequence[str | Path], console: Console | None = None, out_dir: Path | None = None
) -> list[JobSummary]:
    """Print the table, write summary.csv, val_loss_all.png and val_loss_time.png (into out_dir,
    default the sweep directory); return the jobs, best first."""
    dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d} is not a directory: pass a sweep directory, e.g. outputs/train/multirun/<time>")
    if out_dir is None and len(dirs) > 1:
        raise UserError(f"{len(dirs)} directories to compare: pass --out DIR for the table and the plots")
    out_dir = out_dir or dirs[0]
    check_output_dir(out_dir, "--out")
    jobs = summarize_dirs(dirs)
    if not jobs:
        raise UserError(
            f"no sweep jobs in {' '.join(map(str, dirs))} (subdirectories holding .hydra/overrides.yaml): pass the "
            "directory a `python -m lit_gpt_char.train -m ...` run printed, e.g. outputs/train/multirun/<time>"
        )
    console = console or Console(width=None if sys.stdout.isatty() else 200)  # piped: do not cut columns
    keys = differing_keys(jobs)
    where = " ".join(map(str, dirs))
    console.print(table(jobs, keys, f"{where}: {len(jobs)} job(s), best val loss first"))
    for j in jobs:
        if j.error:
            console.print(f"[red]job {j.name} {j.status}:[/] {j.error}  (see {j.path})", highlight=False)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path = write_csv(jobs, keys, out_dir / "summary.csv")
    except OSError as e:
        raise UserError(
            f"--out={out_dir}: cannot be written ({e.strerror or e}): pass --out DIR to write elsewhere"
        ) from None
    name = dirs[0].name if len(dirs) == 1 else ", ".join(d.name for d in dirs)
    name = name if len(name) <= 60 else f"{len(dirs)} directories"  # a title that fits the plot
    curves = legend(jobs, keys)
    png = draw_val_curves(curves, out_dir / "val_loss_all.png", title=f"Validation loss: {name}")
    by_time = {label: minutes_since_start(j) for label, j in zip(curves, jobs, strict=True)}
    png_time = draw_val_curves(
        by_time, out_dir / "val_loss_time.png", title=f"Validation loss by time: {name}", x_label="minutes since start"
    )
    wrote = [csv_path, png, png_time]
    points = frontier(jobs)
    if points:
        console.print(frontier_table(points))
        wrote.append(
            draw_frontier(points, out_dir / "frontier.png", title=f"Best val loss by training-time budget: {name}")
        )
    console.print(f"Wrote {', '.join(map(str, wrote[:-1]))} and {wrote[-1]}", highlight=False)
    return jobs


def main(argv: list[str] | None = None) -> None:
    quiet_broken_pipes()
    p = ArgumentParser(prog="python -m lit_gpt_char.report", description=__doc__.split("\n")[0])
    p.add_argument(
        "dirs",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="a sweep directory (outputs/train/multirun/<time>) or a run directory; several are compared",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write summary.csv and the plots (default: the sweep directory; needed for several)",
    )
    args = p.parse_args(argv)
    report(args.dirs, out_dir=args.out)


if __name__ == "__main__":
    main()
