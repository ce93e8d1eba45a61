"""User errors: mistakes a user can fix, shown as one message without a traceback.

Bugs still raise normally. Entry points wrap their work in `user_errors`, which prints
``error: <message>`` to stderr and exits with status 2. Inside a Hydra multirun the error
is re-raised instead, so `job_status.record_status` marks the job failed and the sweep goes on;
a `LaunchError` ends even a multirun.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """Bad input (a path, a value, a file); the message names it and says how to fix it."""


class LaunchError(UserError):
    """The run was launched in a way that cannot work (e.g. a multirun with plain DDP). Every job of
    a sweep would hit it, so it ends a multirun at once instead of failing job after job."""


class TrainingDiverged(UserError):
    """The training or validation loss became NaN or infinite."""


TRACEBACK_ENV = "LIT_GPT_CHAR_TRACEBACK"


def wants_traceback() -> bool:
    """Whether the user asked for tracebacks: HYDRA_FULL_ERROR=1 when the command started.

    Remembered in LIT_GPT_CHAR_TRACEBACK, because the entry point sets HYDRA_FULL_ERROR itself (to
    catch Hydra's errors), and processes it starts (DDP ranks) inherit the answer."""
    if TRACEBACK_ENV not in os.environ:
        os.environ[TRACEBACK_ENV] = "1" if os.environ.get("HYDRA_FULL_ERROR") == "1" else "0"
    return os.environ[TRACEBACK_ENV] == "1"


def find_user_error(e: BaseException) -> UserError | None:
    """e itself or the UserError it wraps (hydra.utils.instantiate wraps what a constructor raises)."""
    while e is not None and not isinstance(e, UserError):
        e = e.__cause__
    return e


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (-m)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn a UserError raised by fn into `error: ...` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            user_error = find_user_error(e)
            sweep_goes_on = in_multirun() and not isinstance(user_error, LaunchError)
            if user_error is None or sweep_goes_on or wants_traceback():
                raise
            print(f"error: {user_error}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


class PipeSafe:
    """A stand-in for sys.stdout or sys.stderr that turns a closed pipe (`... | head`) into silence.

    Unix tools stop quietly when the reader of their output goes away; Python raises BrokenPipeError
    at the next write (and again when it flushes at exit). After the first one, writes are dropped
    and the file descriptor points at /dev/null; `closed_pipe` tells a writer it may stop early.
    """

    def __init__(self, stream: Any):
        self._stream = stream
        self.closed_pipe = False

    def write(self, text: str) -> int:
        if not self.closed_pipe:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._closed()
        return len(text)

    def flush(self) -> None:
        if not self.closed_pipe:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._closed()

    def _closed(self) -> None:
        self.closed_pipe = True
        try:  # the interpreter flushes the real stream at exit: let that go to /dev/null
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def quiet_broken_pipes() -> None:
    """Wrap sys.stdout and sys.stderr in PipeSafe (once): an entry point's output may be piped."""
    if not isinstance(sys.stdout, PipeSafe):
        sys.stdout = PipeSafe(sys.stdout)
    if not isinstance(sys.stderr, PipeSafe):
        sys.stderr = PipeSafe(sys.stderr)


def check_output_file(path: str | os.PathLike, key: str) -> None:
    """Refuse, before any work, an output file that could not be written: a directory, a missing
    parent directory, or a directory without write permission."""
    from pathlib import Path

    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{key}={path}: is a directory: name a file in it, e.g. {key}={p / 'samples.txt'}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{key}={path}: the directory {parent} does not exist: create it first")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UserError(f"{key}={path}: cannot be written here (permission denied): choose another place")


def check_output_dir(path: str | os.PathLike, key: str) -> None:
    """Refuse, before any work, an output directory that cannot be written (nor created)."""
    from pathlib import Path

    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{key}={path}: is a file, not a directory")
    existing = next(q for q in (p, *p.parents) if q.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}={path}: cannot be written ({existing} is read-only): pass --out DIR to write elsewhere")


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the path-style commands (plot, report, export): a bad argument is one `error:`
    line and exit status 2, like every other mistake."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(2)
