"""Progress where no terminal watches: lines into the log file and to stdout when it is not a terminal,
and a progress bar whose epoch counter makes sense when training runs by steps."""

from __future__ import annotations

import logging
import re

import lightning as L
import pytest

from lit_gpt_char.training.callbacks import progress
from lit_gpt_char.training.callbacks.progress import ProgressBar, ProgressLog
from lit_gpt_char.training.data import TextDataModule
from lit_gpt_char.training.module import LitGPT

STEP_LINE = re.compile(r"step (\d+)/10 \| loss \d+\.\d{4} \| lr \d\.\d\de-\d\d \| [\d,]+ tokens/s \| ETA \d+m\d\ds$")
VAL_LINE = re.compile(
    r"validation at step (\d+) \| val/loss \d\.\d{4} \(best \d\.\d{4}, val/bpc \d\.\d{4}\) \| "
    r"train/split_loss \d\.\d{4} \(gap [+-]\d\.\d{4}\) \| \d+\.\d s$"
)


def fit_with(corpus, tmp_path, **options) -> list[str]:
    """A 10-step fit validated every 5 steps with a ProgressLog; the lines train.log got."""
    log_file = tmp_path / "train.log"
    handler = logging.FileHandler(log_file)  # what Hydra's job logging puts on the root logger
    handler.setFormatter(logging.Formatter("%(name)s - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        L.seed_everything(0)
        dm = TextDataModule({"path": str(corpus), "batch_size": 4}, block_size=16, seed=0)
        model = LitGPT(dm.tokenizer.chars, {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16})
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=10,
            val_check_interval=5,
            limit_val_batches=3,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ProgressLog(every_n_steps=4, **options)],
            default_root_dir=tmp_path,
        )
        trainer.fit(model, datamodule=dm)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    return log_file.read_text().splitlines()


def test_progress_lines_go_to_the_log_file_and_to_stdout_when_it_is_not_a_terminal(corpus, tmp_path, capsys):
    logged = fit_with(corpus, tmp_path)  # stdout is pytest's capture here: not a terminal
    assert all(line.startswith("lit_gpt_char.progress - ") for line in logged)
    lines = [line.split(" - ", 1)[1] for line in logged]
    steps = [int(m.group(1)) for m in map(STEP_LINE.match, lines) if m]
    validations = [int(m.group(1)) for m in map(VAL_LINE.match, lines) if m]
    assert steps == [4, 8] and validations == [5, 10] and len(lines) == 4, lines
    printed = capsys.readouterr().out.splitlines()
    assert [line for line in printed if "step" in line] == lines  # no handler on stdout: printed as they are


def test_no_progress_lines_on_a_terminal(corpus, tmp_path, capsys, monkeypatch):
    """A terminal has the progress bar: the lines go to the log file only (or to stdout if asked)."""
    monkeypatch.setattr(progress, "_stdout_is_terminal", lambda: True)
    assert len(fit_with(corpus, tmp_path)) == 4
    assert "step 4/10" not in capsys.readouterr().out
    fit_with(corpus, tmp_path, stdout=True)
    assert "step 4/10" in capsys.readouterr().out


def test_a_resumed_runs_bar_counts_the_epochs_batches_out_of_as_many(corpus, tmp_path):
    """10 steps, then a resume to 20: the bar ends at 20/20, not at Lightning's 20/9."""

    def fit(max_steps: int, ckpt_path: str | None = None) -> ProgressBar:
        L.seed_everything(0)
        dm = TextDataModule({"path": str(corpus), "batch_size": 4}, block_size=16, seed=0)
        model = LitGPT(dm.tokenizer.chars, {"block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16})
        bar = ProgressBar()
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=max_steps,
            max_epochs=-1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[bar],
            default_root_dir=tmp_path,
        )
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
        if ckpt_path is None:
            trainer.save_checkpoint(tmp_path / "ten.ckpt")
        return bar

    for bar, steps in ((fit(10), 10), (fit(20, str(tmp_path / "ten.ckpt")), 20)):
        task = next(t for t in bar.progress.tasks if t.id == bar.train_progress_bar_id)
        assert (task.completed, task.total) == (steps, steps)


@pytest.mark.parametrize("max_epochs, description", [(-1, "Epoch 4"), (None, "Epoch 4"), (10, "Epoch 4/9")])
def test_progress_bar_epoch_counter(max_epochs, description):
    bar = ProgressBar()
    trainer = L.Trainer(max_epochs=max_epochs, max_steps=50, callbacks=[bar], logger=False, accelerator="cpu")
    bar._trainer = trainer
    assert bar._get_train_description(4).strip() == description  # not "Epoch 4/-2"
    assert bar.get_metrics(trainer, None)["step"] == "0/50"
