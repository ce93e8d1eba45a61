"""Sweeps end to end: a grid and an Optuna search (in this process, through train.main, as `-m` runs them),
then the report and plots from the real command line."""

import csv
import math
from pathlib import Path

import pytest
from helpers import TINY, compose_hydra, run_cli, run_main
from omegaconf import OmegaConf

from lit_gpt_char import train
from lit_gpt_char.results import plots
from lit_gpt_char.results.status import read_status

# Tiny and short: 10 steps, validated at steps 5 and 10 on 2 batches.
SHORT = [*TINY, "trainer.max_steps=10", "trainer.val_check_interval=5", "data.val_max_batches=2"]


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory, corpus) -> Path:
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    grid = ["model.n_layer=1,2", "optim.lr=1e-3,3e-3"]
    assert run_main(train.main, "-m", *SHORT, f"data.path={corpus}", *grid, f"hydra.sweep.dir={sweep}") == 0
    return sweep


@pytest.mark.slow
def test_grid_sweep_and_report(grid_sweep):
    for job in "0123":
        assert read_status(grid_sweep / job)["status"] == "completed"
        # All of them but throughput, which is logged every 50 steps (these jobs run 10).
        assert {p.name for p in (grid_sweep / job / "plots").iterdir()} == set(plots.PLOT_FILES) - {"tokens_per_s.png"}

    r = run_cli("report", str(grid_sweep))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if "completed" in line]
    assert len(rows) == 4, r.stdout
    assert "model.n_layer" in r.stdout and "optim.lr" in r.stdout
    assert "trainer.max_steps" not in r.stdout  # the same in every job: not a column

    with open(grid_sweep / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:3] == ["job", "model.n_layer", "optim.lr"]
    assert {"status", "best_val_loss", "best_step", "steps", "wall_time_s", "params"} <= set(table[0])
    assert sorted(r["job"] for r in table) == ["0", "1", "2", "3"]
    losses = [float(r["best_val_loss"]) for r in table]
    assert losses == sorted(losses) and all(math.isfinite(v) for v in losses)  # best first
    assert {r["steps"] for r in table} == {"10"}
    params = {r["model.n_layer"]: int(r["params"]) for r in table}
    assert 0 < params["1"] < params["2"]
    png = grid_sweep / "val_loss_all.png"
    assert png.is_file() and png.stat().st_size > 10_000


@pytest.mark.slow
def test_plot_redraws_a_finished_run(grid_sweep):
    run = grid_sweep / "0"
    for p in (run / "plots").iterdir():
        p.unlink()
    r = run_cli("plot", str(run))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in set(plots.PLOT_FILES) - {"tokens_per_s.png"}:
        assert (run / "plots" / name).stat().st_size > 10_000, name


@pytest.mark.slow
def test_optuna_sweep_survives_a_failing_trial(tmp_path, corpus, capsys):
    """n_head=3 does not divide n_embd=32: that trial raises. With the sampler seeded 10 the
    trials draw n_head 2, 3, 2, so the failure is in the middle and the search must go on."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "optuna"
    fixed = [
        a for a in SHORT if not a.startswith(("model.n_head=", "trainer.max_steps="))
    ]  # a fixed value beats a search
    code = run_main(
        train.main,
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=10",
        *fixed,
        "trainer.max_steps=5",
        f"data.path={corpus}",
        "model.n_head=choice(2,3)",
        f"hydra.sweep.dir={sweep}",
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    statuses = {j: read_status(sweep / j)["status"] for j in "012"}
    assert statuses == {"0": "completed", "1": "failed", "2": "completed"}, statuses
    assert "must be divisible" in read_status(sweep / "1")["error"]
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_params["model.n_head"] == 2 and math.isfinite(best.best_value)

    r = run_cli("report", str(sweep))
    assert r.returncode == 0, r.stderr[-3000:]
    with open(sweep / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(row["job"], row["model.n_head"], row["status"]) for row in table][-1] == ("1", "3", "failed")
    assert "job 1 failed" in r.stdout and "must be divisible" in r.stdout


@pytest.mark.parametrize(
    ("option", "target"),
    [
        ("launcher=joblib", "JoblibLauncher"),
        ("launcher=slurm", "SlurmLauncher"),
        ("launcher=submitit_local", "LocalLauncher"),
        ("hparams_search=optuna", "OptunaSweeper"),
    ],
)
def test_sweep_configs_compose(option, target):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_hydra([option])
    node = cfg.hydra.sweeper if option.startswith("hparams_search") else cfg.hydra.launcher
    assert node._target_.endswith(target)
    OmegaConf.to_container(node, resolve=True)  # its interpolations resolve
    if option == "hparams_search=optuna":
        assert node.sampler.seed == cfg.seed and node.direction == "minimize"
        assert set(node.params) == {"optim.lr", "model.n_layer", "model.n_embd", "model.dropout", "data.batch_size"}


@pytest.mark.slow
def test_a_diverging_job_is_marked_and_scored_worst(tmp_path, corpus, capsys):
    """The weights go NaN after step 3 (helpers.PoisonWeights): the loss goes NaN at step 4."""
    sweep = tmp_path / "sweep"
    poison = ["+callbacks.poison._target_=helpers.PoisonWeights", "+callbacks.poison.step=3"]
    code = run_main(train.main, "-m", *SHORT, f"data.path={corpus}", *poison, f"hydra.sweep.dir={sweep}")
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    info = read_status(sweep / "0")
    assert info["status"] == "diverged" and "training loss is nan" in info["error"]
    assert "scoring it inf" in out + err
