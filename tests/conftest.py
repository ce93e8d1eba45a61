"""Shared fixtures: a small corpus made on the spot, the real corpus when present, a CLI runner."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import lit_gpt_char.config  # noqa: F401  (registers the ${fast_precision:} resolver the configs use)

REPO = Path(__file__).resolve().parents[1]
REAL_CORPUS = Path(os.environ.get("LIT_GPT_CHAR_DATA_DIR", REPO / "data")) / "tinyshakespeare.txt"

# Flags that make a CLI training run small and quiet; tests add what they check.
TINY = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "model.dropout=0.0",
    "data.batch_size=16", "trainer.accelerator=cpu", "trainer.precision=32-true",
    "optim.lr=3e-3", "optim.warmup_steps=5", "print_config=false",
    "callbacks.generate_samples.max_new_tokens=20", "~callbacks.rich_progress_bar",
]


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


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


@pytest.fixture
def real_corpus() -> Path:
    if not REAL_CORPUS.is_file():
        pytest.skip(f"the real corpus is absent ({REAL_CORPUS})")
    return REAL_CORPUS


def run_cli(module: str, *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run `python -m lit_gpt_char.<module> args...` and return the CompletedProcess."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", f"lit_gpt_char.{module}", *args],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus) -> Path:
    """A run directory of a tiny model trained for a few steps, shared by the sampling tests."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    r = run_cli("train", *TINY, f"data.path={corpus}", "trainer.max_steps=60", "trainer.val_check_interval=30",
                f"hydra.run.dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir
