"""budget=: training for a time budget. The duration's grammar, the schedule as a function of the
budget's fraction, a run that stops on its clock (last step validated and checkpointed, the time in
status.json), a resume that continues the clock, and bad values as one line."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import TINY, run_main

from lit_gpt_char import train
from lit_gpt_char.errors import UserError
from lit_gpt_char.training.budget import BudgetClock, budget_schedule, parse_budget


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("10m", 600), ("2.5m", 150), ("1h30m", 5400), ("1h", 3600), ("45", 45), (45, 45), (0.5, 0.5)],
)
def test_a_budget_is_a_duration(text, seconds):
    assert parse_budget(text) == seconds
    assert parse_budget(None) is None


@pytest.mark.parametrize("text", ["0s", "abc", "", "-5", "10 minutes", "m", "1m1h", True, 0, float("inf")])
def test_a_budget_that_is_no_duration_is_refused(text):
    with pytest.raises(UserError, match="budget="):
        parse_budget(text)


class FixedClock(BudgetClock):
    def __init__(self, f: float):
        super().__init__(100.0)
        self.f = f

    def fraction(self) -> float:
        return self.f


@pytest.mark.parametrize("kind", ["wsd", "cosine"])
def test_the_schedule_follows_the_fraction_of_the_budget_spent(kind):
    def lr(step: int, f: float) -> float:
        return budget_schedule(10, 2e-3, 2e-5, kind, 0.2, FixedClock(f))(step)

    assert lr(0, 0.5) == pytest.approx(1 / 11) and lr(9, 0.5) == pytest.approx(10 / 11)  # warmup by steps
    assert lr(10_000, 1.0) == pytest.approx(0.01)  # min_lr / lr at the end, however many steps it took
    if kind == "wsd":
        assert lr(10, 0.0) == lr(5000, 0.79) == 1.0
        assert lr(10, 0.9) == pytest.approx(1 + (0.01 - 1) * 0.5)  # half way down the warm-down
    else:
        assert lr(10, 0.5) == pytest.approx(0.01 + 0.5 * 0.99)
    # the same fraction gives the same rate at any step: the clock, not the step, decides
    assert lr(20, 0.85) == lr(20_000, 0.85)


def test_the_clock_counts_training_and_not_validation(monkeypatch):
    now = [0.0]
    monkeypatch.setattr("lit_gpt_char.training.budget.time.perf_counter", lambda: now[0])
    clock = BudgetClock(10.0)

    class Trainer:
        should_stop = False
        world_size = 1

    t = Trainer()
    clock.on_train_start(t, None)
    now[0] = 4.0
    clock.on_train_batch_end(t, None, None, None, 0)
    assert clock.fraction() == pytest.approx(0.4) and not t.should_stop
    clock.on_validation_start(t, None)
    now[0] = 100.0  # a long validation
    assert clock.fraction() == pytest.approx(0.4)
    clock.on_train_batch_start(t, None, None, 1)
    now[0] = 106.0
    clock.on_train_batch_end(t, None, None, None, 1)
    assert t.should_stop and clock.state_dict() == {"seconds": 10.0, "spent": 10.0}
    resumed = BudgetClock(20.0)
    resumed.load_state_dict(clock.state_dict())
    assert resumed.fraction() == pytest.approx(0.5)


def test_with_several_processes_rank_zeros_clock_decides(monkeypatch):
    """Each rank's clock reads a little differently; rank 0's fraction, broadcast after every step, is
    what every rank's schedule follows and what stops every rank at the same step (else one rank would
    leave the loop a step early and the others would wait on it forever)."""
    now = [0.0]
    monkeypatch.setattr("lit_gpt_char.training.budget.time.perf_counter", lambda: now[0])
    sent = []

    class Strategy:
        def broadcast(self, obj, src=0):
            sent.append((obj, src))
            return rank_zero_says[0]

    class Trainer:
        should_stop = False
        world_size = 2
        strategy = Strategy()

    clock, t = BudgetClock(10.0), Trainer()
    clock.on_train_start(t, None)
    now[0] = 3.0
    rank_zero_says = [0.35]
    clock.on_train_batch_end(t, None, None, None, 0)
    assert sent == [(0.3, 0)] and clock.fraction() == 0.35 and not t.should_stop
    now[0] = 9.9  # this rank's clock is not yet at the end; rank 0's is
    rank_zero_says = [1.0]
    clock.on_train_batch_end(t, None, None, None, 1)
    assert t.should_stop and clock.fraction() == 1.0


@pytest.mark.slow
def test_a_budget_run_stops_on_its_clock_and_a_resume_continues_it(tmp_path, corpus, capsys):
    args = [*TINY, f"data.path={corpus}", "trainer.val_check_interval=20", "data.val_max_batches=2"]
    first = tmp_path / "first"
    code = run_main(train.main, *args, "budget=4s", f"hydra.run.dir={first}")  # in this process
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert re.search(r"Training time:   \d+s of budget=4s \(\d+ steps; validation not counted\)", out.out), out.out
    status = json.loads((first / "status.json").read_text())
    assert status["budget_s"] == 4.0 and 4.0 <= status["trained_s"] < 6.0
    last = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    steps = last["global_step"]
    assert steps == status["steps"] > 20  # more steps than max_steps' part in it: the clock ended the run
    saved = next(v for k, v in last["callbacks"].items() if "BudgetClock" in k)
    assert 4.0 <= saved["spent"] < 6.0
    # The last step was validated and checkpointed, whatever val_check_interval says.
    assert any(f"step{steps:06d}" in p.name for p in (first / "checkpoints").iterdir()), list(
        (first / "checkpoints").iterdir()
    )

    resumed = tmp_path / "resumed"
    code = run_main(  # in this process
        train.main, *args, "budget=7s", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={resumed}"
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    status = json.loads((first / "status.json").read_text())  # a resume writes on in the run's directory
    assert 7.0 <= status["trained_s"] < 9.0 and status["steps"] > steps
    assert "of budget=7s" in out.out


def test_a_bad_budget_is_one_line(tmp_path, corpus, capsys):
    code = run_main(train.main, *TINY, f"data.path={corpus}", "budget=ten", f"hydra.run.dir={tmp_path / 'r'}")
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: budget=ten: expected a duration") and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "checkpoints").exists()
