"""Summarise a sweep: `python -m lit_gpt_char.report SWEEP_DIR`.

Prints one row per job (the overrides that differ between jobs, best val loss and its step,
steps run, wall time, parameters, status), best first, and writes SWEEP_DIR/summary.csv and
SWEEP_DIR/val_loss_all.png. Works while the sweep still runs and with failed jobs.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lit_gpt_char.errors import ArgumentParser, UserError, check_output_dir, quiet_broken_pipes, user_errors
from lit_gpt_char.results.plots import Series, draw_val_curves
from lit_gpt_char.results.sweeps import JobSummary, differing_keys, readable, summarize_sweep

STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "failed": "bold red",
    "diverged": "bold red",
    "died": "bold red",
    "interrupted": "yellow",
}
CSV_COLUMNS = ["job", "status", "best_val_loss", "best_step", "steps", "wall_time_s", "params", "error", "path"]


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
    for name in ("best val", "best step", "steps", "wall", "params"):
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
            _params(j.params),
            f"[{STATUS_STYLE.get(j.status, 'dim')}]{j.status}[/]",
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
def report(sweep_dir: Path, console: Console | None = None, out_dir: Path | None = None) -> list[JobSummary]:
    """Print the table, write summary.csv and val_loss_all.png (into out_dir, default the sweep
    directory); return the jobs, best first."""
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir} is not a directory: pass a sweep directory, e.g. outputs/train/multirun/<time>")
    out_dir = out_dir or sweep_dir
    check_output_dir(out_dir, "--out")
    jobs = summarize_sweep(sweep_dir)
    if not jobs:
        raise UserError(
            f"no sweep jobs in {sweep_dir} (subdirectories holding .hydra/overrides.yaml): pass the directory "
            "a `python -m lit_gpt_char.train -m ...` run printed, e.g. outputs/train/multirun/<time>"
        )
    console = console or Console(width=None if sys.stdout.isatty() else 200)  # piped: do not cut columns
    keys = differing_keys(jobs)
    console.print(table(jobs, keys, f"{sweep_dir}: {len(jobs)} job(s), best val loss first"))
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
    png = draw_val_curves(legend(jobs, keys), out_dir / "val_loss_all.png", title=f"Validation loss: {sweep_dir.name}")
    console.print(f"Wrote {csv_path} and {png}", highlight=False)
    return jobs


def main(argv: list[str] | None = None) -> None:
    quiet_broken_pipes()
    p = ArgumentParser(prog="python -m lit_gpt_char.report", description=__doc__.split("\n")[0])
    p.add_argument("sweep_dir", type=Path, help="a sweep directory (outputs/train/multirun/<time>)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write summary.csv and val_loss_all.png (default: the sweep directory)",
    )
    args = p.parse_args(argv)
    report(args.sweep_dir, out_dir=args.out)


if __name__ == "__main__":
    main()
