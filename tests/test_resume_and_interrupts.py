"""Exact resume, interrupts, atomic checkpoints, divergence, safe loading, and bad input."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import RESUME, TESTS, TINY, popen_train, run_cli, run_main, scalars, wait_for_checkpoint

from lit_gpt_char import train


def curve(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    return scalars(run_dir)[tag]


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(straight_run, tmp_path, corpus, capsys):
    straight = straight_run
    killed = tmp_path / "killed"
    proc = popen_train(*RESUME, f"data.path={corpus}", f"hydra.run.dir={killed}")
    last = killed / "checkpoints" / "last.ckpt"
    wait_for_checkpoint(last, 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = torch.load(last, weights_only=True)["global_step"]
    assert resumed_from < 40, "the run finished before it could be killed"

    code = run_main(train.main, *RESUME, f"data.path={corpus}", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'r'}")
    assert code == 0, capsys.readouterr().err[-2000:]  # the resume ran in this process

    a, b = curve(straight, "train/loss"), curve(killed, "train/loss")
    assert [s for s, _ in b] == list(range(40)), "no duplicate or missing steps"
    assert all(abs(x - y) < 1e-6 for (_, x), (_, y) in zip(a[resumed_from:], b[resumed_from:]))
    va, vb = curve(straight, "val/loss"), curve(killed, "val/loss")
    assert [s for s, _ in vb] == [s for s, _ in va] == [9, 19, 29, 39]
    assert abs(va[-1][1] - vb[-1][1]) < 1e-6


def test_checkpoint_write_killed_midway_leaves_previous_intact(tmp_path):
    target = tmp_path / "last.ckpt"
    script = f"""
import sys, torch
from lit_gpt_char.training.callbacks.checkpoint_io import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({{"global_step": 1, "w": torch.ones(3)}}, {str(target)!r})
print("first saved", flush=True)
io.save_checkpoint({{"global_step": 2, "w": torch.ones(150_000_000)}}, {str(target)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first saved"
    deadline = time.time() + 30
    while not list(tmp_path.glob(".last.ckpt.*.tmp")) and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # mid-write of the 600 MB temp file
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(target, weights_only=True)["global_step"] == 1


def test_nonfinite_loss_stops_with_step_and_last_good_checkpoint(tmp_path, corpus, capsys):
    """Weights go NaN after step 6: the run stops at the next step, names the last good checkpoint,
    and no checkpoint saved holds a NaN."""
    run = tmp_path / "run"
    code = run_main(
        train.main,
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=20",
        "trainer.val_check_interval=2",
        "data.val_max_batches=1",
        f"hydra.run.dir={run}",
        "+callbacks.poison._target_=helpers.PoisonWeights",
        "+callbacks.poison.step=6",
    )
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert "training loss is nan at step 7" in err and "Traceback" not in err, err[-2000:]
    assert f"the last good checkpoint is {run / 'checkpoints' / 'last.ckpt'}" in err
    best = list((run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and "step000006" in best[0].name  # the last validation before the NaN
    for p in [*best, run / "checkpoints" / "last.ckpt"]:
        ckpt = torch.load(p, weights_only=True)
        assert ckpt["global_step"] == 6 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


@pytest.mark.slow
def test_crafted_checkpoint_is_refused_and_never_runs(tmp_path, corpus):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"""
import os, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"state_dict": {{}}, "payload": Evil()}}, {str(evil)!r})
""",
        ],
        check=True,
    )
    for module, args in (
        ("train", [*TINY, f"data.path={corpus}", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'r'}"]),
        ("sample", [f"ckpt={evil}"]),
    ):
        r = run_cli(module, *args)
        assert r.returncode == 2, r.stderr[-2000:]
        assert "refused to load" in r.stderr and "Traceback" not in r.stderr
        assert not marker.exists()


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    d = tmp_path_factory.mktemp("badinput")
    (d / "empty.txt").write_text("")
    (d / "latin1.txt").write_bytes("Cæsar, hélas! ".encode("latin-1") * 500)
    (d / "short.txt").write_text("To be or not to be" * 5)
    (d / "other_vocab.txt").write_text("0123456789 +-*/=\n" * 2000)
    (d / "tinyshakespeare.txt").write_text("Not the real thing.\n" * 100)
    return d


BAD = [
    (["data.path={d}/missing.txt"], "data.path={d}/missing.txt: does not exist"),
    (["data.path={d}/empty.txt"], "is empty"),
    (["data.path={d}/latin1.txt"], "is not UTF-8 text (bad byte at offset 1)"),
    (["data.path={d}/latin1.txt"], "or train on its bytes: data.unit=byte"),
    (["data.path={d}/short.txt"], "fewer than one window"),
    (["data.path=null", "paths.data_dir={d}"], "checksum mismatch"),
    (["data.path={d}/other_vocab.txt", "ckpt_path={run}/checkpoints/last.ckpt"], "vocabulary of"),
    (["ckpt_path={d}/nope.ckpt"], "does not exist"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m.split("}")[-1] for _, m in BAD])
def test_bad_training_input_is_explained_without_traceback(args, message, bad, trained_run, corpus, tmp_path, capsys):
    argv = [
        f"data.path={corpus}",
        *TINY,
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        f"hydra.run.dir={tmp_path / 'r'}",
    ]
    code = run_main(train.main, *argv, *[a.format(d=bad, run=trained_run) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and message.format(d=bad) in errors[0], err[-2000:]
    assert "Traceback" not in err


@pytest.mark.slow
def test_bad_input_from_the_real_command_line(tmp_path):
    """The real CLI: exit status 2, one line on stderr, nothing on stdout."""
    r = run_cli("train", "model.n_layer=abc", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "error: model.n_layer=abc: must be an integer in [1, 1024]"


@pytest.mark.slow
def test_resume_is_exact_with_every_optimizer_schedule_and_averaging(tmp_path, corpus, capsys):
    """Muon beside AdamW, the wsd schedule, the EMA of the weights and the new model parts, interrupted
    at step 15 (SIGTERM) and resumed: the same curves and weights as a run that was never stopped."""
    options = [
        "optim=muon",
        "optim.schedule=wsd",
        "model.pos_emb=rope",
        "model.norm=rmsnorm",
        "model.qk_norm=true",
        "model.mlp=relu2",
        "model.tie_embeddings=false",
        "model.zero_init=true",
        "callbacks=[default,ema]",
        "callbacks.ema.decay=0.9",
    ]
    args = [*RESUME, *options, f"data.path={corpus}"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_main(train.main, *args, f"hydra.run.dir={straight}") == 0, capsys.readouterr().err[-2000:]
    r = run_cli(
        "train",
        *args,
        f"hydra.run.dir={stopped}",
        "+callbacks.sig._target_=helpers.SignalAt",
        "+callbacks.sig.step=15",
        env={"PYTHONPATH": str(TESTS)},
    )
    assert r.returncode == 143, r.stderr[-2000:]
    resumed = run_main(train.main, *args, f"ckpt_path={stopped}/checkpoints/last.ckpt")  # in this process
    assert resumed == 0, capsys.readouterr().err[-2000:]
    a, b = scalars(straight), scalars(stopped)
    for tag in ("train/loss", "val/loss"):
        assert [s for s, _ in a[tag]] == [s for s, _ in b[tag]], tag
        assert all(abs(x - y) < 1e-6 for (_, x), (_, y) in zip(a[tag], b[tag])), tag
    final = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)
    want = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(final["state_dict"][k], want["state_dict"][k]) for k in want["state_dict"])
