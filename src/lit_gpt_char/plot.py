"""Redraw a run's plots: `python -m lit_gpt_char.plot RUN_DIR`.

Reads RUN_DIR/tensorboard and writes into RUN_DIR/plots/ what training's end-of-fit callback
draws (results.plots.PLOT_FILES: train_loss, val_loss, train_step_loss, lr, tokens_per_s,
val_loss_time), for a finished run, one that crashed, or one still running; a run without some
tags gets the others and a note.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lit_gpt_char.console import ArgumentParser, check_output_dir, quiet_broken_pipes
from lit_gpt_char.errors import UserError, user_errors
from lit_gpt_char.results import plots


@user_errors
def plot(run_dir: Path, out_dir: Path | None = None, smoothing: float = plots.SMOOTHING) -> list[Path]:
    """Draw what the run's events allow; say on stderr which plots they do not (e.g. no val points yet)."""
    tb_dir = run_dir / "tensorboard"
    if not tb_dir.is_dir():
        raise UserError(
            f"{tb_dir} does not exist: pass a run directory (outputs/train/runs/<time> or a sweep job "
            "outputs/train/multirun/<time>/<n>) of a run trained with the TensorBoard logger"
        )
    if not 0 <= smoothing < 1:
        raise UserError(f"--smoothing={smoothing}: must be in [0, 1)")
    out_dir = out_dir or run_dir / "plots"
    check_output_dir(out_dir, "--out")
    scalars = plots.read_scalars(tb_dir)
    if not scalars.get(plots.TRAIN):
        raise UserError(f"no {plots.TRAIN} points in {tb_dir} yet: the run has not logged a training step")
    try:
        written = plots.draw_run(scalars, out_dir, smoothing)
    except OSError as e:
        raise UserError(
            f"--out={out_dir}: cannot be written ({e.strerror or e}): pass --out DIR to write elsewhere"
        ) from None
    for name, why in plots.skipped(scalars).items():
        print(f"note: {name} not drawn: {why} in {tb_dir}", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> None:
    quiet_broken_pipes()
    p = ArgumentParser(prog="python -m lit_gpt_char.plot", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path, help="a run directory (it holds tensorboard/)")
    p.add_argument("--out", type=Path, default=None, help="where to write the PNGs (default RUN_DIR/plots)")
    p.add_argument(
        "--smoothing",
        type=float,
        default=plots.SMOOTHING,
        help="EMA weight of the smoothed lines, in [0, 1) (default %(default)s)",
    )
    args = p.parse_args(argv)
    for path in plot(args.run_dir, args.out, args.smoothing):
        print(path)


if __name__ == "__main__":
    main()
