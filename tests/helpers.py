"""What several test files use: a learnable corpus, tiny-run flags, CLI runners (a subprocess, or
in-process through the entry point's own main), config composition, fake runs and TensorBoard reads."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import lit_gpt_char.training.config  # noqa: F401  (registers the resolvers the configs use)
from lit_gpt_char.core.model import GPT, GPTConfig
from lit_gpt_char.training.data import TextDataModule
from lit_gpt_char.training.module import LitGPT

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
REAL_CORPUS = Path(os.environ.get("LIT_GPT_CHAR_DATA_DIR", REPO / "data")) / "tinyshakespeare.txt"
BASELINE = REPO.parent / "shared" / "bench" / "baseline.py"

# GPT-2's parts (learned positions, LayerNorm, GELU, tied head, scaled init), as conf/model/gpt2.yaml
# writes them: for tests of what only those parts do, since the defaults are the newer parts.
GPT2_PARTS = {
    k: v
    for k, v in OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "gpt2.yaml")).items()
    if k != "defaults"
}


def fill_zero_weights(model: torch.nn.Module, std: float = 0.02) -> torch.nn.Module:
    """Random values for all-zero weights (zero_init's projections and head), so a test of the
    default parts sees every path, not zero outputs."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0, std)
    return model


# Flags that make a CLI training run small and quiet; tests add what they check.
TINY = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "model.dropout=0.0",
    "data.batch_size=16",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "optim.lr=3e-3",
    "optim.warmup_steps=5",
    "print_config=false",
    "callbacks.generate_samples.max_new_tokens=20",
    "~callbacks.rich_progress_bar",
]


# A run short enough to interrupt and resume, with dropout (so the RNG's state must be restored too).
RESUME = [*TINY, "model.dropout=0.1", "trainer.max_steps=40", "trainer.val_check_interval=10", "data.val_max_batches=4"]


def make_text(n_chars: int = 20_000, seed: int = 0) -> str:
    """Learnable text: sentences built from a small grammar, so a tiny model's loss falls fast."""
    rng = random.Random(seed)
    subjects = ["the king", "a fool", "my lord", "the queen", "good sir"]
    verbs = ["speaks", "laughs", "weeps", "sings", "sleeps"]
    endings = ["tonight.", "in the hall.", "for rome!", "again?", "with joy."]
    lines = []
    while sum(len(s) + 1 for s in lines) < n_chars:
        lines.append(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(endings)}")
    return "\n".join(lines)[:n_chars]


def clean_env(extra: dict | None = None) -> dict:
    """The environment for a CLI subprocess: no traceback switches of ours, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LIT_GPT_CHAR_TRACEBACK")}
    env.update({"PYTHONUNBUFFERED": "1", **(extra or {})})
    return env


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m lit_gpt_char.<module> args...` and return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", f"lit_gpt_char.{module}", *args],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(env),
    )


def popen_train(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "lit_gpt_char.train", *args],
        cwd=REPO,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_main(main: Callable[[], object], *args: str) -> int:
    """Run an entry point's main() in this process as `prog args...`; its exit status."""
    import logging

    GlobalHydra.instance().clear()
    argv, sys.argv = sys.argv, ["prog", *args]
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        for h in root.handlers[:]:  # Hydra configured logging for this run: leave none of it to the next
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        root.setLevel(level)


def compose_config(name: str, overrides: list[str], tmp_path: Path | None = None) -> DictConfig:
    """conf/<name>.yaml composed with overrides, as the command would see it (paths under tmp_path)."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lit_gpt_char.conf", version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        if tmp_path is not None and "paths" in cfg:
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.data_dir = str(tmp_path / "data")
            cfg.paths.log_dir = str(tmp_path / "logs")  # loggers with a store of their own (MLflow) keep it there
        del cfg["hydra"]
    return cfg


def compose_train(overrides: list[str], tmp_path: Path | None = None) -> DictConfig:

    return compose_config("train", overrides, tmp_path)


def compose_hydra(overrides: list[str]) -> DictConfig:
    """The train config with its `hydra` node (launcher, sweeper), as Hydra composes it."""

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lit_gpt_char.conf", version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag a run logged to TensorBoard: [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def fake_run(run_dir: Path, n_steps: int = 50, val_every: int | None = None, old: bool = False) -> Path:
    """A run directory with the events a training run logs: train/loss, the learning rate and tokens/s
    every step, val/loss and train/split_loss every val_every steps. old=True: only the train/loss and
    val/loss of a run from before the other tags."""
    import math

    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tensorboard")) as w:
        for step in range(n_steps):
            w.add_scalar("train/loss", 4.0 * math.exp(-step / 20) + 1.0 + 0.05 * (-1) ** step, step)
            if not old:
                w.add_scalar("lr-AdamW/pg1", 1e-3 * min(1.0, (step + 1) / 10), step)
                w.add_scalar("train/tokens_per_s", 20_000.0 + 100 * (-1) ** step, step)
            if val_every and (step + 1) % val_every == 0:
                w.add_scalar("val/loss", 4.0 * math.exp(-step / 25) + 1.2, step)
                if not old:
                    w.add_scalar("train/split_loss", 4.0 * math.exp(-step / 25) + 1.1, step)
    return run_dir


def wait_for_checkpoint(path: Path, min_step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
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


class PoisonWeights(L.Callback):
    """Turns the model's weights to NaN once `step` optimizer steps (and their validation) are done:
    a divergence at a known point."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


class SignalAt(L.Callback):
    """Sends this process a signal in the middle of optimizer step `step`'s training batch, or of the
    validation that follows it: an interrupt at a known point."""

    def __init__(self, step: int, where: str = "train", signal: str = "SIGTERM"):
        import signal as signals

        self.step, self.where, self.signal, self.sent = step, where, getattr(signals, signal), False

    def _maybe(self, trainer: L.Trainer, where: str) -> None:
        if not self.sent and where == self.where and trainer.global_step == self.step:
            self.sent = True
            os.kill(os.getpid(), self.signal)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._maybe(trainer, "train")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._maybe(trainer, "val")


def require(module: str):
    """import module, or skip the test where it is not installed; CI (CI=true) installs every extra
    and the browser, so there a missing one fails instead of skipping."""
    import importlib

    import pytest

    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


# Every model option there is (each differs from GPT-2's parts in one way), and the default parts
# together: generation must match the full forward for all of them.
DEFAULT_PARTS = {k: getattr(GPTConfig(), k) for k in GPT2_PARTS}
MODEL_OPTIONS = [
    {},
    DEFAULT_PARTS,
    {**DEFAULT_PARTS, "mlp": "swiglu", "bias": True},
    {"bias": True},
    {"n_head": 4},
    {"dropout": 0.2, "attn_dropout": 0.1},
    {"pos_emb": "rope"},
    {"pos_emb": "rope", "rope_base": 500.0},
    {"norm": "rmsnorm"},
    {"qk_norm": True},
    {"mlp": "relu2"},
    {"mlp": "swiglu"},
    {"mlp": "swiglu", "mlp_hidden": 40},
    {"mlp_hidden": 24},
    {"tie_embeddings": False},
    {"zero_init": True},
    {"zero_init": True, "tie_embeddings": False},
    {"pos_emb": "rope", "norm": "rmsnorm", "qk_norm": True, "mlp": "relu2", "tie_embeddings": False, "bias": True},
]


def option_model(block_size=16, **options) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(
        **{
            "vocab_size": 13,
            "block_size": block_size,
            "n_layer": 2,
            "n_head": 2,
            "n_embd": 32,
            "dropout": 0.1,
            **GPT2_PARTS,
            **options,
        }
    )
    m = fill_zero_weights(GPT(cfg).eval())
    with torch.no_grad():  # constant-initialized parameters get values, so one that is dropped would show
        for name, p in m.named_parameters():
            if name.endswith("bias") or (p.dim() == 1 and (p == 1).all()):
                p.normal_(0, 0.1).add_(1 if not name.endswith("bias") else 0)
    return m


# A user's own classes, selected by `_target_` (model._target_=helpers.MarkedLitGPT): they count how often
# the train command builds them, to show it builds what the config names.
class MarkedLitGPT(LitGPT):
    built = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        type(self).built += 1


class MarkedTextDataModule(TextDataModule):
    built = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        type(self).built += 1
