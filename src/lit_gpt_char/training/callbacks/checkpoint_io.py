"""Writes that lose nothing: checkpoints written atomically, and a refused write (a full disk, a
quota, a permission) as one line naming the last good checkpoint.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_gpt_char.core.checkpoint import atomic_save
from lit_gpt_char.errors import UserError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning writes checkpoints in place: a process killed mid-write would leave a truncated file
    where the previous good one was. This writes through core.checkpoint.atomic_save (temporary
    file, fsync, rename), so last.ckpt is always the old or the new checkpoint, never half of one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        try:
            atomic_save(checkpoint, path)
        except OSError as e:  # a full disk, a quota, a read-only mount: the user's to fix, and nothing is lost
            raise write_failed(e, Path(path)) from None


# Errors of a write that the user can fix (and that lose nothing: every write of a run is atomic or appends).
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def write_failed(e: OSError, path: Path, checkpoints: Path | None = None) -> UserError:
    """The one line for a run's write that failed: what, why, and the last good checkpoint to resume from
    (in `checkpoints`, by default path's directory)."""
    folder = checkpoints or path.parent
    saved = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if path.suffix == ".ckpt" and path.is_file():
        good = f"the previous {path} is intact"
    else:
        good = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was saved before"
    what = f"the checkpoint {path}" if path.suffix == ".ckpt" else (f"{path}" if path.is_file() else f"into {path}")
    return UserError(
        f"could not write {what}: {e.strerror or e}: {good}. Free disk space (or fix the directory's "
        "permissions), then resume with ckpt_path=..."
    )


def quiet_write_errors_in_threads() -> None:
    """A logger's writer thread (TensorBoard's) that meets a full disk would print its traceback and die;
    the main thread fails on its next write to that logger and says it in one line, so the thread's
    traceback is dropped. Any other error of a thread still prints."""
    if getattr(threading.excepthook, "quiet_write_errors", False):
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in WRITE_ERRORS):
            previous(args)

    hook.quiet_write_errors = True
    threading.excepthook = hook


def last_checkpoint_path(trainer: L.Trainer) -> str | None:
    ckpt = trainer.checkpoint_callback
    if isinstance(ckpt, ModelCheckpoint) and ckpt.dirpath:
        return f"{ckpt.dirpath}/{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    return None
