"""The sweep report on a sweep still running, with a failed job and a job that has just started."""

import csv
import os
import socket

import pytest
from helpers import fake_run
from rich.console import Console

from lit_gpt_char import report
from lit_gpt_char.results.status import write_status
from lit_gpt_char.results.sweeps import minutes_since_start


def fake_job(sweep, name, overrides, status=None, **events):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if events:
        fake_run(job, **events)
    if status:
        write_status(
            job,
            status,
            started=0.0,
            ended=None if status == "running" else 90.0,
            pid=os.getpid(),
            host=socket.gethostname(),
            error="RuntimeError: boom" if status == "failed" else None,
        )
    return job


def test_report_on_a_running_sweep_with_a_failed_job(tmp_path):
    sweep = tmp_path / "sweep"
    fake_job(sweep, "0", ["optim.lr=1e-3", "trainer.max_steps=50"], "completed", n_steps=50, val_every=10)
    fake_job(sweep, "1", ["optim.lr=3e-3", "trainer.max_steps=50"], "running", n_steps=12, val_every=10)
    fake_job(sweep, "2", ["optim.lr=1e-2", "trainer.max_steps=50"], "failed")
    fake_job(sweep, "10", ["optim.lr=3e-2", "trainer.max_steps=50"])  # launched, nothing written yet
    (sweep / "multirun.yaml").write_text("{}\n")  # not a job

    console = Console(record=True, width=200)
    jobs = report.report(sweep, console)
    text = console.export_text()

    assert [j.name for j in jobs] == ["0", "1", "2", "10"]  # finite best val loss first, then job order
    assert [j.status for j in jobs] == ["completed", "running", "failed", "unknown"]
    assert jobs[0].steps == 50 and jobs[0].best_step == 49 and jobs[0].wall_time_s == 90.0
    assert jobs[1].steps == 12 and jobs[1].best_step == 9
    assert "optim.lr" in text and "trainer.max_steps" not in text
    assert "job 2 failed: RuntimeError: boom" in text

    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["optim.lr"], r["status"]) for r in rows] == [
        ("0", "1e-3", "completed"),
        ("1", "3e-3", "running"),
        ("2", "1e-2", "failed"),
        ("10", "3e-2", "unknown"),
    ]
    assert rows[2]["best_val_loss"] == "" and rows[2]["error"] == "RuntimeError: boom"
    assert (sweep / "val_loss_all.png").stat().st_size > 10_000


def test_numbers_are_shown_to_about_three_significant_digits(tmp_path):
    """What Optuna suggests (lr=0.0027656442847589758) reads as 0.00277 in the table and the plot's
    legend; summary.csv keeps the exact value."""
    sweep = tmp_path / "sweep"
    fake_job(sweep, "0", ["optim.lr=0.0027656442847589758", "optim.betas=[0.9,0.951234]"], "completed", n_steps=20)
    fake_job(sweep, "1", ["optim.lr=1e-3", "optim.betas=[0.9,0.95]"], "completed", n_steps=20)
    console = Console(record=True, width=200)
    jobs = report.report(sweep, console)
    text = console.export_text()
    assert "0.00277" in text and "0.0027656" not in text and "[0.9,0.951]" in text and "1e-3" in text
    labels = list(report.legend(jobs, ["optim.lr", "optim.betas"]))
    assert labels == ["job 0: lr=0.00277 betas=[0.9,0.951]", "job 1: lr=1e-3 betas=[0.9,0.95]"]
    with open(sweep / "summary.csv", newline="") as f:
        assert next(csv.DictReader(f))["optim.lr"] == "0.0027656442847589758"


def test_report_compares_runs_from_several_directories(tmp_path):
    """Old vs new recipe: two single run directories (and a sweep) in one table and one plot each by
    step and by time; the table names each job by its directory, the time axis starts at each start."""
    old = fake_job(tmp_path / "runs", "old", ["model.mlp=gelu"], "completed", n_steps=40, val_every=10)
    new = fake_job(tmp_path / "runs2", "old", ["model.mlp=relu2"], "completed", n_steps=40, val_every=10)
    sweep = tmp_path / "sweep"
    fake_job(sweep, "0", ["model.mlp=swiglu"], "completed", n_steps=20, val_every=10)
    out = tmp_path / "compare"
    console = Console(record=True, width=200)
    jobs = report.report([old, new, sweep], console, out_dir=out)
    assert sorted(j.name for j in jobs) == ["old", "old (2)", "sweep/0"]  # same-named runs kept apart
    text = console.export_text()
    assert "model.mlp" in text and "tokens/s" in text
    assert {j.tokens_per_s for j in jobs} == {20_000.0}  # the median of train/tokens_per_s (20,000 +- 100)
    with open(out / "summary.csv", newline="") as f:
        assert sorted(r["model.mlp"] for r in csv.DictReader(f)) == ["gelu", "relu2", "swiglu"]
    assert (out / "val_loss_all.png").stat().st_size > 10_000 and (out / "val_loss_time.png").stat().st_size > 10_000
    minutes = minutes_since_start(jobs[0]).steps
    assert minutes == sorted(minutes) and all(m >= 0 for m in minutes)  # started=0.0: epoch seconds / 60


def test_report_of_several_directories_needs_out(tmp_path, capsys):
    a = fake_job(tmp_path, "a", ["seed=1"], "completed", n_steps=10, val_every=5)
    b = fake_job(tmp_path, "b", ["seed=2"], "completed", n_steps=10, val_every=5)
    with pytest.raises(SystemExit) as e:
        report.main([str(a), str(b)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--out" in err and "Traceback" not in err
    assert not (a / "summary.csv").exists()


def test_report_draws_the_frontier_of_budget_runs(tmp_path):
    """Budget runs of several recipes and seeds: each recipe's mean over its seeds at each budget, each
    seed's loss; runs without a budget, failed ones and ones without a finite loss stay off it."""
    runs = tmp_path / "runs"

    def job(name, overrides, loss, budget_s=None, status="completed"):
        d = fake_job(runs, name, overrides)
        write_status(d, status, started=0.0, ended=1.0, budget_s=budget_s, best_val_loss=loss)

    job("a", ["budget=2m", "seed=1"], 1.70, 120)
    job("b", ["budget=2m", "seed=2"], 1.72, 120)
    job("c", ["budget=5m"], 1.55, 300)
    job("d", ["budget=2m", "model.n_embd=128", "seed=3"], 1.62, 120)
    job("e", ["budget=5m", "model.n_embd=128"], 1.60, 300, status="failed")
    job("f", ["trainer.max_steps=10"], 1.40)  # by steps: not on the frontier
    job("g", ["budget=1m"], float("nan"), 60)

    console = Console(record=True, width=200)
    report.report(runs, console)
    text = console.export_text()
    from lit_gpt_char.results.sweeps import frontier, summarize_sweep

    points = frontier(summarize_sweep(runs))
    assert {r: {m: sorted(v) for m, v in by.items()} for r, by in points.items()} == {
        "default": {2.0: [1.70, 1.72], 5.0: [1.55]},
        "model.n_embd=128": {2.0: [1.62]},
    }
    assert "The frontier" in text and "1.7100" in text and "1.7000, 1.7200" in text
    assert (runs / "frontier.png").stat().st_size > 10_000


def test_no_frontier_without_budget_runs(tmp_path):
    sweep = tmp_path / "sweep"
    fake_job(sweep, "0", ["optim.lr=1e-3"], "completed", n_steps=20, val_every=10)
    report.report(sweep, Console(record=True, width=200))
    assert not (sweep / "frontier.png").exists()
