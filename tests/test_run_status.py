"""status.json, and sweep jobs that fail or diverge scoring +inf instead of ending the sweep."""

import math
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from lit_gpt_char.results import status as job_status
from lit_gpt_char.results.status import WORST, read_status, record_status, write_status


def cfg_for(tmp_path):
    return OmegaConf.create({"paths": {"output_dir": str(tmp_path)}})


@pytest.fixture(params=[False, True], ids=["single run", "multirun"])
def multirun(request, monkeypatch) -> bool:
    monkeypatch.setattr(job_status, "in_multirun", lambda: request.param)
    return request.param


def test_a_completed_job(tmp_path, multirun):
    assert record_status(lambda cfg: 1.25)(cfg_for(tmp_path)) == 1.25
    info = read_status(tmp_path)
    assert info["status"] == "completed" and info["best_val_loss"] == 1.25
    assert info["ended"] >= info["started"]


def test_a_job_that_raises(tmp_path, multirun):
    def boom(cfg):
        assert read_status(tmp_path)["status"] == "running"  # marked before the work starts
        raise RuntimeError("CUDA out of memory")

    task = record_status(boom)
    if multirun:
        assert task(cfg_for(tmp_path)) == WORST == math.inf  # the sweep goes on
    else:
        with pytest.raises(RuntimeError, match="out of memory"):
            task(cfg_for(tmp_path))
    info = read_status(tmp_path)
    assert info["status"] == "failed" and info["error"] == "RuntimeError: CUDA out of memory"
    assert "Traceback" in info["traceback"]


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_job_that_diverges(tmp_path, multirun, value):
    result = record_status(lambda cfg: value)(cfg_for(tmp_path))
    assert result == WORST if multirun else result is value
    assert read_status(tmp_path)["status"] == "diverged"


def test_a_job_without_validation_completes_with_no_value(tmp_path, multirun):
    assert record_status(lambda cfg: None)(cfg_for(tmp_path)) is None
    assert read_status(tmp_path)["status"] == "completed"


def test_interrupted_job_still_raises(tmp_path, multirun):
    def ctrl_c(cfg):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record_status(ctrl_c)(cfg_for(tmp_path))
    assert read_status(tmp_path)["status"] == "interrupted"


def test_a_running_job_whose_process_is_gone_died(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_status(tmp_path, "running", pid=gone.pid, host=job_status.socket.gethostname())
    assert read_status(tmp_path)["status"] == "died"
    write_status(tmp_path, "running", pid=job_status.os.getpid(), host=job_status.socket.gethostname())
    assert read_status(tmp_path)["status"] == "running"
    assert read_status(tmp_path / "absent") is None
