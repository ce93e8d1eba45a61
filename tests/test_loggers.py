"""logger=wandb | mlflow | all with the real libraries (wandb offline, MLflow's local SQLite store):
every active logger gets the samples, the PNG curves, and the hyperparameters with the best val
loss as their metric. No test reaches a server: WANDB_MODE=offline throughout."""

from __future__ import annotations

import json

import pytest
from helpers import TINY, compose_train, require, run_cli

from lit_gpt_char.training import loggers

wandb = require("wandb")
mlflow = require("mlflow")

OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """wandb's settings, cache and netrc in tmp_path, so no test reads or writes the user's."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    return tmp_path


def test_wandb_is_offline_without_a_login(wandb_home, monkeypatch):
    assert loggers.wandb_mode() == "offline"
    (wandb_home / "netrc").write_text("machine api.wandb.ai login user password 0123456789\n")
    assert loggers.wandb_mode() == "online"  # what `wandb login` leaves behind
    (wandb_home / "netrc").write_text("machine example.org login user password x\n")
    assert loggers.wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "0123456789")
    assert loggers.wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's choice wins
    assert loggers.wandb_mode() == "offline"


def test_a_resumed_run_continues_its_wandb_and_mlflow_runs(wandb_home, tmp_path):
    run_dir, log_dir = tmp_path / "outputs/train/runs/a", tmp_path / "outputs"
    first = loggers.WandbRunLogger(save_dir=str(run_dir), log_dir=str(log_dir))
    again = loggers.WandbRunLogger(save_dir=str(run_dir), log_dir=str(log_dir))
    other = loggers.WandbRunLogger(save_dir=str(tmp_path / "outputs/train/runs/b"), log_dir=str(log_dir))
    assert first._id == again._id != other._id and first._name == "train/runs/a"
    assert first._wandb_init["mode"] == "offline"
    run_dir.mkdir(parents=True)
    (run_dir / loggers.MLFLOW_RUN_ID_FILE).write_text("abc123\n")
    ml = loggers.MLflowRunLogger(run_dir=str(run_dir), log_dir=str(log_dir))
    assert ml._run_id == "abc123" and ml._tracking_uri == f"sqlite:///{log_dir.resolve() / 'mlflow.db'}"


def test_logger_choices_compose(tmp_path):
    assert set(compose_train(["logger=wandb"], tmp_path).logger) == {"tensorboard", "wandb"}
    assert set(compose_train(["logger=mlflow"], tmp_path).logger) == {"tensorboard", "mlflow"}
    assert set(compose_train(["logger=[wandb,mlflow]"], tmp_path).logger) == {"tensorboard", "wandb", "mlflow"}
    assert set(compose_train(["logger=all"], tmp_path).logger) == {"tensorboard", "csv", "wandb", "mlflow"}


@pytest.mark.slow
def test_every_logger_gets_samples_curves_and_hparams(corpus, tmp_path, wandb_home):
    """One tiny run with logger=all, then each logger's own files read back with its own library."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    log_dir, run_dir = tmp_path / "outputs", tmp_path / "outputs/train/runs/one"
    r = run_cli(
        "train",
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=20",
        "trainer.val_check_interval=10",
        "logger=all",
        f"paths.log_dir={log_dir}",
        f"hydra.run.dir={run_dir}",
        env=OFFLINE,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    best = float(r.stdout.split("Best val loss:")[1].split()[0])
    samples_at = [10, 20]

    # TensorBoard: the sample text, the curves as images, and an HParams session whose metric is the best val loss.
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"plots/train_loss", "plots/val_loss", "plots/train_step_loss"} <= set(tags["images"])
    assert [e.step for e in acc.Tensors("samples/text_summary")] == samples_at
    assert acc.Scalars(loggers.BEST_METRIC)[-1].value == pytest.approx(best, abs=1e-4)
    hp = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/session_start_info"]).session_start_info
    assert {"model/n_layer", "optim/lr", "data/batch_size", "seed"} <= set(start.hparams)
    assert start.hparams["model/n_layer"].number_value == 2
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hp["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == [loggers.BEST_METRIC]

    # MLflow: one run named after the run directory, its params, metrics and artifacts.
    client = MlflowClient(f"sqlite:///{log_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.run_name == "train/runs/one" and run.info.status == "FINISHED"
    assert (run_dir / loggers.MLFLOW_RUN_ID_FILE).read_text() == run.info.run_id
    assert run.data.params["model/n_layer"] == "2" and run.data.params["optim/lr"] == "0.003"
    assert run.data.metrics[loggers.BEST_METRIC] == pytest.approx(best, abs=1e-4)
    val = client.get_metric_history(run.info.run_id, "val/loss")
    assert len(val) == 2 and min(m.value for m in val) == pytest.approx(best, abs=1e-4)
    artifacts = {a.path for d in ("samples", "plots") for a in client.list_artifacts(run.info.run_id, d)}
    drawn = {f"plots/{p.name}" for p in (run_dir / "plots").iterdir()}  # every plot the run drew
    assert {"plots/train_loss.png", "plots/val_loss.png", "plots/train_step_loss.png"} <= drawn
    assert artifacts == {"samples/step000010.txt", "samples/step000020.txt"} | drawn
    art = log_dir / "mlartifacts" / run.info.run_id / "artifacts" / "samples"
    texts = {step: (art / f"step{step:06d}.txt").read_text() for step in samples_at}
    assert all(len(t) >= 20 for t in texts.values())  # the prompt and 20 new characters

    # wandb, offline in the run directory: the samples as tables, the curves as images, the hparams and metric.
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    media = offline / "files" / "media"
    tables = [json.loads(t.read_text()) for t in media.glob("table/samples_*.table.json")]
    assert all(t["columns"] == ["step", "text"] for t in tables)
    assert {(step, text) for t in tables for step, text in t["data"]} == set(texts.items())  # the same samples
    assert {p.name.split("_")[0] for p in (media / "images" / "plots").glob("*.png")} >= {"train", "val"}
    assert len(list((media / "images" / "plots").glob("*.png"))) == len(drawn)
    records = next(offline.glob("run-*.wandb")).read_bytes()
    for key in (b"model/n_layer", b"optim/lr", loggers.BEST_METRIC.encode(), b"val/loss"):
        assert key in records, key

    # Resumed to train longer (the usual reason to resume): every logger takes the changed max_steps.
    r = run_cli(
        "train",
        *TINY,
        f"data.path={corpus}",
        "trainer.max_steps=30",
        "trainer.val_check_interval=10",
        "logger=all",
        f"paths.log_dir={log_dir}",
        f"hydra.run.dir={tmp_path / 'unused'}",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        env=OFFLINE,
        timeout=240,
    )
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])  # the same MLflow run
    assert run.data.params["trainer/max_steps"] == "20" and run.data.params["trainer/max_steps/resume1"] == "30"
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 3
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2  # wandb: one more offline segment of its run
