"""A command's terminal I/O: output paths refused before any work, output piped into a reader that
stops early (`| head`), argparse's mistakes, each as one `error:` line like every other, and the
composed config printed as a tree."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lit_gpt_char.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig


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


PRINT_ORDER = ("model", "optim", "data", "trainer", "callbacks", "logger", "paths", "experiment", "seed", "ckpt_path")


def print_config_tree(cfg: DictConfig, order: Sequence[str] = PRINT_ORDER, resolve: bool = True) -> None:
    """Print the resolved config as a rich tree, main groups first, so a run's log shows what ran."""
    import rich
    import rich.syntax
    import rich.tree
    from omegaconf import DictConfig, OmegaConf

    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        node = cfg[key]
        branch = tree.add(str(key), style="bold")
        body = OmegaConf.to_yaml(node, resolve=resolve) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(body, "yaml", theme="ansi_dark", background_color="default"))
    rich.print(tree)
