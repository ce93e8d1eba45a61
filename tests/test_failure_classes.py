"""The failure classes of issue 12, one test (or more) per class: nothing crashes, nothing is lost."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    GPT2_PARTS,
    REPO,
    RESUME,
    TESTS,
    TINY,
    clean_env,
    compose_hydra,
    fill_zero_weights,
    popen_train,
    run_cli,
    run_main,
    scalars,
)

from lit_gpt_char import plot, report, sample, train
from lit_gpt_char.core import checkpoint as ckpt_files
from lit_gpt_char.core import cpu_decode, text_generator
from lit_gpt_char.core.cpu_decode import quantize_int8
from lit_gpt_char.core.generation import Decoder
from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.errors import UserError
from lit_gpt_char.loading import load_generator, resolve_checkpoint


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root and its content hash: to show a command changed nothing there."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- 1. int8 sampling works at every width -------------------------------------------------------------------
@pytest.mark.parametrize("n_embd, n_head", [(8, 1), (12, 3), (24, 2), (30, 3), (40, 4), (48, 4), (100, 2), (200, 5)])
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "no kernel"])
@pytest.mark.parametrize("parts", [{}, GPT2_PARTS], ids=["default", "gpt2"])
def test_int8_decoding_at_every_width(n_embd, n_head, kernel, parts, monkeypatch):
    """Widths the int8 kernel cannot take (not a multiple of 16) are padded; without the kernel the
    weights are dequantized. Either way the decode steps track the float model closely."""
    monkeypatch.setattr(cpu_decode, "INT8_KERNEL", kernel and hasattr(torch, "_weight_int8pack_mm"))
    torch.manual_seed(0)
    fp = GPT(GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=n_head, n_embd=n_embd, **parts)).eval()
    fill_zero_weights(fp)
    q = GPT(fp.config).eval()
    q.load_state_dict(fp.state_dict())
    q = quantize_int8(q.to(torch.bfloat16))
    seq = torch.randint(0, 65, (1, 16))
    decoder = Decoder(q, 1)
    with torch.no_grad():
        want = fp(seq)[0].log_softmax(-1)
        decoder.prefill(seq[:, :4])
        for t in range(4, 16):
            got = decoder.step(seq[:, t]).float().log_softmax(-1)
            assert torch.isfinite(got).all()
            assert (got.exp() - want[:, t].exp()).abs().max() < 0.02


def test_int8_without_the_kernel_samples_in_bf16_with_a_notice(trained_run, monkeypatch, capsys):
    monkeypatch.setattr(text_generator, "INT8_KERNEL", False)
    gen = load_generator(trained_run, device="cpu", precision="int8")
    assert gen.precision == "bfloat16" and "no int8 CPU kernel" in capsys.readouterr().err
    assert len(gen.generate("the", max_new_tokens=20)) == 23
    assert text_generator.resolve_precision("auto", torch.device("cpu")) == "bf16"


# --- 2, 3. a resume that cannot work touches nothing; one that works continues in its run's directory ----------
@pytest.mark.parametrize(
    "change, message",
    [
        ("model.n_layer=3", "model.n_layer=3 (the checkpoint's: 2)"),
        ("model.n_embd=48", "model.n_embd=48 (the checkpoint's: 64)"),
        ("data.path={other}", "vocabulary of"),
    ],
)
def test_a_resume_that_cannot_work_touches_nothing(change, message, trained_run, tmp_path, corpus, capsys):
    other = tmp_path / "other.txt"
    other.write_text("0123456789 +-*/=\n" * 2000)
    before = tree_digest(trained_run)
    logs = tmp_path / "outputs"
    code = run_main(
        train.main,
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=80",
        "trainer.val_check_interval=40",
        f"ckpt_path={trained_run}/checkpoints/last.ckpt",
        f"paths.log_dir={logs}",
        change.format(other=other),
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert tree_digest(trained_run) == before  # not a byte of the old run changed
    assert not logs.exists() or not any(p.is_file() for p in logs.rglob("*"))  # and no new run directory is left


@pytest.mark.slow
def test_a_resumed_run_keeps_one_directory_and_one_status(tmp_path, corpus):
    run = tmp_path / "run"
    args = [*TINY, f"data.path={corpus}", "trainer.val_check_interval=10", "data.val_max_batches=2"]
    assert run_main(train.main, *args, "trainer.max_steps=20", f"hydra.run.dir={run}") == 0  # in this process
    original = (run / ".hydra" / "config.yaml").read_text()
    logs = tmp_path / "outputs"
    r = run_cli(
        "train", *args, "trainer.max_steps=30", f"ckpt_path={run}/checkpoints/last.ckpt", f"paths.log_dir={logs}"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"Run directory:   {run}" in r.stdout
    # and no alarm about what a resume does on purpose: its checkpoint folder holds files, its purge_step
    # drops what the first run logged past its checkpoint
    assert "exists and is not empty" not in r.stderr and "TensorFlow restart" not in r.stdout + r.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["pid"] != os.getpid()
    assert (run / ".hydra" / "config.yaml").read_text() == original  # the run's own record is kept ...
    (resume_record,) = [p for p in (run / ".hydra").iterdir() if p.is_dir()]
    assert "trainer.max_steps=30" in (resume_record / "overrides.yaml").read_text()  # ... and the resume's beside it
    assert (
        "Effective batch" in (run / "train.log").read_text().split("Run directory")[-1]
        or (run / "train.log").read_text().count("Effective batch") == 2
    )  # one log, both commands
    assert not logs.exists() or not any(logs.rglob("*"))  # no other directory left
    assert [s for s, _ in scalars(run)["train/loss"]] == list(range(30))


# --- 4. interrupts lose no curve point ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "where, sig, step, code",
    [
        ("val", "SIGTERM", 20, 143),  # during the validation of step 20
        ("train", "SIGINT", 22, 1),  # in the middle of a training step (Ctrl-C)
        ("train", "SIGTERM", 19, 143),  # in the training step that a validation follows
    ],
)
def test_an_interrupted_and_resumed_run_logs_every_point_once(
    where, sig, step, code, straight_run, tmp_path, corpus, capsys
):
    run = tmp_path / "run"
    signal_at = [
        "+callbacks.sig._target_=helpers.SignalAt",
        f"+callbacks.sig.step={step}",
        f"+callbacks.sig.where={where}",
        f"+callbacks.sig.signal={sig}",
    ]
    r = run_cli(
        "train", *RESUME, f"data.path={corpus}", f"hydra.run.dir={run}", *signal_at, env={"PYTHONPATH": str(TESTS)}
    )
    assert r.returncode == code, r.stderr[-2000:]
    out = r.stdout + r.stderr
    assert "stopping after this step and its validation" in out and "Resume with the same command plus" in out
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] in (step, step + 1)
    resumed = run_main(train.main, *RESUME, f"data.path={corpus}", f"ckpt_path={run}/checkpoints/last.ckpt")
    assert resumed == 0, capsys.readouterr().err[-2000:]
    want, got = scalars(straight_run), scalars(run)
    for tag in ("train/loss", "val/loss"):
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag  # each point once, none missing
        assert all(abs(a - b) < 1e-6 for (_, a), (_, b) in zip(want[tag], got[tag])), tag  # and exactly equal


# --- 5. one live run per directory; default names never collide --------------------------------------------------
@pytest.mark.slow
def test_a_second_run_in_a_live_runs_directory_is_refused(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    first = popen_train(
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=100000",
        "trainer.val_check_interval=10",
        "data.val_max_batches=1",
        f"hydra.run.dir={run}",
    )
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline:
            assert first.poll() is None, first.stdout.read()
            time.sleep(0.1)
        before = (run / ".hydra" / "config.yaml").read_text()
        # the refused commands run in this process: the live run is another one either way
        args = [*TINY, f"data.path={corpus}", "trainer.val_check_interval=10"]
        again = run_main(train.main, *args, "trainer.max_steps=50", f"hydra.run.dir={run}")
        err = capsys.readouterr().err
        assert again == 2 and "already holds a run" in err, err[-2000:]
        resume = run_main(train.main, *args, "trainer.max_steps=100000", f"ckpt_path={run}/checkpoints/last.ckpt")
        err = capsys.readouterr().err
        assert resume == 2, err[-2000:]
        assert f"a run is already training in this directory: process {first.pid}" in err
        assert (run / ".hydra" / "config.yaml").read_text() == before  # the live run's record is untouched
        assert [p.name for p in (run / ".hydra").iterdir() if p.is_dir()] == []  # and nothing of the refused ones
        assert first.poll() is None  # the live run goes on
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


@pytest.mark.parametrize("where", ["file", "proc", "sweep"])
def test_a_run_directory_that_cannot_be_made_is_one_line(where, tmp_path, corpus, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine\n")
    log_dir = blocker if where != "proc" else Path("/proc/no_such_dir")  # a file; a virtual file system
    sweep = ["-m"] if where == "sweep" else []
    quick = ["trainer.max_steps=2", "trainer.val_check_interval=2", "data.val_max_batches=1"]
    if where == "file":  # after a run that worked in this process, as a session of in-process runs has
        assert run_main(train.main, *TINY, *quick, f"data.path={corpus}", f"hydra.run.dir={tmp_path / 'ok'}") == 0
    capsys.readouterr()
    code = run_main(train.main, *sweep, *TINY, f"data.path={corpus}", f"paths.log_dir={log_dir}")
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [err.strip().splitlines()[-1]]
    assert f"cannot create the run's directory {log_dir}" in err and "paths.log_dir=DIR" in err
    assert blocker.read_text() == "mine\n" and {p.name for p in tmp_path.iterdir()} <= {"a_file", "ok"}


def test_default_run_directories_are_unique_within_a_second():
    """Run directories are named by the second they start in plus a random suffix (one per process:
    the resolver's value is cached, so Hydra's and the run's own accesses agree)."""
    run_dir = compose_hydra(["paths.log_dir=L"]).hydra.run.dir
    assert re.fullmatch(r"L/train/runs/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{4}", run_dir), run_dir
    again = compose_hydra(["paths.log_dir=L"]).hydra.run.dir
    assert again[-4:] == run_dir[-4:]  # the same suffix within a process (the time may have ticked on)
    code = "from lit_gpt_char.training.rundir import run_id; print(run_id())"
    ids = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(4)
    }
    assert len(ids) >= 3  # and another in each process (2 random bytes: a repeat is 1 in 65,536)


# --- 6. a run directory's best checkpoint is its lowest val loss --------------------------------------------------
def test_best_checkpoint_is_the_lowest_val_loss_not_the_newest_file(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for i, (name, score) in enumerate([("best-a.ckpt", 1.30), ("best-b.ckpt", 1.25), ("best-c.ckpt", 1.40)]):
        torch.save(
            {"callbacks": {"ModelCheckpoint{'monitor': 'val/loss'}": {"current_score": torch.tensor(score)}}},
            folder / name,
        )
        os.utime(folder / name, (time.time() + i, time.time() + i))  # c is the newest file
    (folder / "best-step000010-val1.2000.ckpt").write_bytes(b"")  # unreadable: scored by its name
    assert resolve_checkpoint(tmp_path / "run").name == "best-step000010-val1.2000.ckpt"
    (folder / "best-step000010-val1.2000.ckpt").unlink()
    assert resolve_checkpoint(tmp_path / "run").name == "best-b.ckpt"


# --- 7. a full disk during a save: one line, the last good checkpoint named and intact ------------------------------
def test_disk_full_during_a_save_is_one_line_and_loses_nothing(tmp_path, corpus, capsys, monkeypatch):
    run = tmp_path / "run"
    real_save, saves = torch.save, []

    class FullDisk(io.RawIOBase):  # a file whose disk fills after 1,000 bytes: torch's own writer meets it
        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, data):
            self.n += len(data)
            if self.n > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) > 2:  # the first validation's checkpoints go through; the next ones find the disk full
            f = FullDisk(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpt_files.torch, "save", save)
    code = run_main(
        train.main,
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=20",
        "trainer.val_check_interval=5",
        "data.val_max_batches=1",
        f"hydra.run.dir={run}",
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert ("No space left on device" in errors[0] and "is intact" in errors[0]) or "last good checkpoint" in errors[0]
    monkeypatch.setattr(ckpt_files.torch, "save", real_save)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half file left
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


def file_size_limit(limit: int):
    """A child's preexec_fn: a real write limit (the kernel refuses a file past `limit` bytes with EFBIG,
    as a full disk refuses with ENOSPC), whoever writes: torch's zip writer, TensorBoard's thread, matplotlib."""
    import resource

    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


@pytest.mark.slow
@pytest.mark.parametrize("limit", [30_000, 60_000], ids=["the checkpoint fails", "the logger's thread fails"])
def test_a_real_write_limit_is_one_line(limit, tmp_path, corpus):
    run = tmp_path / "run"
    args = [*TINY, f"data.path={corpus}", "trainer.max_steps=20", "trainer.val_check_interval=5"]
    r = subprocess.run(
        [sys.executable, "-m", "lit_gpt_char.train", *args, f"hydra.run.dir={run}"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(limit),
    )
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "File too large" in errors[0] and ("checkpoint" in errors[0]), errors[0]
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half file left
    assert json.loads((run / "status.json").read_text())["status"] == "failed"


# --- 9. output paths are checked before any work ---------------------------------------------------------------
def test_sample_out_paths_are_checked_before_generating(trained_run, tmp_path, capsys):
    for out, message in [
        (tmp_path / "missing" / "s.txt", "does not exist: create it first"),
        (tmp_path, "is a directory"),
    ]:
        assert run_main(sample.main, f"ckpt={trained_run}", f"out={out}", "max_new_tokens=5") == 2
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""  # nothing generated


def test_sample_out_is_written_whole(trained_run, tmp_path, capsys):
    out = tmp_path / "s.txt"
    assert run_main(sample.main, f"ckpt={trained_run}", f"out={out}", "max_new_tokens=30", "num_samples=2") == 0
    assert out.read_text().count("=" * 50) == 1 and not list(tmp_path.glob(".s.txt.*"))


def test_plot_and_report_on_a_read_only_directory_say_so_and_write_where_told(tmp_path, capsys, monkeypatch):
    from helpers import fake_run

    run = fake_run(tmp_path / "sweep" / "0", n_steps=20, val_every=5)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- optim.lr=1e-3\n")
    read_only = {str(tmp_path / "sweep"), str(run), str(run / "plots")}
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: str(p) not in read_only and real_access(p, mode))
    with pytest.raises(SystemExit) as e:
        plot.main([str(run)])
    assert e.value.code == 2 and "read-only" in capsys.readouterr().err
    plot.main([str(run), "--out", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "val_loss.png").is_file()
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path / "sweep")])
    assert e.value.code == 2 and "pass --out DIR" in capsys.readouterr().err
    report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "summary")])
    assert (tmp_path / "summary" / "summary.csv").is_file() and not (tmp_path / "sweep" / "summary.csv").exists()


# --- 10. a closed pipe ends quietly ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_sampling_into_a_closed_pipe_ends_quietly(trained_run):
    # compile=false: eager writes ~500 characters/s here, so 200,000 would take minutes, and the test
    # does not wait 20-50 s for a compiled step it is not about.
    sampling = f"{sys.executable} -m lit_gpt_char.sample ckpt={trained_run} max_new_tokens=200000 compile=false"
    cmd = f"{sampling} | head -c 100"
    t0 = time.time()
    r = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, cwd=REPO, env=clean_env(), timeout=120
    )
    assert r.returncode == 0 and len(r.stdout) == 100, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "Error" not in r.stderr
    assert time.time() - t0 < 60  # it stopped, rather than generating 200,000 characters for nobody


# --- 11, 12. devices and checkpoints that are not what they say ------------------------------------------------------
@pytest.mark.parametrize(
    "device, message",
    [
        ("meta", "must be one of auto, cpu, cuda"),
        ("cuda:0", "no CUDA"),
        ("gpu", "must be one of"),
        ("cuda:x", "must be one of"),
    ],
)
def test_devices_that_are_not_devices_here(device, message, trained_run, capsys):
    if torch.cuda.is_available() and device == "cuda:0":
        pytest.skip("this machine has a GPU")
    assert run_main(sample.main, f"ckpt={trained_run}", f"device={device}") == 2
    assert message in capsys.readouterr().err


def test_a_checkpoint_with_nan_weights_is_refused(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["state_dict"]["model.ln_f.weight"].fill_(float("nan"))
    torch.save(ckpt, tmp_path / "nan.ckpt")
    with pytest.raises(UserError, match=r"NaN or infinite values \(ln_f.weight\)"):
        load_generator(tmp_path / "nan.ckpt", device="cpu")


def test_tiny_temperatures_and_long_slides(trained_run):
    gen = load_generator(trained_run, device="cpu", precision="32")
    greedy = gen.generate("the", max_new_tokens=40, temperature=0)
    assert gen.generate("the", max_new_tokens=40, temperature=1e-30) == greedy  # the limit, not a NaN
    with pytest.raises(UserError, match=r"slide=33: must be <= the model's block_size=32"):
        gen.stream("the", slide=33)
