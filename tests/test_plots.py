"""Loss plots from TensorBoard events: the smoothing, and `plot` on runs with and without val points."""

import math

import pytest
from helpers import fake_run

from lit_gpt_char import plot
from lit_gpt_char.results import plots


def test_ema_is_debiased_and_skips_non_finite_values():
    assert plots.ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # starts at the data, not at 0
    out = plots.ema([1.0, math.nan, 3.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1]) and 1.0 < out[2] < 3.0


def test_read_scalars_and_best(tmp_path):
    s = plots.read_scalars(fake_run(tmp_path, n_steps=40, val_every=10) / "tensorboard")
    assert s["train/loss"].steps == list(range(40))
    val = s["val/loss"]
    assert val.steps == [9, 19, 29, 39]
    assert val.best() == (39, pytest.approx(min(val.values)))
    assert plots.Series([1], [math.nan], [0.0]).best() is None


def test_plot_a_finished_run(tmp_path, capsys):
    fake_run(tmp_path, val_every=10)
    plot.main([str(tmp_path)])
    for name in plots.PLOT_FILES:
        assert (tmp_path / "plots" / name).stat().st_size > 10_000, name
    assert "note:" not in capsys.readouterr().err


def test_plot_a_run_without_val_points_yet(tmp_path, capsys):
    """Training has logged, no validation has run: the train plots, a note, no val_loss.png, status 0."""
    fake_run(tmp_path, val_every=None)
    plot.main([str(tmp_path)])
    assert (tmp_path / "plots" / "train_loss.png").is_file() and (tmp_path / "plots" / "train_step_loss.png").is_file()
    assert not (tmp_path / "plots" / "val_loss.png").exists()
    assert "no val/loss points" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["no tensorboard dir", "no train points", "bad smoothing"])
def test_plot_errors_name_the_problem(tmp_path, capsys, case):
    args = [str(tmp_path)]
    if case == "no train points":
        (tmp_path / "tensorboard").mkdir()
    if case == "bad smoothing":
        fake_run(tmp_path)
        args.append("--smoothing=1.5")
    with pytest.raises(SystemExit) as e:
        plot.main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and {
            "no tensorboard dir": "tensorboard does not exist",
            "no train points": "no train/loss points",
            "bad smoothing": "--smoothing",
        }[case]
        in err
    )
