"""End-to-end: the real CLI in subprocesses, as a user runs it."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TINY, MarkedLitGPT, MarkedTextDataModule, run_cli, run_main, scalars

from lit_gpt_char import sample, train
from lit_gpt_char.core.tokenizer import CharTokenizer
from lit_gpt_char.results import plots

pytestmark = pytest.mark.slow


def test_train_end_to_end(tmp_path, corpus):
    run_dir = tmp_path / "run"
    r = run_cli(
        "train",
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=150",
        "trainer.val_check_interval=50",
        f"hydra.run.dir={run_dir}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Best val loss:" in r.stdout
    for notice in ("LeafSpec", "not supported by the model summary", "💡 Tip", "already configured with model summary"):
        assert notice not in r.stderr + r.stdout  # Lightning's lines about nothing in this run (training/run.py)

    tok = CharTokenizer.load(run_dir / "tokenizer.json")
    assert tok.chars == sorted(set(corpus.read_text()))
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    names = [p.name for p in ckpts]
    assert "last.ckpt" in names and any(n.startswith("best-") for n in names), names

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["tokenizer"] == tok.to_dict()
    assert ckpt["hyper_parameters"]["vocab"] == tok.chars
    assert ckpt["hyper_parameters"]["model"]["n_layer"] == 2 and ckpt["hyper_parameters"]["optim"]["lr"] == 3e-3
    assert ckpt["model_config"]["vocab_size"] == tok.vocab_size
    assert ckpt["global_step"] == 150

    s = scalars(run_dir)
    assert [step for step, _ in s["train/loss"]][:3] == [0, 1, 2]  # every step
    val = s["val/loss"]
    assert len(val) == 3
    assert val[-1][1] < 0.5 * math.log(tok.vocab_size), val  # well below a uniform guess
    assert "val/bpc" in s
    assert [step for step, _ in s["train/tokens_per_s"]] == [49, 99, 149]  # one point per 50 steps, no repeats
    assert [step for step, _ in s["train/split_loss"]] == [step for step, _ in val]
    assert any(k.startswith("lr") for k in s)
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(plots.PLOT_FILES)
    record = ckpt["TextDataModule"]  # what evaluate finds the corpus and its splits by
    assert {k: v for k, v in record.items() if k != "data"} == {
        "corpus": corpus.name,
        "file": str(corpus.resolve()),
        "sha256": hashlib.sha256(corpus.read_bytes()).hexdigest(),
        "unit": "char",
        "tokens": len(corpus.read_text()),
        "splits": {"train": 18_000, "val": 2_000, "test": 0},
    }
    assert record["data"]["path"] == str(corpus.resolve()) and record["data"]["train_fraction"] == 0.9
    # Progress where no terminal watches: train.log, and stdout (a pipe here).
    log = (run_dir / "train.log").read_text()
    for line in ("step 100/150 | loss", "validation at step 50 | val/loss", "validation at step 150 | val/loss"):
        assert line in log and line in r.stdout, line
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    status = json.loads((run_dir / "status.json").read_text())
    tied = ckpt["model_config"]["tie_embeddings"]
    assert status["status"] == "completed" and status["params"] == sum(
        v.numel() for k, v in ckpt["state_dict"].items() if not (tied and k == "model.lm_head.weight")
    )  # a tied head counted once (the default's is untied)


def test_multirun_two_jobs_validate_their_last_step(tmp_path, corpus, capsys):
    """Two jobs of a sweep; neither max_steps is a multiple of val_check_interval, and one is below it:
    each validates at the interval where it fits and always at its last step (a short try just works)."""
    sweep = tmp_path / "sweep"
    args = [*TINY, f"data.path={corpus}", "trainer.val_check_interval=5", "data.val_max_batches=2"]
    code = run_main(train.main, "-m", *args, "trainer.max_steps=3,13", f"hydra.sweep.dir={sweep}")  # in-process
    assert code == 0, capsys.readouterr().err[-3000:]
    for job, steps, validated in (("0", 3, [3]), ("1", 13, [5, 10, 13])):
        assert (sweep / job / "tokenizer.json").is_file()
        assert torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == steps
        logged = scalars(sweep / job)["val/loss"]  # at the index of the last batch: step - 1
        assert [s + 1 for s, _ in logged] == validated, job
        assert list((sweep / job / "checkpoints").glob(f"best-step{steps:06d}-*.ckpt")), job


def test_configs_found_from_an_installed_wheel(tmp_path):
    """`pip install .` then `python -m lit_gpt_char.train --cfg job` from another directory."""
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("lit_gpt_char-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import lit_gpt_char; print(lit_gpt_char.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(site)), where.stdout  # the wheel, not the source tree
    r = subprocess.run(
        [sys.executable, "-m", "lit_gpt_char.train", "--cfg", "job", "experiment=nanogpt"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "n_layer: 6" in r.stdout and "_target_: lightning.pytorch.Trainer" in r.stdout


def test_compiled_run_checkpoint_samples_uncompiled(tmp_path, corpus, capsys):
    """model.compile=true trains, and its checkpoint has no `_orig_mod.` and samples without compiling."""
    run_dir = tmp_path / "run"
    r = run_cli(
        "train",
        *TINY,
        f"data.path={corpus}",
        "model.compile=true",
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "data.val_max_batches=2",
        f"hydra.run.dir={run_dir}",
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "not supported by the model summary" not in r.stderr  # bf16-mixed keeps float32 weights: no news
    sd = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert sd and not any("_orig_mod" in k for k in sd)
    capsys.readouterr()
    assert run_main(sample.main, f"ckpt={run_dir}", "max_new_tokens=20", "compile=false") == 0
    assert len(capsys.readouterr().out) >= 20


def test_the_train_command_builds_the_module_and_data_module_its_config_names(corpus, tmp_path, capsys):
    """model._target_ and data._target_ are live: a user's own subclasses train and checkpoint as ours do;
    a target that cannot be found is one error line naming the key, and nothing is left behind."""
    MarkedLitGPT.built = MarkedTextDataModule.built = 0
    run_dir = tmp_path / "r"
    args = [*TINY, f"data.path={corpus}", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    targets = ["model._target_=helpers.MarkedLitGPT", "data._target_=helpers.MarkedTextDataModule"]
    assert run_main(train.main, *args, *targets, f"hydra.run.dir={run_dir}") == 0, capsys.readouterr().err[-2000:]
    assert MarkedLitGPT.built == 1 and MarkedTextDataModule.built == 1
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model"]["n_layer"] == 2 and ckpt["global_step"] == 2
    capsys.readouterr()
    assert run_main(train.main, *args, "model._target_=nowhere.Model", f"hydra.run.dir={tmp_path / 'bad'}") == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("error: ")] == [
        next(ln for ln in err.splitlines() if ln.startswith("error: model: "))
    ] and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "bad").exists()
