"""Fixtures: a small corpus made on the spot, the real corpus when present, a tiny trained run, and an
uninterrupted run of the resume tests' recipe."""

from __future__ import annotations

import os
from pathlib import Path

# With pytest-xdist (`-n auto`, the README's command: a worker per core) each worker, and each process
# it starts, computes on one thread: workers with a thread per core each would fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest
from helpers import REAL_CORPUS, RESUME, TINY, make_text, run_main


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
    """A run directory of a tiny model trained until it uses its context (so sliding windows score
    it lower than consecutive ones), shared by the sampling and evaluation tests. Trained in this
    process, through the command's own main (test_train runs the command itself)."""
    from lit_gpt_char import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    code = run_main(
        train.main,
        *TINY,
        "model.n_embd=64",
        "model.n_head=4",
        f"data.path={corpus}",
        "trainer.max_steps=200",
        "trainer.val_check_interval=100",
        f"hydra.run.dir={run_dir}",
    )
    assert code == 0
    return run_dir


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory, corpus) -> Path:
    """helpers.RESUME run from start to end, uninterrupted: what an interrupted and resumed run of the
    same command must log, point for point. Trained in this process."""
    from lit_gpt_char import train

    run_dir = tmp_path_factory.mktemp("straight") / "run"
    assert run_main(train.main, *RESUME, f"data.path={corpus}", f"hydra.run.dir={run_dir}") == 0
    return run_dir
