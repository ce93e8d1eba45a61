"""User errors: mistakes a user can fix, shown as one `error: <message>` line on stderr with exit status
2 and no traceback (`user_errors`); bugs still raise. Inside a Hydra multirun a UserError is re-raised
instead, so the job is marked failed and the sweep goes on; a `LaunchError` ends even a multirun."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
TRACEBACK_ENV = "LIT_GPT_CHAR_TRACEBACK"


class UserError(ValueError):
    """Bad input (a path, a value, a file); the message names it and says how to fix it."""


class LaunchError(UserError):
    """The run was launched in a way that cannot work (e.g. a multirun with plain DDP): every job of a
    sweep would hit it, so it ends a multirun at once instead of failing job after job."""


class TrainingDiverged(UserError):
    """The training or validation loss became NaN or infinite."""


def wants_traceback() -> bool:
    """Whether the user asked for tracebacks: HYDRA_FULL_ERROR=1 when the command started. Kept in
    LIT_GPT_CHAR_TRACEBACK, since the entry point sets HYDRA_FULL_ERROR itself (to catch Hydra's errors)
    and the processes it starts (DDP ranks) inherit the answer."""
    if TRACEBACK_ENV not in os.environ:
        os.environ[TRACEBACK_ENV] = "1" if os.environ.get("HYDRA_FULL_ERROR") == "1" else "0"
    return os.environ[TRACEBACK_ENV] == "1"


def find_user_error(e: BaseException | None) -> UserError | None:
    """e itself or the UserError it wraps (hydra.utils.instantiate wraps what a constructor raises)."""
    while e is not None and not isinstance(e, UserError):
        e = e.__cause__
    return e


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (-m)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """fn, with a UserError it raises turned into `error: ...` on stderr and exit status 2."""

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
