"""One run, one directory, one record.

Hydra makes the run directory (and writes `.hydra/` and `train.log` into it) before any code of
ours runs, named by conf/hydra/default.yaml with the `${run_id:}` and `${hydra_subdir:}` resolvers
below, under paths.log_dir (`PathsConfig`). From there:
- a resumed run continues in the directory of the run it resumes: `adopt` moves this command's
  config record under the old run's `.hydra/`, sends the log there, and removes the new directory;
- a directory that already holds a run is never trained into from scratch (`check_free`);
- a live run locks its directory against a second process (`RunLock`), naming itself;
- a command that fails before training leaves nothing behind (`discard`).
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from omegaconf import OmegaConf

from lit_gpt_char.errors import UserError
from lit_gpt_char.options import Options, option

LOCK_FILE = ".lock"
RUN_MARKERS = ("checkpoints", "tensorboard", "status.json")  # what only a run (not Hydra) writes


@functools.cache
def run_id() -> str:
    """A short random suffix for run directory names, so two runs started in the same second get
    two directories (one value per process, so every access names the same directory)."""
    return os.urandom(2).hex()


def hydra_subdir(output_dir: str) -> str:
    """Where Hydra records this command's config in its run directory: `.hydra`, or `.hydra/<time>`
    when the directory already holds another command's record (a resume, a reused hydra.run.dir),
    so no command overwrites another's. Cached per directory: Hydra reads it more than once."""
    if (Path(output_dir) / ".hydra" / "config.yaml").exists():
        return f".hydra/{time.strftime('%Y-%m-%d_%H-%M-%S')}_{run_id()}"
    return ".hydra"


OmegaConf.register_new_resolver("run_id", run_id, replace=True, use_cache=True)
OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir, replace=True, use_cache=True)


@dataclass
class PathsConfig(Options):
    """paths.*: where corpora live and where runs write."""

    KEY = "paths"
    data_dir: str | None = option(
        None, "where corpora are downloaded and kept; null: $LIT_GPT_CHAR_DATA_DIR, else ./data"
    )
    log_dir: str = option("${oc.env:LIT_GPT_CHAR_LOG_DIR,outputs}", "root of all runs (each gets its own directory)")
    output_dir: str = option(
        "${hydra:runtime.output_dir}",
        "this run's directory: checkpoints/, tensorboard/, plots/, tokenizer.json, .hydra/, train.log",
    )


def holds_a_run(run_dir: Path) -> bool:
    """Whether run_dir holds (or held) a training run, not only Hydra's files for a command."""
    return any((run_dir / m).exists() for m in RUN_MARKERS)


def check_free(run_dir: Path, resuming_here: bool) -> None:
    """Refuse to train from scratch into a directory that holds another run."""
    if holds_a_run(run_dir) and not resuming_here:
        last = run_dir / "checkpoints" / "last.ckpt"
        how = f"resume it with ckpt_path={last}" if last.is_file() else "resume it with ckpt_path=<its checkpoint>"
        raise UserError(
            f"hydra.run.dir={run_dir}: already holds a run: {how}, or choose another directory "
            "(the default makes a new one for every run)"
        )


def discard(run_dir: Path, our_subdir: str | None, root: Path | None = None) -> None:
    """Remove what this command made in run_dir before failing: the whole directory if nothing else
    is in it (Hydra made it for us, and the parents up to `root` it made for it), else only this
    command's config record."""
    if not run_dir.is_dir():
        return
    ours = {".hydra", *(p.name for p in run_dir.glob("*.log"))}
    if not holds_a_run(run_dir) and our_subdir == ".hydra" and {p.name for p in run_dir.iterdir()} <= ours:
        _close_log_files(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        prune_empty_parents(run_dir, root)
    elif our_subdir and our_subdir != ".hydra":
        shutil.rmtree(run_dir / our_subdir, ignore_errors=True)


def prune_empty_parents(path: Path, root: Path | None) -> None:
    """Remove path's parents while they are empty and inside root (root included)."""
    if root is None:
        return
    root = root.resolve()
    for parent in path.resolve().parents:
        if not (parent == root or root in parent.parents):
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break


def adopt(fresh: Path, target: Path, our_subdir: str | None, root: Path | None = None) -> Path:
    """Continue in `target` (the resumed run's directory) instead of Hydra's `fresh` one.

    This command's config record goes to target/.hydra/<fresh dir name>/ (the run's own .hydra
    stays as it was), its log lines so far are appended to target's logs and logging goes on
    there, and `fresh` is removed."""
    if fresh.resolve() == target.resolve():
        return target
    if our_subdir and (fresh / our_subdir).is_dir():
        dest = target / ".hydra" / fresh.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(fresh / our_subdir), str(dest))
    for handler in _file_handlers(fresh):
        new = target / Path(handler.baseFilename).name
        handler.acquire()
        try:
            handler.flush()
            old = Path(handler.baseFilename)
            if old.is_file():
                with open(new, "a", encoding="utf-8") as out:
                    out.write(old.read_text(encoding="utf-8", errors="replace"))
            if handler.stream:
                handler.stream.close()
            handler.baseFilename = str(new.resolve())
            handler.mode = "a"
            handler.stream = handler._open()
        finally:
            handler.release()
    if fresh.is_dir() and not holds_a_run(fresh):
        shutil.rmtree(fresh, ignore_errors=True)
        prune_empty_parents(fresh, root)
    return target


def _file_handlers(run_dir: Path) -> list[logging.FileHandler]:
    loggers = [
        logging.getLogger(),
        *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)),
    ]
    found = []
    for lg in loggers:
        for h in lg.handlers:
            ours = isinstance(h, logging.FileHandler) and Path(h.baseFilename).parent.resolve() == run_dir.resolve()
            if ours and h not in found:
                found.append(h)
    return found


def _close_log_files(run_dir: Path) -> None:
    for h in _file_handlers(run_dir):
        for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            if isinstance(lg, logging.Logger) and h in lg.handlers:
                lg.removeHandler(h)
        h.close()


class RunLock:
    """An exclusive lock on a run directory while a run trains in it (rank 0 only).

    flock on <run dir>/.lock: the kernel drops it when the process dies, however it dies, so a
    crashed run never leaves a stale lock. The file names the holder for the error a second
    process gets. (flock is reliable on local disks; on some network file systems it is not.)
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._file: IO[str] | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            try:
                who = json.loads(holder)
                text = f"process {who['pid']} on {who['host']} (`{who['command']}`, since {who['since']})"
            except (ValueError, KeyError, TypeError):
                text = "another process"
            raise UserError(
                f"{self.path.parent}: a run is already training in this directory: {text}. Wait for it to "
                "finish (or stop it), or train in another directory"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "command": " ".join(sys.argv),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
        )
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
