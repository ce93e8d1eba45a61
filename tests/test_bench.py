"""The benchmark runs and prints valid JSON (its numbers are measured elsewhere, not asserted), with
its built-in plain-PyTorch reference (baseline=builtin) or a reference script given by path."""

import json
import math

import pytest
from helpers import REPO, run_cli, run_main

from lit_gpt_char import bench

# The built-in reference is also a plain script: the baseline=PATH form, with no file from outside the repository.
BASELINE_SCRIPT = REPO / "src" / "lit_gpt_char" / "baseline.py"

pytestmark = pytest.mark.slow
SMALL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "data.batch_size=4"]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_bench_train_json(corpus, capsys):
    # In this process (one lightning import less); the sampling bench below runs as a user runs it.
    code = run_main(bench.main, *SMALL, f"data.path={corpus}", "steps=4", "warmup_steps=1", "baseline=builtin")
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    out = last_json(out)
    for key in (
        "tokens_per_s",
        "ms_per_step",
        "params",
        "precision",
        "compile",
        "device",
        "peak_rss_mb",
        "mfu",
        "plain_loop_ms_per_step",
        "lightning_overhead",
    ):
        assert key in out, key
    # Where a step goes: the parts of the plain loop's step add up to about its whole (medians of each).
    parts = [out[f"{k}_ms"] for k in ("data", "forward", "backward", "clip", "optimizer", "ema")]
    assert all(p >= 0 for p in parts) and out["optimizer_ms"] > 0 and out["ema_ms"] > 0
    assert sum(parts) == pytest.approx(out["plain_loop_ms_per_step"], rel=0.5)
    # MFU is over a peak this command measures itself: it can come out above 1 (a peak measured low).
    assert out["tokens_per_s"] > 0 and out["mfu"] > 0 and math.isfinite(out["mfu"])
    assert out["baseline_tokens_per_s"] > 0
    assert out["speedup_vs_baseline"] == pytest.approx(out["tokens_per_s"] / out["baseline_tokens_per_s"])


def test_bench_sample_json():
    args = ["mode=sample", *SMALL, "new_tokens=50", "sample_precision=int8", "repeats=2", "num_samples=3"]
    r = run_cli("bench", *args, f"baseline={BASELINE_SCRIPT}")
    assert r.returncode == 0, r.stderr[-3000:]
    out = last_json(r.stdout)
    assert out["mode"] == "sample" and out["new_tokens"] == 50 and out["tokens_per_s"] > 0
    assert out["first_char_s"] is not None and "int8" in out["precision"]
    assert 0 < out["import_torch_s"] < out["process_wall_s"]
    assert out["samples3_sequential_tokens_per_s"] > 0 and out["samples3_batched_tokens_per_s"] > 0
    assert len(out["runs_tokens_per_s"]) == 2
    # One ratio per round (ours, then the baseline's), and their median.
    ratios = [a / b for a, b in zip(out["runs_tokens_per_s"], out["runs_baseline_tokens_per_s"])]
    assert out["runs_speedup"] == pytest.approx(ratios, rel=0.01, abs=0.006)  # both rounded to 2 places
    assert out["speedup_vs_baseline"] == pytest.approx(sum(out["runs_speedup"]) / 2, rel=0.01)


def test_a_missing_baseline_is_refused_before_any_timing(corpus, capsys):
    code = run_main(bench.main, *SMALL, f"data.path={corpus}", "baseline=nowhere/baseline.py")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: baseline=nowhere/baseline.py does not exist"), err
