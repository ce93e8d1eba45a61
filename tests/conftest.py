"""Fixtures: a small corpus made on the spot, the real corpus when present, a tiny trained run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REAL_CORPUS, TINY, make_text, run_cli


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


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, corpus) -> Path:
    """A run directory of a tiny model trained for a few steps, shared by the sampling tests."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    r = run_cli(
        "train",
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=60",
        "trainer.val_check_interval=30",
        f"hydra.run.dir={run_dir}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir
