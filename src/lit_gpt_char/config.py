"""Hydra glue shared by the entry points: schemas into the ConfigStore, and the console entry that
turns Hydra's and OmegaConf's errors into one `error:` line.

The schemas live beside what they configure (core.model.GPTConfig, training.optim, ...); conf/*.yaml
builds on them (`/schema/<name>@_here_` in its defaults lists), so a YAML file only selects and
overrides. `--help` is helptext.py's.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from lit_gpt_char.console import quiet_broken_pipes
from lit_gpt_char.errors import user_errors, wants_traceback
from lit_gpt_char.options import error_line

CONFIG_MODULE = "lit_gpt_char.conf"


def register(name: str, node: type) -> None:
    """Make the schema `node` available to conf/ as `/schema/<name>`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="schema", name=name, node=node)


def config_error_message(e: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while reading the command line or the config,
    made from the exception's fields and the value as the user typed it, never from its text."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(e, OverrideParseException):  # outside the grammar's plain values: non-ASCII, spaces, ...
        key, sep, value = e.override.partition("=")
        if not sep:
            return f"{e.override}: not an override: write key=value (a new key: +key=value)"
        inner = value.replace("\\", "\\\\").replace("'", "\\'")
        how = f"quote it for Hydra inside quotes for the shell, e.g. \"{key}='{inner}'\""
        return f"{e.override}: Hydra cannot read this value unquoted: {how}"
    if isinstance(e, MissingConfigException) and e.options is not None:  # group=option with no such file
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        return f"{group}={name}: no such option: the choices are {', '.join(e.options)}"
    return error_line(e if isinstance(e, OmegaConfBaseException) or e.__cause__ is None else e.__cause__)


def run(
    config_name: str, task: Callable[[DictConfig], Any], help: Callable[[], str] | None = None
) -> Callable[[], Any]:
    """The console entry of a Hydra command: compose conf/<config_name>.yaml from the command line and
    run task(cfg). A mistake (an unknown key, a wrong type, a missing group option, a UserError from the
    task) ends as one `error:` line and exit status 2; bugs raise; HYDRA_FULL_ERROR=1 shows any error's
    traceback. `--help` (or -h) prints help(); `--hydra-help` is Hydra's own. A directory Hydra cannot
    create for the run (paths.log_dir a file, or on a read-only or virtual file system) is one line too."""
    import hydra
    from hydra.errors import ConfigCompositionException, OverrideParseException

    checked = user_errors(task)
    started = False  # in this call of main, whether Hydra got as far as the task: an OSError before it is its mkdir

    @functools.wraps(task)
    def started_task(cfg: DictConfig) -> Any:
        nonlocal started
        started = True
        return checked(cfg)

    wrapped = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name)(
        started_task
    )

    def main() -> Any:
        nonlocal started
        started = False
        quiet_broken_pipes()
        if help is not None and {"--help", "-h"} & set(sys.argv[1:]):
            print(help())
            return None
        # Set, HYDRA_FULL_ERROR makes Hydra raise its errors here instead of printing them and exiting 1;
        # whether the user set it is read first (and kept for the processes this one starts: DDP ranks).
        wants_traceback()
        before = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return wrapped()
        except (OmegaConfBaseException, ConfigCompositionException, OverrideParseException) as e:
            if wants_traceback():
                raise
            print(f"error: {config_error_message(e)}", file=sys.stderr, flush=True)
            sys.exit(2)
        except OSError as e:
            if started or e.filename is None or wants_traceback():
                raise
            where = "pass paths.log_dir=DIR in a writable place (or hydra.run.dir=, hydra.sweep.dir=)"
            print(f"error: cannot create the run's directory {e.filename} ({e.strerror}): {where}", file=sys.stderr)
            sys.exit(2)
        finally:
            if before is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = before

    return main
