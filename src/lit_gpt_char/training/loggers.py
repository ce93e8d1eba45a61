"""Loggers beyond TensorBoard, and what every active logger receives.

`logger=` tensorboard (the default) | csv | wandb | mlflow | many (tensorboard + csv) | all, or a
list: `logger=[wandb,mlflow]`. wandb and mlflow keep TensorBoard on: the run's plots, the sweep
report and resume read its event files.

- Weights & Biases logs online when you are logged in (`wandb login`, or WANDB_API_KEY), else offline
  into <run dir>/wandb (upload later with `wandb sync`); WANDB_MODE, when set, decides.
- MLflow logs into a local SQLite store, <paths.log_dir>/mlflow.db, artifacts beside it in
  <paths.log_dir>/mlartifacts: `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db`.

A run resumed from its checkpoint goes on in the same wandb and MLflow run. Every active logger gets
the samples written during training (`log_text`), the PNG curves (`log_images`), and at the end the
run's hyperparameters with its best val loss as their metric (`LogHyperparams`), for TensorBoard's
HParams tab, MLflow's run comparison and wandb's run table.
"""

from __future__ import annotations

import hashlib
import netrc
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import lightning as L
from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_gpt_char.errors import UserError, in_multirun
from lit_gpt_char.training.distributed import best_model_score

EXTRA = 'pip install -e ".[loggers]"'
BEST_METRIC = "hp/best_val_loss"  # the metric the hyperparameters are compared by
MLFLOW_RUN_ID_FILE = "mlflow_run_id"  # in the run directory: a resumed run continues its MLflow run
MLFLOW_PARAM_CHARS = 250  # what Lightning's MLFlowLogger keeps of a param's value


def _require(module: str, logger: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise UserError(f"logger={logger} needs the {module} package: {EXTRA} (or pip install {module})")


def _run_name(run_dir: str | Path, log_dir: str | Path) -> str:
    """The run directory relative to the log directory (train/runs/<time>, train/multirun/<time>/<n>)."""
    run, root = Path(run_dir).resolve(), Path(log_dir).resolve()
    return str(run.relative_to(root)) if run.is_relative_to(root) else run.name


# --- Weights & Biases ------------------------------------------------------------------------------------------
def wandb_logged_in() -> bool:
    """Whether wandb has credentials here: WANDB_API_KEY, or a netrc entry for its host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """WANDB_MODE if set; else online with credentials, offline without (so a run never needs a login)."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


class WandbRunLogger(WandbLogger):
    """Lightning's WandbLogger for one run directory: files in <run dir>/wandb, online or offline as
    `wandb_mode` decides, a run id made from the run directory (a resumed run continues the same wandb
    run), the sweep as the wandb group, and the wandb run finished with the fit (so the next job of a
    sweep in this process starts its own)."""

    def __init__(
        self, save_dir: str, log_dir: str = "outputs", project: str = "lit-gpt-char", mode: str | None = None, **kwargs
    ):
        _require("wandb", "wandb")
        run_dir = Path(save_dir)
        where = f"{socket.gethostname()}:{run_dir.resolve()}"
        kwargs.setdefault("id", hashlib.sha1(where.encode()).hexdigest()[:16])
        kwargs.setdefault("name", _run_name(run_dir, log_dir))
        if in_multirun():
            kwargs.setdefault("group", _run_name(run_dir.parent, log_dir))
        super().__init__(save_dir=str(run_dir), project=project, mode=mode or wandb_mode(), **kwargs)

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None and hasattr(self._experiment, "finish"):
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


# --- MLflow ----------------------------------------------------------------------------------------------------
def mlflow_store(log_dir: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the local store under log_dir."""
    root = Path(log_dir).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}", str(root / "mlartifacts")


class MLflowRunLogger(MLFlowLogger):
    """Lightning's MLFlowLogger on the local store under log_dir (see mlflow_store), the run named after
    its run directory, whose MLflow run id it keeps in <run dir>/mlflow_run_id so a resumed run goes on
    in the same MLflow run."""

    def __init__(self, run_dir: str, log_dir: str = "outputs", experiment_name: str = "train", **kwargs):
        _require("mlflow", "mlflow")
        self._id_file = Path(run_dir) / MLFLOW_RUN_ID_FILE
        run_id = self._id_file.read_text().strip() if self._id_file.is_file() else None
        tracking_uri, artifacts = mlflow_store(log_dir)
        kwargs.setdefault("run_name", _run_name(run_dir, log_dir))
        super().__init__(
            experiment_name=experiment_name,
            tracking_uri=tracking_uri,
            artifact_location=artifacts,
            run_id=run_id,
            **kwargs,
        )

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        # Lightning's first call of the fit creates the MLflow store and run: remember the run.
        Path(self._id_file).parent.mkdir(parents=True, exist_ok=True)
        params = _flatten_dict(_convert_params(params))
        if self._id_file.is_file():  # a resumed run, maybe with changed options (a longer max_steps)
            params = resumed_params(params, self.experiment.get_run(self.run_id).data.params)
        super().log_hyperparams(params)
        if self.run_id is not None and not self._id_file.is_file():
            self._id_file.write_text(self.run_id)


def resumed_params(params: Mapping[str, Any], logged: Mapping[str, str]) -> dict[str, Any]:
    """What a resumed run logs to its MLflow run, which refuses to change a logged param: the new keys as
    they are, each changed value under `<key>/resumeN` (N: the first free), the unchanged ones not again."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        text = str(value)[:MLFLOW_PARAM_CHARS]
        if key not in logged:
            out[key] = value
            continue
        n, name = 0, key
        while name in logged and logged[name] != text:
            n += 1
            name = f"{key}/resume{n}"
        if name not in logged:
            out[name] = value
    return out


# --- what every logger receives ------------------------------------------------------------------------------
@rank_zero_only
def log_text(loggers: Iterable[Logger], key: str, text: str, step: int) -> None:
    """A sample of text, as each logger shows text best."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            # Indent by 4 spaces so TensorBoard's markdown shows it verbatim, line breaks kept.
            md = "\n".join("    " + line for line in text.split("\n"))
            logger.experiment.add_text(key, md, global_step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_text(key, columns=["step", "text"], data=[[step, text]], step=step)
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_text(logger.run_id, text, f"{key}/step{step:06d}.txt")


@rank_zero_only
def log_images(loggers: Iterable[Logger], paths: Iterable[Path], step: int) -> None:
    """PNG files (the run's curves) as images: TensorBoard's Images tab, wandb media, MLflow artifacts."""
    paths = [Path(p) for p in paths]
    for logger in loggers:
        for path in paths:
            if isinstance(logger, TensorBoardLogger):
                from matplotlib.image import imread

                logger.experiment.add_image(f"plots/{path.stem}", imread(path), step, dataformats="HWC")
            elif isinstance(logger, WandbLogger):
                logger.log_image(f"plots/{path.stem}", [str(path)], step=step)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), "plots")
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.flush()


def hyperparameters(groups: Mapping[str, Any]) -> dict[str, Any]:
    """The options of each group as one flat mapping: {"model/n_layer": 4, "optim/lr": 0.002, "seed": 1337}.

    Keys joined with "/" as Lightning flattens the module's hyperparameters, so a logger that refuses to
    change a logged value (MLflow) sees the same keys and values twice, not a conflict."""
    out: dict[str, Any] = {}
    for name, value in groups.items():
        if isinstance(value, Mapping):
            out.update({f"{name}/{k}": v for k, v in hyperparameters(value).items()})
        elif isinstance(value, (list, tuple)):
            out[name] = str(list(value))
        else:
            out[name] = value
    return out


class LogHyperparams(L.Callback):
    """At the end of fit, give every logger the run's hyperparameters with its best val loss as their
    metric (`hp/best_val_loss`): what TensorBoard's HParams tab, MLflow's run comparison and wandb's
    run table sort and filter runs by."""

    def __init__(self, params: Mapping[str, Any]):
        self.params = hyperparameters(params)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or not trainer.loggers:
            return
        best = best_model_score(trainer)
        metrics = {BEST_METRIC: best} if best is not None else {}
        self.send(trainer.loggers, metrics, trainer.global_step)

    @rank_zero_only
    def send(self, loggers: Iterable[Logger], metrics: dict[str, float], step: int) -> None:
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.params, metrics or None, step=step)  # the HParams tab's session
                logger.experiment.flush()
                continue
            logger.log_hyperparams(self.params)
            if metrics:
                logger.log_metrics(metrics, step=step)
            if isinstance(logger, WandbLogger) and metrics:
                logger.experiment.summary.update(metrics)
