"""`--help` of each Hydra command, from its schemas: what it does, how to call it, every option with its
default, help and what it allows (required ones first), and the config groups it composes from."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import textwrap
import typing
from collections.abc import Sequence

from lit_gpt_char.config import CONFIG_MODULE
from lit_gpt_char.options import describe, show_value

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
