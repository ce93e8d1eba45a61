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
    path = Path(run_dir) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{STATUS_FILE}.{os.getpid()}")
    tmp.write_text(json.dumps({"status": status, **info}, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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


def record_status(fn: Callable[[DictConfig], float | None]) -> Callable[[DictConfig], float | None]:
    """Wrap a training task: status.json in cfg.paths.output_dir before and after it runs; under
    a Hydra multirun, an exception or a non-finite result returns `WORST` instead of raising."""

    @functools.wraps(fn)
    def wrapper(cfg: DictConfig) -> float | None:
        run_dir = Path(cfg.paths.output_dir)
        multirun = in_multirun()
        rank_zero = _is_rank_zero()
        started = time.time()
        where = {"started": started, "pid": os.getpid(), "host": socket.gethostname()}

        def mark(status: str, **info: Any) -> None:
            if rank_zero:  # keep what the task added (update_status), e.g. the parameter count
                kept = {k: v for k, v in (_read(run_dir) or {}).items() if k not in ("status", "error", "traceback")}
                write_status(run_dir, status, **{**kept, **where, "ended": time.time(), **info})

        if rank_zero:
            write_status(run_dir, RUNNING, **where)
        try:
            value = fn(cfg)
        except Exception as e:
            status = DIVERGED if isinstance(find_user_error(e), TrainingDiverged) else FAILED
            mark(status, error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            if not multirun:
                raise
            log.exception("Job in %s failed; scoring it %s so the sweep goes on", run_dir, WORST)
            return WORST
        except BaseException as e:  # Ctrl+C (Lightning turns it into SystemExit)
            mark(INTERRUPTED, error=type(e).__name__)
            raise
        if value is not None and not math.isfinite(value):
            mark(DIVERGED, best_val_loss=value, error=f"best val loss is {value}")
            if multirun:
                log.error("Job in %s diverged (best val loss %s); scoring it %s", run_dir, value, WORST)
                return WORST
            return value
        mark(COMPLETED, best_val_loss=value)
        return value

    return wrapper
