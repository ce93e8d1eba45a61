"""Exact resume, interrupts, atomic checkpoints, divergence, safe loading, and bad input."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow

RESUME = [*TINY, "model.dropout=0.1", "trainer.max_steps=40", "trainer.val_check_interval=10", "data.val_max_batches=4"]


def curve(run_dir, tag):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def popen_train(*args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lit_gpt_char.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(path, min_step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file():
            try:
                if torch.load(path, weights_only=True)["global_step"] >= min_step:
                    return
            except Exception:
                pass  # being replaced right now
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


def test_resume_after_sigkill_is_exact(tmp_path, corpus):
    straight = tmp_path / "straight"
    r = run_cli("train", *RESUME, f"data.path={corpus}", f"hydra.run.dir={straight}")
    assert r.returncode == 0, r.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = popen_train(*RESUME, f"data.path={corpus}", f"hydra.run.dir={killed}")
    last = killed / "checkpoints" / "last.ckpt"
    wait_for_checkpoint(last, 20, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_from = torch.load(last, weights_only=True)["global_step"]
    assert resumed_from < 40, "the run finished before it could be killed"

    r = run_cli("train", *RESUME, f"data.path={corpus}", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'resume'}")
    assert r.returncode == 0, r.stderr[-2000:]

    a, b = curve(straight, "train/loss"), curve(killed, "train/loss")
    assert [s for s, _ in b] == list(range(40)), "no duplicate or missing steps"
    assert all(abs(x - y) < 1e-6 for (_, x), (_, y) in zip(a[resumed_from:], b[resumed_from:]))
    va, vb = curve(straight, "val/loss"), curve(killed, "val/loss")
    assert [s for s, _ in vb] == [s for s, _ in va] == [9, 19, 29, 39]
    assert abs(va[-1][1] - vb[-1][1]) < 1e-6


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 1), (signal.SIGTERM, 143)])
def test_interrupt_saves_last_checkpoint(tmp_path, corpus, sig, code):
    run = tmp_path / "run"
    proc = popen_train(*TINY, f"data.path={corpus}", "trainer.max_steps=100000", "trainer.val_check_interval=20",
                       "data.val_max_batches=2", f"hydra.run.dir={run}")
    wait_for_checkpoint(run / "checkpoints" / "last.ckpt", 20, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == code, out[-2000:]
    assert "Resume with the same command plus: ckpt_path=" in out
    if sig == signal.SIGINT:  # Ctrl-C waits for the end of the batch, as SIGTERM does
        assert "Ctrl-C: stopping after this batch" in out, out[-2000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] >= 20  # the interrupt may land while step 20 is still being saved


def test_checkpoint_write_killed_midway_leaves_previous_intact(tmp_path):
    target = tmp_path / "last.ckpt"
    script = f"""
import sys, torch
from lit_gpt_char.checkpoint_io import AtomicCheckpointIO
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


def test_nonfinite_loss_stops_with_step_and_last_good_checkpoint(tmp_path, corpus):
    run = tmp_path / "run"
    r = run_cli("train", *TINY, f"data.path={corpus}", "optim.lr=1e6", "optim.warmup_steps=0",
                "trainer.gradient_clip_val=null", "trainer.max_steps=200", "trainer.val_check_interval=2",
                "data.val_max_batches=1", f"hydra.run.dir={run}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "training loss is nan" in r.stderr or "training loss is inf" in r.stderr, r.stderr[-2000:]
    assert "at step" in r.stderr and "Traceback" not in r.stderr
    for p in (run / "checkpoints").glob("best-*.ckpt"):
        sd = torch.load(p, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values())


def test_crafted_checkpoint_is_refused_and_never_runs(tmp_path, corpus):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    subprocess.run([sys.executable, "-c", f"""
import os, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
torch.save({{"state_dict": {{}}, "payload": Evil()}}, {str(evil)!r})
"""], check=True)
    for module, args in (("train", [*TINY, f"data.path={corpus}", f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'r'}"]),
                         ("sample", [f"ckpt={evil}"])):
        r = run_cli(module, *args)
        assert r.returncode == 2, r.stderr[-2000:]
        assert "refused to load" in r.stderr and "Traceback" not in r.stderr
        assert not marker.exists()


@pytest.fixture(scope="module")
def bad(tmp_path_factory, trained_run):
    d = tmp_path_factory.mktemp("badinput")
    (d / "empty.txt").write_text("")
    (d / "latin1.txt").write_bytes("Cæsar, hélas! ".encode("latin-1") * 500)
    (d / "short.txt").write_text("To be or not to be" * 5)
    (d / "other_vocab.txt").write_text("0123456789 +-*/=\n" * 2000)
    (d / "tinyshakespeare.txt").write_text("Not the real thing.\n" * 100)
    return d


BAD = [
    (["data.path={d}/missing.txt"], "does not exist"),
    (["data.path={d}/empty.txt"], "is empty"),
    (["data.path={d}/latin1.txt"], "is not UTF-8"),
    (["data.path={d}/short.txt"], "fewer than one window"),
    (["data.path=null", "paths.data_dir={d}"], "checksum mismatch"),
    (["model.n_embd=30", "model.n_head=4"], "model.n_embd=30 must be divisible by model.n_head=4"),
    (["model.n_layer=0"], "model.n_layer must be a positive integer"),
    (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
    (["data.batch_size=0"], "data.batch_size must be a positive integer"),
    (["model.block_size=-8"], "model.block_size must be a positive integer"),
    (["data.path={d}/other_vocab.txt", "ckpt_path={run}/checkpoints/last.ckpt"], "vocabulary of"),
    (["ckpt_path={d}/nope.ckpt"], "does not exist"),
    (["experiment=nonexistent"], "Could not find 'experiment/nonexistent'"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m for _, m in BAD])
def test_bad_training_input_is_explained_without_traceback(args, message, bad, trained_run, corpus, tmp_path):
    argv = [f"data.path={corpus}", *TINY, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'r'}"]
    argv += [a.format(d=bad, run=trained_run) for a in args]
    r = run_cli("train", *argv)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
