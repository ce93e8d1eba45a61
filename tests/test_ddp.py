"""Several processes on CPU (gloo): trainer=ddp from the CLI, ddp_spawn in-process, and the launch checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import hydra
import lightning as L
import pytest
import torch
from helpers import TINY, compose_hydra, compose_train, run_cli, run_main
from omegaconf import OmegaConf
from torch.multiprocessing.spawn import ProcessExitedException

from lit_gpt_char import sample, train
from lit_gpt_char.core.windows import Windows, loss_sum
from lit_gpt_char.training import distributed
from lit_gpt_char.training.data import TextDataModule, ValWindows
from lit_gpt_char.training.distributed import (
    choose_main_port,
    ephemeral_ports_start,
    free_port_below_ephemeral,
    relaunches_command,
)
from lit_gpt_char.training.module import LitGPT

DDP2 = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


# --- which launches can run inside a sweep ------------------------------------------------------------
@pytest.mark.parametrize(
    "trainer, relaunches",
    [
        ({"strategy": "ddp", "devices": 2, "accelerator": "cpu"}, True),
        ({"strategy": "auto", "devices": 2, "accelerator": "cpu"}, True),  # auto with 2 devices is ddp
        ({"strategy": "ddp", "devices": "0,1", "accelerator": "gpu"}, True),
        ({"strategy": "ddp", "devices": 1, "num_nodes": 2, "accelerator": "gpu"}, True),
        ({"strategy": "ddp", "devices": 1, "accelerator": "cpu"}, False),
        ({"strategy": "ddp_spawn", "devices": 2, "accelerator": "cpu"}, False),
        (
            {
                "strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy", "start_method": "spawn"},
                "devices": 2,
            },
            False,
        ),
        (
            {"strategy": {"_target_": "lightning.pytorch.strategies.FSDPStrategy"}, "devices": 4, "accelerator": "gpu"},
            True,
        ),
    ],
)
def test_which_strategies_relaunch_the_command(trainer, relaunches, monkeypatch):
    for var in ("SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert relaunches_command(trainer) is relaunches


def test_slurm_started_processes_are_not_relaunched(monkeypatch):
    """launcher=slurm: SLURM starts one task per GPU, so ddp inside a sweep job is fine."""
    monkeypatch.setenv("SLURM_NTASKS", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert not relaunches_command({"strategy": "ddp", "devices": 4, "accelerator": "gpu"})


# --- the port the processes meet on --------------------------------------------------------------------------
def test_a_multi_process_run_gets_a_fresh_port_below_the_ephemeral_range(monkeypatch):
    monkeypatch.setattr(distributed, "_GIVEN_PORT", False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    # What Lightning left from the last job of a sweep is replaced, not reused.
    monkeypatch.setenv("MASTER_PORT", "1")
    choose_main_port({"strategy": "ddp_spawn", "devices": 2, "accelerator": "cpu"})
    assert 20_000 <= int(os.environ["MASTER_PORT"]) < ephemeral_ports_start()

    for single in (
        {"strategy": "auto", "devices": 1, "accelerator": "cpu"},
        {"strategy": "ddp", "devices": 1, "accelerator": "cpu"},
        {"strategy": "ddp", "devices": 2, "num_nodes": 2, "accelerator": "gpu"},
    ):
        monkeypatch.setenv("MASTER_PORT", "1")
        choose_main_port(single)
        assert os.environ["MASTER_PORT"] == "1", single


@pytest.mark.parametrize("given", ["user", "launched", "slurm"])
def test_a_given_or_inherited_port_is_kept(given, monkeypatch):
    monkeypatch.setattr(distributed, "_GIVEN_PORT", given == "user")
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    if given == "launched":  # a process Lightning's ddp launcher started: it must meet its parent's port
        monkeypatch.setenv("LOCAL_RANK", "1")
    if given == "slurm":
        monkeypatch.setenv("SLURM_NTASKS", "2")
        monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("MASTER_PORT", "29500")
    choose_main_port({"strategy": "ddp", "devices": 2, "accelerator": "cpu"})
    assert os.environ["MASTER_PORT"] == "29500"


def test_free_port_below_ephemeral_is_free():
    port = free_port_below_ephemeral()
    assert port is not None and 20_000 <= port < ephemeral_ports_start()
    with socket.socket() as s:
        s.bind(("", port))


# --- each rank its own training windows ----------------------------------------------------------------
def test_each_rank_draws_its_own_reproducible_windows(corpus):
    def first_batch(rank: int) -> torch.Tensor:
        dm = TextDataModule({"path": str(corpus), "batch_size": 8}, block_size=32, seed=7)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))[0]

    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


# --- trainer=fsdp ------------------------------------------------------------------------------------
def test_fsdp_config_builds_a_block_wrapped_full_checkpoint_strategy(tmp_path):
    """FSDP cannot run here: Lightning 2.6 refuses FSDP without a GPU, and torch's FSDP needs an
    accelerator too. So this checks what can be checked on CPU: the strategy it builds."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from lit_gpt_char.core.model import Block

    cfg = compose_train(["trainer=fsdp", "trainer.devices=2"], tmp_path)
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "full"  # one ordinary checkpoint file: sample.py loads it
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy) and Block in policy._module_classes
    if not torch.cuda.is_available():
        cfg.trainer.accelerator = "cpu"
        with pytest.raises(Exception, match="GPU"):
            hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)


def test_generate_samples_stands_aside_under_fsdp():
    """Sampling on rank 0 alone would hang on sharded weights: the callback warns once and skips."""
    from lightning.pytorch.strategies import FSDPStrategy

    from lit_gpt_char.training.callbacks.samples import GenerateSamples

    trainer = SimpleNamespace(strategy=FSDPStrategy(), global_step=10, is_global_zero=True)
    callback = GenerateSamples(every_n_steps=5)
    with pytest.warns(UserWarning, match="off under FSDP"):
        assert callback.sample(trainer, pl_module=None) is None
    assert callback.sample(trainer, pl_module=None) is None  # and only once


# --- ddp_spawn in-process: validation over ranks, and 2 x B/2 == 1 x B --------------------------------------
STEPS, BATCH, BLOCK = 150, 16, 32


@pytest.fixture
def spawn(monkeypatch) -> Callable:
    """Run one in-process ddp_spawn launch (`fit_once`, which must start from scratch) the way
    train.py starts one: on a fresh MASTER_PORT (Lightning would keep one port for the whole pytest
    process). A rank killed by a signal gets one more try, with a warning: in CI a gloo rank died
    once with SIGABRT, which never happened here in 40+ launches and says nothing of our code; an
    error of ours is raised, not signalled, and fails at once."""

    def run(fit_once: Callable):
        for attempt in (1, 2):
            monkeypatch.setenv("MASTER_PORT", str(free_port_below_ephemeral()))
            try:
                return fit_once()
            except ProcessExitedException as e:
                if attempt == 2 or e.signal_name is None:
                    raise
                warnings.warn(f"ddp_spawn: {e}; launching once more", stacklevel=2)

    return run


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def fit(corpus: Path, root: Path, devices: int, batch_size: int, strategy: str) -> tuple[L.Trainer, LitGPT]:
    L.seed_everything(0)
    dm = TextDataModule({"path": str(corpus), "batch_size": batch_size}, block_size=BLOCK, seed=0)
    model = LitGPT(
        dm.tokenizer.chars,
        {"block_size": BLOCK, "n_layer": 2, "n_head": 2, "n_embd": 32},
        {"lr": 3e-3, "warmup_steps": 5, "decay_steps": STEPS},
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        precision="32-true",
        max_steps=STEPS,
        val_check_interval=STEPS,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, datamodule=dm)
    return trainer, model


def val_loss(model: LitGPT, val: Windows) -> float:
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, y in val:
            s, c = loss_sum(model(x)[0], y)
            total, count = total + s.item(), count + c.item()
    return total / count


@pytest.mark.slow
def test_ddp_spawn_validates_whole_split_and_matches_one_process(corpus, tmp_path, spawn):
    one, _ = fit(corpus, tmp_path / "one", devices=1, batch_size=BATCH, strategy="auto")
    two, model = spawn(lambda: fit(corpus, tmp_path / "two", devices=2, batch_size=BATCH // 2, strategy="ddp_spawn"))
    one_loss, two_loss = float(one.callback_metrics["val/loss"]), float(two.callback_metrics["val/loss"])
    # Same number of optimizer steps on the same number of windows per step: the same loss, up to noise.
    assert abs(one_loss - two_loss) < 0.05, (one_loss, two_loss)
    assert two_loss < 2.0  # and both learned (a uniform guess is ln 26 = 3.26)

    # The 2-rank val loss is the single-process loss of rank 0's final weights over the whole split:
    # each window scored once, and the ranks' sums combined per character.
    dm = TextDataModule({"path": str(corpus), "batch_size": BATCH}, block_size=BLOCK)
    dm.setup("fit")
    whole = val_loss(model, ValWindows(dm.val_data, BLOCK, 64))
    assert two_loss == pytest.approx(whole, abs=1e-4)
    half = val_loss(model, ValWindows(dm.val_data, BLOCK, 64, rank=0, world_size=2))
    assert abs(half - whole) > 1e-4  # so the check above could tell one shard from both


class RecordValBatches(L.Callback):
    """Each rank saves the shape of every validation batch it ran, per loader."""

    def __init__(self, out: Path):
        self.out, self.shapes = out, {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.shapes.setdefault(dataloader_idx, []).append(tuple(batch[0].shape))

    def on_validation_end(self, trainer, pl_module):
        torch.save(self.shapes, self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_every_rank_runs_as_many_validation_batches_and_the_loss_stays_exact(corpus, tmp_path, spawn):
    """The val split (1,999 targets: 62 windows of 32 and one of 15) does not divide between 2 ranks:
    the rank with a window fewer runs a masked one, so both run the same batches (a collective per
    forward, as under FSDP, would otherwise hang), and val/loss is still the whole split's per character."""
    data = {"path": str(corpus), "batch_size": 4}

    def validate() -> L.Trainer:
        out = fresh_dir(tmp_path / "ranks")
        L.seed_everything(0)
        dm = TextDataModule(data, block_size=BLOCK, seed=0)
        model = LitGPT(dm.tokenizer.chars, {"block_size": BLOCK, "n_layer": 1, "n_head": 2, "n_embd": 16})
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp_spawn",
            precision="32-true",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[RecordValBatches(out)],
            default_root_dir=out,
        )
        trainer.validate(model, datamodule=dm)
        return trainer

    trainer = spawn(validate)
    shapes = [torch.load(tmp_path / "ranks" / f"rank{r}.pt") for r in (0, 1)]
    assert shapes[0] == shapes[1] and len(shapes[0][0]) == len(shapes[0][1]) == 8  # 32 windows each, 4 a batch

    # The same numbers from one process, with rank 0's (the seeded) weights.
    L.seed_everything(0)
    dm = TextDataModule(data, block_size=BLOCK, seed=0)
    dm.setup("fit")
    model = LitGPT(dm.tokenizer.chars, {"block_size": BLOCK, "n_layer": 1, "n_head": 2, "n_embd": 16})
    val, sample = dm.val_dataloader()
    assert len(val.windows) % 2 == 1 and val.num_targets == len(dm.val_data) - 1
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(val_loss(model, val), rel=1e-6)
    assert float(trainer.callback_metrics["train/split_loss"]) == pytest.approx(val_loss(model, sample), rel=1e-6)


# --- trainer=ddp from the CLI ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_cli_run_one_run_dir_rank_zero_output_budget_and_sampling(tmp_path, corpus, capsys):
    """A 2-process run as users start it, trained for a time budget: rank 0's clock decides for all, so
    both ranks leave the loop after the same step (a rank that stopped alone would leave the other
    waiting in its next all-reduce: a hang)."""
    log_dir = tmp_path / "outputs"
    r = run_cli(
        "train", *TINY, *DDP2, "data.batch_size=8", f"data.path={corpus}", "budget=3s",
        "trainer.val_check_interval=20", "data.val_max_batches=2",
        env={"LIT_GPT_CHAR_LOG_DIR": str(log_dir)}, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "Starting with 2 processes" in out and "distributed_backend=gloo" in out

    # One run directory (rank 1 was re-launched into it), one .hydra, one TensorBoard writer.
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    assert [p.relative_to(log_dir) for p in log_dir.rglob(".hydra")] == [run_dir.relative_to(log_dir) / ".hydra"]
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (run_dir / "plots" / "val_loss.png").is_file() and (run_dir / "tokenizer.json").is_file()
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.devices == 2

    # The clock stopped both ranks after one step, which was validated and checkpointed.
    status = json.loads((run_dir / "status.json").read_text())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    steps = ckpt["global_step"]
    assert status["status"] == "completed" and steps == status["steps"] > 1
    assert 3.0 <= status["trained_s"] < 6.0

    # Printed once, by rank 0: the effective batch, the last step's sample, the summary.
    assert out.count("Effective batch: 16 windows (512 tokens) per optimizer step = 8 per process x 2 device(s)") == 1
    assert out.count(f"sample at step {steps}") == 1 and out.count("Best val loss:") == 1
    assert r.stdout.count("of budget=3s") == 1, r.stdout

    # Its checkpoint loads in one process and samples.
    capsys.readouterr()
    assert run_main(sample.main, f"ckpt={run_dir}", "max_new_tokens=30", "prompt=the") == 0
    text = capsys.readouterr().out
    assert text.startswith("the") and len(text.strip()) >= 30


@pytest.mark.slow
def test_multirun_with_plain_ddp_fails_early_with_advice(tmp_path, corpus, capsys):
    sweep = tmp_path / "sweep"
    args = [*TINY, *DDP2, f"data.path={corpus}", "trainer.max_steps=5", "model.n_layer=1,2", f"hydra.sweep.dir={sweep}"]
    code = run_main(train.main, "-m", *args)  # in this process: it must end before any process starts
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-2000:]
    msg = re.search(r"error: (.*)", err).group(1)
    assert "multirun" in msg and "trainer=ddp_spawn" in msg and "launcher=slurm" in msg
    assert not list(sweep.rglob("*.ckpt")) and not (sweep / "1").exists()  # stopped before any training


def test_the_ema_callback_survives_pickling_for_ddp_spawn():
    """ddp_spawn pickles the callbacks; Lightning's EMA holds a local function, ours rebuilds itself."""
    import pickle

    from lit_gpt_char.training.callbacks.ema import PicklableEMA

    ema = PicklableEMA(decay=0.9, update_starting_at_step=3)
    copy = pickle.loads(pickle.dumps(ema))
    assert type(copy) is PicklableEMA and copy._init_kwargs == {"decay": 0.9, "update_starting_at_step": 3}
    assert copy.should_update(step_idx=3) and not copy.should_update(step_idx=2)
    a, b = torch.zeros(2), torch.ones(2)
    assert torch.allclose(copy._kwargs["avg_fn"](a, b, 1), ema._kwargs["avg_fn"](a, b, 1))


@pytest.mark.slow
def test_multirun_with_ddp_spawn(tmp_path, corpus, capsys):
    """What the error above advises: a local sweep of 2-process jobs (run in this process, as the
    command runs its jobs: one after another, each spawning its two ranks)."""
    sweep = tmp_path / "sweep"
    code = run_main(
        train.main,
        "-m",
        *TINY,
        "trainer=ddp_spawn",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"data.path={corpus}",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
        "data.val_max_batches=2",
        "model.n_layer=1,2",
        f"hydra.sweep.dir={sweep}",
    )
    assert code == 0, capsys.readouterr().err[-3000:]
    for job in ("0", "1"):
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "completed"
        # The best score stays in the worker under ddp_spawn; it is read back from the best checkpoint.
        (best,) = (sweep / job / "checkpoints").glob("best-*.ckpt")
        assert status["best_val_loss"] == pytest.approx(
            float(re.search(r"val(\d+\.\d+)", best.name).group(1)), abs=1e-4
        )


def test_slurm_launcher_asks_for_one_task_per_gpu_on_every_node():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_hydra(["launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (2, 4, 4)


class RecordBatches(L.Callback):
    """Each rank saves the inputs of every training batch it sees in this fit, and the first numbers its
    global generator (the one dropout uses) would give at the fit's first batch."""

    def __init__(self, out: Path):
        self.out, self.seen, self.dropout = out, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(batch[0].clone())
        if self.dropout is None:
            state = torch.get_rng_state()
            self.dropout = torch.rand(8)
            torch.set_rng_state(state)

    def on_train_end(self, trainer, pl_module):
        torch.save({"batches": self.seen, "dropout": self.dropout}, self.out / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_ranks_draw_their_own_reproducible_dropout_and_windows_also_after_a_resume(corpus, tmp_path, spawn):
    """Each rank draws its own dropout masks, the same ones again from the same seed. The checkpoint
    holds rank 0's loader state only; after resuming, every rank must draw the windows it would have
    drawn without the interruption (not rank 0's: that would halve the batch)."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    def fit(name: str, steps: int, ckpt_path: Path | None = None) -> list[dict]:
        out = fresh_dir(tmp_path / name)
        L.seed_everything(0)
        dm = TextDataModule({"path": str(corpus), "batch_size": 4}, block_size=BLOCK, seed=0)
        model = LitGPT(
            dm.tokenizer.chars, {"block_size": BLOCK, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.2}
        )
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp_spawn",
            max_steps=steps,
            limit_val_batches=0,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out,
            callbacks=[RecordBatches(out), ModelCheckpoint(dirpath=out, save_last=True)],
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return [torch.load(out / f"rank{r}.pt") for r in (0, 1)]

    straight = spawn(lambda: fit("straight", 6))
    first = spawn(lambda: fit("first", 3))
    resumed = spawn(lambda: fit("resumed", 6, ckpt_path=tmp_path / "first" / "last.ckpt"))

    assert not torch.equal(straight[0]["dropout"], straight[1]["dropout"])  # different masks on different ranks
    assert all(torch.equal(a["dropout"], b["dropout"]) for a, b in zip(straight, first))  # the same from one seed
    for rank in (0, 1):
        assert all(torch.equal(a, b) for a, b in zip(straight[rank]["batches"], first[rank]["batches"]))
        assert len(resumed[rank]["batches"]) == 3
        assert all(torch.equal(a, b) for a, b in zip(straight[rank]["batches"][3:], resumed[rank]["batches"])), rank
    assert not torch.equal(resumed[0]["batches"][0], resumed[1]["batches"][0])
