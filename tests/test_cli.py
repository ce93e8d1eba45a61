"""A CLI that explains itself: each command's --help lists its own options (from its schema), one
`lit-gpt-char` command dispatches to all, console scripts exist for each, ckpt=latest finds the newest
run, and sampling to a file or pipe shows a progress bar on stderr."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from helpers import REPO, clean_env, run_main

from lit_gpt_char import bench, cli, evaluate, export, sample, train
from lit_gpt_char.loading import load_any, resolve_checkpoint


def help_of(main, capsys) -> str:
    assert run_main(main, "--help") == 0
    return capsys.readouterr().out


def test_sample_help_lists_its_own_options(capsys):
    out = help_of(sample.main, capsys)
    for f in dataclasses.fields(sample.SampleConfig):
        assert f"  {f.name}=" in out, f.name
    assert "ckpt=???" in out and "temperature=0.8" in out and 'prompt="\\n"' in out
    flat = " ".join(out.split())  # help lines wrap to the terminal
    assert "the text to continue" in flat and "[a number in [0, 10000]]" in flat  # the help and what is allowed
    assert "$LIT_GPT_CHAR_LOG_DIR" in out  # a $ in a help text survives Hydra's template
    assert "trainer" not in out and "optim" not in out and "== Config ==" not in out  # not train's groups


def test_evaluate_help_lists_its_own_options(capsys):
    out = help_of(evaluate.main, capsys)
    for f in dataclasses.fields(evaluate.EvaluateConfig):
        assert f"  {f.name}=" in out, f.name
    assert "[null or one of train, val, test]" in " ".join(out.split()) and "trainer" not in out


def test_train_help_lists_every_group_and_its_options(capsys):
    out = help_of(train.main, capsys)
    for key in (
        "seed=1337",
        "model.n_layer=4",
        "optim.lr=0.002",
        "data.batch_size=16",
        "trainer.max_steps=3000",
        "optim.algorithm=muon",
    ):
        assert f"  {key}" in out, key
    assert "callbacks.generate_samples.every_n_steps=500" in out and "paths.log_dir=" in out
    assert "experiment: enwik8, gpt2, nanogpt, seed, short, text8" in out and "optim: adamw, muon" in out
    assert "logger: all, csv, many, mlflow, none, tensorboard, wandb" in out
    assert "  model=" not in out  # the groups themselves are not options


def test_bench_help_lists_its_own_keys(capsys):
    out = help_of(bench.main, capsys)
    assert "  mode=train" in out and "  baseline=null" in out and "builtin" in out
    assert "  model.n_layer=" not in out and "  seed=" not in out and "train --help" in out


def test_one_command_for_all(capsys):
    assert run_main(lambda: cli.main(["--help"])) == 0
    out = capsys.readouterr().out
    for name in ("train", "sample", "evaluate", "serve", "export", "plot", "report", "bench"):
        assert f"\n  {name} " in out, name
    assert run_main(lambda: cli.main(["nope"])) == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'nope': the commands are train, sample")
    assert run_main(lambda: cli.main(["sample", "--help"])) == 0
    assert "  ckpt=???" in capsys.readouterr().out


def test_every_entry_point_has_a_console_script():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lit-gpt-char"] == "lit_gpt_char.cli:main"
    for name in cli.available():
        assert scripts.get(f"lit-gpt-char-{name}") == f"lit_gpt_char.{name}:main", name


@pytest.mark.slow
def test_the_installed_command():
    exe = Path(sys.executable).parent / "lit-gpt-char"
    if not exe.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{exe} is missing: pip install -e . installs it")
        pytest.skip("the console scripts are not installed here: pip install -e .")
    r = subprocess.run([str(exe), "export", "--help"], capture_output=True, text=True, env=clean_env(), timeout=120)
    assert r.returncode == 0 and "--force" in r.stdout and "latest" in r.stdout, r.stderr


# --- ckpt=latest ----------------------------------------------------------------------------------------------
@pytest.fixture
def two_runs(trained_run, tmp_path) -> Path:
    """A log directory with an older and a newer run (a sweep job), copies of the trained run."""
    logs = tmp_path / "logs"
    for i, run in enumerate(["train/runs/2026-01-01_00-00-00", "train/multirun/2026-01-02_00-00-00/3"]):
        shutil.copytree(trained_run / "checkpoints", logs / run / "checkpoints")
        for ckpt in (logs / run / "checkpoints").iterdir():
            os.utime(ckpt, (1_700_000_000 + i * 1000,) * 2)
    return logs


def test_ckpt_latest_is_the_newest_runs_best_checkpoint(two_runs, capsys, monkeypatch):
    newest = two_runs / "train/multirun/2026-01-02_00-00-00/3/checkpoints"
    assert resolve_checkpoint("latest", two_runs).parent == newest
    assert resolve_checkpoint("latest", two_runs).name.startswith("best-")
    assert load_any("latest", log_dir=two_runs).source.parent == newest  # what evaluate loads through
    assert run_main(sample.main, "ckpt=latest", f"log_dir={two_runs}", "max_new_tokens=5") == 0
    assert f"from {newest}/best-" in capsys.readouterr().err
    monkeypatch.setenv("LIT_GPT_CHAR_LOG_DIR", str(two_runs))  # the train command's paths.log_dir
    assert run_main(sample.main, "ckpt=latest", "max_new_tokens=5") == 0
    assert f"from {newest}/best-" in capsys.readouterr().err
    out = two_runs.parent / "exported"
    assert run_main(export.main, "latest", str(out), "--log-dir", str(two_runs)) == 0
    assert load_any(out).info["step"] == load_any("latest", log_dir=two_runs).info["step"]


def test_ckpt_latest_without_runs_says_what_to_do(tmp_path, capsys):
    for log_dir in (tmp_path / "missing", tmp_path):
        assert run_main(sample.main, "ckpt=latest", f"log_dir={log_dir}") == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: ckpt=latest: no checkpoint under {log_dir}") and "lit_gpt_char.train" in err
        assert len(err.strip().splitlines()) == 1


# --- the progress bar -----------------------------------------------------------------------------------------
def test_a_progress_bar_on_stderr_when_the_text_goes_to_a_file(trained_run, tmp_path, capsys):
    out = tmp_path / "samples.txt"
    args = [f"ckpt={trained_run}", "max_new_tokens=40", "num_samples=2", f"out={out}", "stream=false", "precision=32"]
    assert run_main(sample.main, *args, "progress=true") == 0
    captured = capsys.readouterr()
    assert "%|" in captured.err and "/80 [" in captured.err and "char/s" in captured.err  # both samples counted
    assert "%|" not in captured.out and out.read_text().count("\n") >= 1
    # Unasked, it shows only where stderr is a terminal (here it is captured), and never beside streaming text.
    assert run_main(sample.main, *args) == 0
    assert "%|" not in capsys.readouterr().err
    assert run_main(sample.main, f"ckpt={trained_run}", "max_new_tokens=40", "stream=true", "precision=32") == 0
    assert "%|" not in capsys.readouterr().err


GRAMMAR = [
    (sample.main, "prompt=一"),
    (sample.main, "prompt=ROMEO: (aside)"),
    (train.main, "data.path=my corpus[1].txt"),
]


@pytest.mark.parametrize("main, override", GRAMMAR, ids=[o for _, o in GRAMMAR])
def test_an_override_hydra_cannot_read_is_one_line_saying_how_to_quote(main, override, capsys, tmp_path):
    assert run_main(main, "ckpt=" + str(tmp_path / "none"), override) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {override}: Hydra cannot read") and len(err.strip().splitlines()) == 1, err
    quoted = err.split("e.g. ")[1].strip().strip('"')  # what the user is told to type, less the shell's quotes
    assert run_main(main, "ckpt=" + str(tmp_path / "none"), quoted) == 2  # now read: the next complaint is another
    assert "Hydra cannot read" not in capsys.readouterr().err
