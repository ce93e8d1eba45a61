"""A run's plots from TensorBoard events: the smoothing, what each plot draws, and `plot` on runs with
and without val points, or from before some tags were logged."""

import logging
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
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(plots.PLOT_FILES)
    for name in plots.PLOT_FILES:
        assert (tmp_path / "plots" / name).stat().st_size > 10_000, name
    assert "note:" not in capsys.readouterr().err


def test_plot_a_run_without_val_points_yet(tmp_path, capsys):
    """Training has logged, no validation has run: the plots of training, a note for each other, status 0."""
    fake_run(tmp_path, val_every=None)
    plot.main([str(tmp_path)])
    drawn = {p.name for p in (tmp_path / "plots").iterdir()}
    assert drawn == {"train_step_loss.png", "lr.png", "tokens_per_s.png"}
    err = capsys.readouterr().err
    assert "no val/loss points" in err and "no train/split_loss points" in err
    assert all(f"note: {name} not drawn" in err for name in set(plots.PLOT_FILES) - drawn)


def test_a_run_from_before_the_new_tags_plots_what_it_can(tmp_path, capsys):
    fake_run(tmp_path, val_every=10, old=True)
    plot.main([str(tmp_path)])
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {
        "val_loss.png",
        "train_step_loss.png",
        "val_loss_time.png",
    }
    err = capsys.readouterr().err
    for name in ("train_loss.png", "lr.png", "tokens_per_s.png"):
        assert f"note: {name} not drawn" in err


def drawn_lines(monkeypatch, draw) -> dict[str, list[float]]:
    """The y values of each labelled line a draw_* function puts on its axes."""
    seen = {}

    def finish(fig, ax, title, ylabel, path, xlabel="step"):
        seen.update({line.get_label(): list(line.get_ydata()) for line in ax.lines})
        seen.update({"x:" + line.get_label(): list(line.get_xdata()) for line in ax.lines})
        plots.plt.close(fig)
        return path

    monkeypatch.setattr(plots, "_finish", finish)
    draw()
    return seen


def test_train_step_loss_is_the_batch_loss_raw_and_smoothed(tmp_path, monkeypatch):
    """Not the change from one step to the next, which is what it drew before."""
    s = plots.read_scalars(fake_run(tmp_path, n_steps=30) / "tensorboard")
    train = s["train/loss"]
    lines = drawn_lines(monkeypatch, lambda: plots.draw_train_step_loss(train, tmp_path / "x.png", 0.9))
    assert lines["batch loss (raw)"] == pytest.approx(train.values)
    assert lines["batch loss (EMA 0.9)"] == pytest.approx(plots.ema(train.values, 0.9))


def test_train_loss_is_the_train_split_and_val_loss_at_each_validation(tmp_path, monkeypatch):
    s = plots.read_scalars(fake_run(tmp_path, n_steps=30, val_every=10) / "tensorboard")
    lines = drawn_lines(
        monkeypatch, lambda: plots.draw_train_loss(s["train/split_loss"], s["val/loss"], tmp_path / "x.png")
    )
    assert lines["train split (fixed sample)"] == pytest.approx(s["train/split_loss"].values)
    assert lines["val split (whole)"] == pytest.approx(s["val/loss"].values)
    assert lines["x:val split (whole)"] == [9, 19, 29]
    gap = s["val/loss"].values[-1] - s["train/split_loss"].values[-1]
    assert f"gap {gap:+.4f} at step 29" in lines


def test_val_loss_against_minutes_starts_at_the_runs_first_point(tmp_path, monkeypatch):
    val = plots.Series([10, 20], [2.0, 1.5], [1000.0 + 60, 1000.0 + 150])
    lines = drawn_lines(monkeypatch, lambda: plots.draw_val_loss_time(val, tmp_path / "x.png", start=1000.0))
    assert lines["x:val loss"] == pytest.approx([1.0, 2.5]) and lines["val loss"] == [2.0, 1.5]


def test_tokens_per_s_drops_the_repeats_older_runs_logged(tmp_path, monkeypatch):
    tokens = plots.Series([49, 50, 51, 99, 100, 149], [900.0, 900.0, 900.0, 700.0, 700.0, 800.0], [0.0] * 6)
    lines = drawn_lines(monkeypatch, lambda: plots.draw_tokens_per_s(tokens, tmp_path / "x.png"))
    assert lines["x:tokens/s (50-step windows)"] == [49, 99, 149] and "mean 800" in lines


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


def test_a_resumed_runs_curves_are_read_quietly(tmp_path, caplog):
    """A resume's purge_step drops what the stopped run logged past its checkpoint; TensorBoard logs that
    as a warning ("a TensorFlow restart"), which reading the curves keeps off the run's console."""
    from torch.utils.tensorboard import SummaryWriter

    tb = tmp_path / "tensorboard"
    with SummaryWriter(str(tb)) as w:
        for step in range(10):
            w.add_scalar("train/loss", 1.0, step)
    with SummaryWriter(str(tb), purge_step=5) as w:
        for step in range(5, 12):
            w.add_scalar("train/loss", 2.0, step)
    with caplog.at_level(logging.INFO):
        series = plots.read_scalars(tb)["train/loss"]
    assert series.steps == list(range(12)) and series.values == [1.0] * 5 + [2.0] * 7
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("tensorboard")]
