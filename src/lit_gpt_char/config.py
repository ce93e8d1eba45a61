"""Hydra glue shared by the entry points: schemas in the ConfigStore, configs turned into checked
options, Hydra's own errors turned into one `error:` line, and the `${fast_precision:}` resolver.

The schemas themselves live beside what they configure (core.model.GPTConfig, training.optim,
training.data, ...); conf/*.yaml names them in its defaults lists (`/schema/<name>@_here_`), so a
YAML file only selects and overrides. Importing this module registers the resolver.
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
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lit_gpt_char.errors import UserError, quiet_broken_pipes, user_errors, wants_traceback
from lit_gpt_char.options import describe, field_info, show_value

T = TypeVar("T")
CONFIG_MODULE = "lit_gpt_char.conf"


def register(name: str, node: type) -> None:
    """Make the schema `node` available to conf/ as `/schema/<name>`."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="schema", name=name, node=node)


def options(cfg: Any, cls: type[T]) -> T:
    """The checked options object of one config node (interpolations resolved); bad values raise
    UserError naming the key."""
    if isinstance(cfg, cls):
        return cfg
    try:
        values = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if OmegaConf.is_config(cfg) else cfg
    except OmegaConfBaseException as e:
        raise UserError(config_error_message(e)) from None
    values = {k: v for k, v in (values or {}).items() if k != "_target_"}
    from lit_gpt_char.options import build

    return build(cls, values)


# --- Hydra's errors as one line --------------------------------------------------------------------------------
def config_error_message(e: BaseException) -> str:
    """One line for an error Hydra or OmegaConf raised while reading the command line or the config,
    made from the exception's fields (the key, its schema, the group's options) and the value as the
    user typed it, never by reading the exception's text."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    if isinstance(e, OverrideParseException):  # the override grammar refused it
        return grammar_error_message(e.override)
    if isinstance(e, MissingConfigException) and e.options is not None:  # group=option with no such file
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        return f"{group}={name}: no such option: the choices are {', '.join(e.options)}"
    cause = e if isinstance(e, OmegaConfBaseException) else e.__cause__
    first = next((ln.strip() for ln in str(cause or e).splitlines() if ln.strip()), type(cause or e).__name__)
    if not isinstance(cause, OmegaConfBaseException):
        return first
    key = getattr(cause, "full_key", None) or str(getattr(cause, "key", None) or "")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return f"{key}: no such option; `--cfg job` prints every option (a new key needs +{key}=...)"
    info = field_info(getattr(cause, "object_type", None), key.rsplit(".", 1)[-1])
    if isinstance(cause, MissingMandatoryValue):
        what = f" ({info[1].metadata['help']})" if info is not None and info[1].metadata.get("help") else ""
        return f"{key} is required: pass {key}=...{what}"
    if isinstance(cause, ValidationError) and info is not None:
        value = getattr(cause, "value", None)
        typed = [v for v in typed_values(key) if "," not in v or v.lstrip().startswith(("[", "{", "'", '"'))]
        # As typed (1e-3, not 0.001): the one OmegaConf refused, else the last; a sweep's a,b,c: the job's own.
        shown = next((t for t in typed if t in (str(value), show_value(value))), typed[-1] if typed else None)
        shown = show_value(value) if shown is None else shown
        return f"{key}={shown}: must be {describe(info[0], info[1].metadata)}"
    return f"{key}: {first}" if key else first


def typed_values(key: str) -> list[str]:
    """The values of `key` as given on this command line (key=v, +key=v or ++key=v)."""
    return [v for k, sep, v in (a.partition("=") for a in sys.argv[1:]) if sep and k.lstrip("+~") == key]


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
def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "???"
    if value == "???":
        return "???"
    if isinstance(value, str) and (not value.isprintable() or value != value.strip() or value == ""):
        return json.dumps(value)  # "\n" shows as "\n", not as a line break
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value)) if all(isinstance(v, (int, float, str)) for v in value) else "[...]"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def options_lines(cls: type, prefix: str = "", skip: Sequence[str] = (), width: int | None = None) -> list[str]:
    """One entry per option of the schema cls: `  key=default   help [what is allowed]`, wrapped to width."""
    hints = typing.get_type_hints(cls)
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 120)
    lines = []
    fields = [f for f in dataclasses.fields(cls) if not f.name.startswith("_") and f.name not in skip]
    for f in sorted(fields, key=lambda f: _default(f) != "???"):  # the required ones first
        key = f"{prefix}.{f.name}" if prefix else f.name
        head = f"  {key}={_default(f)}"
        what = f.metadata.get("help", "")
        if _default(f) == "???":
            what = f"required: {what}"
        allowed = describe(hints[f.name], f.metadata)
        if allowed not in ("a value", "null or a value", "a string", "null or a string"):
            what = f"{what} [{allowed}]" if what else f"[{allowed}]"
        body = textwrap.wrap(what, width=max(width - HELP_COLUMN, 30)) or [""]
        if len(head) >= HELP_COLUMN - 1:
            lines.append(head)
            lines.extend(" " * HELP_COLUMN + b for b in body)
        else:
            lines.append(head.ljust(HELP_COLUMN) + body[0])
            lines.extend(" " * HELP_COLUMN + b for b in body[1:])
    return lines


HELP_COLUMN = 34


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
    out = [title, "", f"Usage: {usage}", ""]
    for prefix, cls in sections:
        doc = _summary(cls) if prefix else ""
        out.append(f"{prefix}.*: {doc}" if doc else f"{prefix}.*:" if prefix else "Options (key=value):")
        out.extend(options_lines(cls, prefix, skip))
        out.append("")
    if groups:
        out.append("Config groups (group=option), each a file in conf/<group>/:")
        out.extend(f"  {g}: {', '.join(config_group_options(g))}" for g in groups)
        out.append("")
    out.extend(
        [
            *notes,
            "`--cfg job` prints the composed config; `-m key=a,b` runs one job per value; "
            "`--hydra-help` shows Hydra's own flags.",
        ]
    )
    return "\n".join(out)


def _summary(cls: type) -> str:
    """The first sentence of a schema's docstring, less its `key.*:` prefix (node() classes: their base's)."""
    for klass in cls.__mro__:
        doc = " ".join((klass.__dict__.get("__doc__") or "").split())
        if doc and not doc.startswith(f"{klass.__name__}("):  # not dataclass's generated signature
            doc = re.sub(r"^[\w.]+\.\*:\s*", "", doc)
            return re.split(r"(?<=[.;])\s", doc, maxsplit=1)[0].rstrip(".;")
    return ""


def config_group_options(group: str) -> list[str]:
    """The options of a config group: conf/<group>/*.yaml."""
    from importlib.resources import files

    folder = files(CONFIG_MODULE).joinpath(group)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


# --- the ${fast_precision:} resolver, and printing a config -------------------------------------------------------
def fast_precision(accelerator: str = "auto") -> str:
    """The Trainer precision that is fast on this machine's `accelerator`.

    bf16 autocast pays where bf16 matmuls run in hardware: Ampere+ GPUs, and CPUs with
    AVX512-BF16 or AMX (~3.5x float32 on the 2-core EPYC this project was tuned on). Elsewhere
    it is emulated: ~10x slower than float32 on an AVX2 CPU (most laptops), so float32 it is;
    older GPUs get fp16 with loss scaling. MPS and other accelerators: float32.
    """
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    if accelerator == "cpu" or (accelerator == "auto" and not torch.backends.mps.is_available()):
        cpu = torch.cpu
        native = [getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return "bf16-mixed" if any(native) else "32-true"
    return "32-true"


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


OmegaConf.register_new_resolver("fast_precision", fast_precision, replace=True)
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
