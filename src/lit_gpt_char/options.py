"""Typed options: each default, type, allowed range and one-line help, written once.

Every config group (and every entry point's own keys) is a dataclass of `option(...)` fields.
Hydra composes YAML over these dataclasses (conf/ selects and overrides, it never restates a
default), OmegaConf checks the types while it merges, and `Options.__post_init__` checks the
ranges, so a bad value ends as one line, ``<key>=<value>: must be <what is allowed>``, whether
it came from the command line, a YAML file or Python. Nothing here imports torch or Hydra.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field
from typing import Any, ClassVar

from lit_gpt_char.errors import UserError

_RANGE_KEYS = ("ge", "gt", "le", "lt")
SEED = 1337  # the default seed of training, its data, its samples and sampling (the seed notebook's)


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
    length: int | None = None,
    finite: bool = True,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field that carries its range and help: `n_layer: int = option(4, "blocks", ge=1)`.

    ge/gt/le/lt bound numbers (each item of a list); choices lists the strings allowed; length
    fixes a list's length; finite=False lets NaN and infinities through.
    """
    meta = {
        "help": help,
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "choices": choices,
        "length": length,
        "finite": finite,
    }
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict, tuple)):
        frozen = default
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(T, True) for `T | None` / Optional[T]; (hint, False) otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) < len(typing.get_args(hint)):
            return (args[0] if len(args) == 1 else Any), True
    return hint, False


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe(hint: Any, meta: Mapping[str, Any]) -> str:
    """What a field allows, in words: 'an integer >= 1', 'null or a number in (0, 1]', ..."""
    inner, optional = _unwrap_optional(hint)
    origin = typing.get_origin(inner)
    if meta.get("choices"):
        what = "one of " + ", ".join(meta["choices"])
    elif origin in (list, tuple):
        item = (typing.get_args(inner) or (Any,))[0]
        n = meta.get("length")
        what = f"a list of {n} " if n else "a list of "
        what += _bounds("numbers" if item in (int, float) else "values", meta)
    elif inner is bool:
        what = "true or false"
    elif inner is int:
        what = _bounds("an integer", meta)
    elif inner is float:
        what = _bounds("a number", meta)
    elif inner is str:
        what = "a string"
    else:
        what = "a value"
    return f"null or {what}" if optional else what


def _bounds(noun: str, meta: Mapping[str, Any]) -> str:
    lo = ("ge", meta.get("ge")) if meta.get("ge") is not None else ("gt", meta.get("gt"))
    hi = ("le", meta.get("le")) if meta.get("le") is not None else ("lt", meta.get("lt"))
    if lo[1] is not None and hi[1] is not None:
        left = "[" if lo[0] == "ge" else "("
        right = "]" if hi[0] == "le" else ")"
        return f"{noun} in {left}{_fmt(lo[1])}, {_fmt(hi[1])}{right}"
    if lo[1] is not None:
        return f"{noun} {'>=' if lo[0] == 'ge' else '>'} {_fmt(lo[1])}"
    if hi[1] is not None:
        return f"{noun} {'<=' if hi[0] == 'le' else '<'} {_fmt(hi[1])}"
    return noun


def show_value(value: Any) -> str:
    """A value as a user writes it on the command line (true, null, [1,2])."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    return str(value)


def _in_range(x: float, meta: Mapping[str, Any]) -> bool:
    if meta.get("finite", True) and not math.isfinite(x):
        return False
    if math.isnan(x):
        return True  # finite=False lets it through; no bound can judge it
    return not (
        (meta.get("ge") is not None and x < meta["ge"])
        or (meta.get("gt") is not None and x <= meta["gt"])
        or (meta.get("le") is not None and x > meta["le"])
        or (meta.get("lt") is not None and x >= meta["lt"])
    )


def _number(value: Any, kind: type) -> Any:
    """value as an int or float if it is one (bools are not numbers here), else None."""
    if isinstance(value, bool):
        return None
    if kind is int:
        if isinstance(value, int):
            return value
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def check_value(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """value if it is of `hint` and in range (ints widened to float where a float is asked for,
    lists to tuples where a tuple is); else UserError naming key, value and what is allowed."""

    def bad() -> UserError:
        return UserError(f"{key}={show_value(value)}: must be {describe(hint, meta)}")

    inner, optional = _unwrap_optional(hint)
    if value is None:
        if optional or inner is Any:
            return None
        raise bad()
    if inner is Any:
        return value
    origin = typing.get_origin(inner)
    if meta.get("choices"):
        if not isinstance(value, str) or value not in meta["choices"]:
            raise bad()
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)) or (meta.get("length") is not None and len(value) != meta["length"]):
            raise bad()
        item = (typing.get_args(inner) or (Any,))[0]
        out = []
        for v in value:
            if item in (int, float):
                n = _number(v, item)
                if n is None or not _in_range(n, meta):
                    raise bad()
                out.append(n)
            else:
                out.append(v)
        return tuple(out) if origin is tuple else out
    if inner is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if inner in (int, float):
        n = _number(value, inner)
        if n is None or not _in_range(n, meta):
            raise bad()
        return n
    if inner is str:
        if not isinstance(value, str):
            raise bad()
        return value
    return value


class Options:
    """Base of every options dataclass: checks each field against its type and range on creation.

    KEY is where the options live in the config ("model", "optim", ... or "" for an entry point's
    top-level keys), so errors name the key a user types. Subclasses add checks that involve
    several fields in `check()`.
    """

    KEY: ClassVar[str] = ""
    OPEN: ClassVar[bool] = False  # True: keys beyond the fields are allowed (and left to their consumer)

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is MISSING or (isinstance(value, str) and value == "???"):
                what = f" ({f.metadata['help']})" if f.metadata.get("help") else ""
                raise UserError(f"{self.key(f.name)} is required: pass {self.key(f.name)}=...{what}")
            setattr(self, f.name, check_value(self.key(f.name), value, hints[f.name], f.metadata))
        self.check()

    def check(self) -> None:
        """Checks across fields; raise UserError naming the key to change."""

    @classmethod
    def key(cls, name: str) -> str:
        return f"{cls.KEY}.{name}" if cls.KEY else name

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (tuples as lists), e.g. for a checkpoint or JSON."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def field_info(cls: type, name: str) -> tuple[Any, Field] | None:
    """(type hint, Field) of a dataclass field; None if cls has no such field."""
    if not dataclasses.is_dataclass(cls):
        return None
    for f in dataclasses.fields(cls):
        if f.name == name:
            return typing.get_type_hints(cls)[name], f
    return None


def build(cls: type, values: Mapping[str, Any] | None = None, **extra: Any) -> Any:
    """cls(**values, **extra), with unknown keys refused by name instead of a TypeError."""
    values = {**(values or {}), **extra}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown and getattr(cls, "OPEN", False):
        values = {k: v for k, v in values.items() if k in names}
    elif unknown:
        prefix = f"{cls.KEY}." if getattr(cls, "KEY", "") else ""
        raise UserError(
            f"unknown option(s) {', '.join(prefix + k for k in unknown)}: the valid ones are {', '.join(sorted(names))}"
        )
    return cls(**values)
