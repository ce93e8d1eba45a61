"""A run's outcome in ``<run dir>/status.json``, and sweeps that outlive a failed job.

Hydra 1.3 records an exception raised by a sweep job and re-raises it when the sweeper reads
the job's return value: the Optuna sweeper then stops the whole search, the basic sweeper
stops after the current batch. So under ``-m`` a job that raises, or whose loss is NaN or
infinite, is logged, marked in status.json, and scored `WORST` (+inf, which Optuna accepts
and ranks last) instead. A single run still raises, so its error is seen as usual.

status.json is written by training and read by `lit_gpt_char.report`; this module imports
neither lightning nor torch at import time, so the report starts fast.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from lit_gpt_char.errors import TrainingDiverged, find_user_error, in_multirun
from lit_gpt_char.files import atomic_write_text

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
WORST = math.inf  # the score of a failed or diverged sweep job (the sweep minimises)

RUNNING, COMPLETED, FAILED, DIVERGED, INTERRUPTED, DIED = (
    "running",
    "completed",
    "failed",
    "diverged",
    "interrupted",
    "died",
)


def write_status(run_dir: str | Path, status: str, **info: Any) -> None:
    """Replace run_dir/status.json atomically, so a reader never sees half a file."""
    atomic_write_text(Path(run_dir) / STATUS_FILE, json.dumps({"status": status, **info}, indent=2, default=str) + "\n")


def update_status(run_dir: str | Path, **info: Any) -> None:
    """Add info to run_dir/status.json (e.g. the parameter count once the model is built)."""
    current = _read(run_dir) or {"status": RUNNING}
    write_status(run_dir, **{**current, **info})


def _read(run_dir: str | Path) -> dict[str, Any] | None:
    try:
        info = json.loads((Path(run_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's status.json (None if absent or unreadable); a "running" job whose process is
    gone from this host is reported as "died" (killed, out of memory, node lost)."""
    info = _read(run_dir)
    if info is None:
        return None
    if info.get("status") == RUNNING and info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
        info["status"] = DIED
    return info


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: assume it still runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_rank_zero() -> bool:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


class RunRecord:
    """status.json of one run, written by rank 0: running, then how it ended.

    Under a Hydra multirun a failed or diverged job is logged, marked and scored `WORST` instead of
    raising, so the sweep goes on; a single run raises as usual. `run_dir` may change before
    start() (a resumed run continues in its own directory)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.started = False
        self._where = {"pid": os.getpid(), "host": socket.gethostname()}

    def start(self) -> None:
        self.started = True
        self._where["started"] = time.time()
        if _is_rank_zero():
            write_status(self.run_dir, RUNNING, **self._where)

    def _mark(self, status: str, **info: Any) -> None:
        if not _is_rank_zero():
            return
        # Keep what the task added (update_status), e.g. the parameter count.
        kept = {k: v for k, v in (_read(self.run_dir) or {}).items() if k not in ("status", "error", "traceback")}
        try:
            write_status(self.run_dir, status, **{**kept, **self._where, "ended": time.time(), **info})
        except OSError as e:  # e.g. the full disk that ended the run: say so, never hide the run's own error
            log.warning("could not write %s: %s", self.run_dir / STATUS_FILE, e)

    def finish(self, value: float | None) -> float | None:
        """The run returned its best val loss (None: no validation ran)."""
        if value is not None and not math.isfinite(value):
            self._mark(DIVERGED, best_val_loss=value, error=f"best val loss is {value}")
            if in_multirun():
                log.error("Job in %s diverged (best val loss %s); scoring it %s", self.run_dir, value, WORST)
                return WORST
            return value
        self._mark(COMPLETED, best_val_loss=value)
        return value

    def failed(self, e: Exception) -> float:
        """Mark the failure; re-raise it in a single run, score it WORST in a multirun. A single run
        that failed before it started leaves no record (its directory is discarded)."""
        multirun = in_multirun()
        if self.started or multirun:
            status = DIVERGED if isinstance(find_user_error(e), TrainingDiverged) else FAILED
            self._mark(status, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        if not multirun:
            raise e
        log.exception("Job in %s failed; scoring it %s so the sweep goes on", self.run_dir, WORST)
        return WORST

    def interrupted(self, e: BaseException) -> None:
        """Ctrl+C or SIGTERM (Lightning turns them into SystemExit)."""
        if self.started:
            self._mark(INTERRUPTED, error=type(e).__name__)


def record_status(fn: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    """Wrap a task: status.json in cfg.paths.output_dir before and after it runs (see RunRecord)."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> float | None:
        record = RunRecord(cfg.paths.output_dir)
        record.start()
        try:
            return record.finish(fn(cfg))
        except Exception as e:
            return record.failed(e)
        except BaseException as e:
            record.interrupted(e)
            raise

    return wrapper
