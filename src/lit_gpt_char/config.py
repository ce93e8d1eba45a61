"""Hydra glue shared by the entry points: schemas in the ConfigStore, Hydra's and OmegaConf's errors
as one `error:` line, `--help` from the schemas, and the run directory's resolvers.

The schemas themselves live beside what they configure (core.model.GPTConfig, training.optim,
training.data, ...); conf/*.yaml names them in its defaults lists (`/schema/<name>@_here_`), so a
YAML file only selects and overrides. Importing this module registers the resolvers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import sys
import textwrap
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit_gpt_char.console import quiet_broken_pipes
from lit_gpt_char.errors import user_errors, wants_traceback
from lit_gpt_char.options import describe, error_line, show_value

CONFIG_MODULE = "lit_gpt_char.conf"


def register(name: str, node: type) -> None:
    """Make the schema `node` available to conf/ as `/schema/<name>`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="schema", name=name, node=node)


def config_error_message(e: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while reading the command line or the config,
    made from the exception's fields and the value as the user typed it, never from its text."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(e, OverrideParseException):  # the override grammar refused it
        return grammar_error_message(e.override)
    if isinstance(e, MissingConfigException) and e.options is not None:  # group=option with no such file
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        return f"{group}={name}: no such option: the choices are {', '.join(e.options)}"
    return error_line(e if isinstance(e, OmegaConfBaseException) or e.__cause__ is None else e.__cause__)


def grammar_error_message(override: str) -> str:
    """One line for an argument Hydra's override grammar cannot read (characters outside its plain
    values, such as non-ASCII letters, spaces or brackets): how to quote it."""
    key, sep, value = override.partition("=")
    if not sep:
        return f"{override}: not an override: write key=value (a new key: +key=value)"
    inner = value.replace("\\", "\\\\").replace("'", "\\'")
    return (
        f"{override}: Hydra cannot read this value unquoted: quote it for Hydra inside quotes for the shell, "
        f"e.g. \"{key}='{inner}'\""
    )


def run(
    config_name: str, task: Callable[[DictConfig], Any], help: Callable[[], str] | None = None
) -> Callable[[], Any]:
    """The console entry of a Hydra command: parse the command line, compose conf/<config_name>.yaml,
    run task(cfg). Mistakes anywhere (an unknown key, a value of the wrong type, a missing group
    option, or a UserError from the task) end as one `error:` line and exit status 2; bugs raise.
    HYDRA_FULL_ERROR=1 shows the traceback of any error. `--help` (or -h) prints help() (see help_text)
    before Hydra starts; `--hydra-help` is Hydra's own."""
    import hydra

    wrapped = hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name)(
        user_errors(task)
    )

    def main() -> Any:
        # Hydra prints its own errors and exits 1 unless HYDRA_FULL_ERROR is set; set, it raises them
        # here. Whether the user asked for tracebacks is kept in LIT_GPT_CHAR_TRACEBACK, which
        # processes started by this one (DDP ranks) inherit.
        quiet_broken_pipes()
        if help is not None and {"--help", "-h"} & set(sys.argv[1:]):
            print(help())
            return None
        wants_traceback()
        before = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            return wrapped()
        except (OmegaConfBaseException, *_hydra_errors()) as e:
            if wants_traceback():
                raise
            print(f"error: {config_error_message(e)}", file=sys.stderr, flush=True)
            sys.exit(2)
        finally:
            if before is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = before

    return main


def _hydra_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    return ConfigCompositionException, MissingConfigException, OverrideParseException


# --- --help: each entry point's own options, from its schemas ---------------------------------------------------
HELP_COLUMN = 34


def _default(f: dataclasses.Field) -> str:
    """A field's default as it is typed on the command line ("???": required)."""
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is dataclasses.MISSING:
        return "???"
    if isinstance(value, str) and (not value.isprintable() or value != value.strip() or value == ""):
        return json.dumps(value)  # "\n" shows as "\n", not as a line break
    if isinstance(value, list) and not all(isinstance(v, (int, float, str)) for v in value):
        return "[...]"
    return show_value(value)


def options_lines(cls: type, prefix: str = "", skip: Sequence[str] = ()) -> list[str]:
    """One entry per option of the schema cls, the required ones first: `  key=default   help [allowed]`."""
    hints = typing.get_type_hints(cls)
    width = max(min(shutil.get_terminal_size((100, 24)).columns, 120) - HELP_COLUMN, 30)
    lines = []
    fields = [f for f in dataclasses.fields(cls) if not f.name.startswith("_") and f.name not in skip]
    for f in sorted(fields, key=lambda f: _default(f) != "???"):
        head = f"  {prefix + '.' if prefix else ''}{f.name}={_default(f)}"
        what = ("required: " if _default(f) == "???" else "") + f.metadata.get("help", "")
        allowed = describe(hints[f.name], f.metadata)
        if allowed.removeprefix("null or ") not in ("a value", "a string"):
            what = f"{what} [{allowed}]".strip()
        body = textwrap.wrap(what, width=width) or [""]
        first = [head, *body] if len(head) >= HELP_COLUMN - 1 else [head.ljust(HELP_COLUMN) + body.pop(0), *body]
        lines += [first[0], *(" " * HELP_COLUMN + b for b in first[1:])]
    return lines


def help_text(
    title: str,
    usage: str,
    sections: Sequence[tuple[str, type]],
    skip: Sequence[str] = (),
    groups: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    """An entry point's --help: what it does, how to call it, then each section's options (key=default,
    help, what is allowed), the config groups it composes from, and notes."""
    from importlib.resources import files

    out = [title, "", f"Usage: {usage}", ""]
    for prefix, cls in sections:
        docs = (" ".join((k.__dict__.get("__doc__") or "").split()) for k in cls.__mro__)
        doc = next((d for d, k in zip(docs, cls.__mro__) if d and not d.startswith(f"{k.__name__}(")), "")
        doc = re.split(r"(?<=[.;])\s", re.sub(r"^[\w.]+\.\*:\s*", "", doc), maxsplit=1)[0].rstrip(".;")
        out += [f"{prefix}.*: {doc}".strip() if prefix else "Options (key=value):", *options_lines(cls, prefix, skip)]
        out.append("")
    if groups:
        out.append("Config groups (group=option), each a file in conf/<group>/:")
        for g in groups:
            names = sorted(p.name[:-5] for p in files(CONFIG_MODULE).joinpath(g).iterdir() if p.name.endswith(".yaml"))
            out.append(f"  {g}: {', '.join(names)}")
        out.append("")
    hint = "`--cfg job` prints the composed config; `-m key=a,b` runs one job per value; `--hydra-help` shows"
    return "\n".join([*out, *notes, hint + " Hydra's own flags."])


# --- resolvers the configs use, and printing a config --------------------------------------------------------
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

PRINT_ORDER = ("model", "optim", "data", "trainer", "callbacks", "logger", "paths", "experiment", "seed", "ckpt_path")


def print_config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER, resolve: bool = True) -> None:
    """Print the resolved config as a rich tree, main groups first, so a run's log shows what ran."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        node = cfg[key]
        branch = tree.add(str(key), style="bold")
        body = OmegaConf.to_yaml(node, resolve=resolve) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(body, "yaml", theme="ansi_dark", background_color="default"))
    rich.print(tree)
