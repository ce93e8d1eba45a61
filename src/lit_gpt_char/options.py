"""Typed options: each default, type, allowed range and one-line help, written once.

Every config group (and every entry point's own keys) is a dataclass of `option(...)` fields.
OmegaConf checks the types: Hydra composes conf/ over these dataclasses, and `build` merges plain
values (a checkpoint's, a web request's) the same way. `Options.__post_init__` checks the ranges and
choices. A bad value ends as one line, ``<key>=<value>: must be <what is allowed>``. No torch here.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import re
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from lit_gpt_char.errors import UserError

SEED = 1337  # the default seed of training, its data, its samples and sampling (the seed notebook's)


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None, **allowed: Any) -> Any:
    """A dataclass field with its help and what it allows: `n_layer: int = option(4, "blocks", ge=1)`.

    allowed: ge/gt/le/lt bound numbers (each item of a list; NaN and infinities are refused), choices
    lists the values allowed, length fixes a list's length."""
    meta = {"help": help, **allowed}
    if isinstance(default, (list, dict)):
        factory = factory or (lambda: type(default)(default))
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(hint: Any, meta: Mapping[str, Any]) -> str:
    """What a field allows, in words: 'an integer >= 1', 'null or a number in (0, 1]', ..."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else ()
    inner = next((a for a in args if a is not type(None)), hint) if type(None) in args else hint
    if meta.get("choices"):
        what = "one of " + ", ".join(map(str, meta["choices"]))
    elif typing.get_origin(inner) in (list, tuple):
        item = (typing.get_args(inner) or (Any,))[0]
        what = f"a list of {meta['length']} " if meta.get("length") else "a list of "
        what += _bounds("numbers" if item in (int, float) else "values", meta)
    else:
        noun = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(inner, "a value")
        what = _bounds(noun, meta) if inner in (int, float) else noun
    return f"null or {what}" if inner is not hint else what


def _bounds(noun: str, meta: Mapping[str, Any]) -> str:
    lo, hi = (("[", meta.get("ge")) if meta.get("ge") is not None else ("(", meta.get("gt")),
              ("]", meta.get("le")) if meta.get("le") is not None else (")", meta.get("lt")))  # fmt: skip
    show = lambda x: f"{x:g}" if isinstance(x, float) else str(x)  # noqa: E731
    if lo[1] is not None and hi[1] is not None:
        return f"{noun} in {lo[0]}{show(lo[1])}, {show(hi[1])}{hi[0]}"
    if lo[1] is not None:
        return f"{noun} {'>=' if lo[0] == '[' else '>'} {show(lo[1])}"
    if hi[1] is not None:
        return f"{noun} {'<=' if hi[0] == ']' else '<'} {show(hi[1])}"
    return noun


def show_value(value: Any) -> str:
    """A value as a user writes it on the command line (true, null, [1,2])."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show_value(v) for v in value) + "]"
    return str(value)


def allowed(value: Any, meta: Mapping[str, Any]) -> bool:
    """Whether a value of the right type (OmegaConf checked it) is in the field's range and choices."""
    if value is None:
        return True
    if meta.get("choices") is not None:
        return value in meta["choices"]
    if meta.get("length") is not None and len(value) != meta["length"]:
        return False
    items = value if isinstance(value, (list, tuple)) else [value]
    numbers = [x for x in items if isinstance(x, (int, float)) and not isinstance(x, bool)]
    bounds = [(_TESTS[k], meta[k]) for k in _TESTS if meta.get(k) is not None]
    return all(math.isfinite(x) and all(test(x, b) for test, b in bounds) for x in numbers)


_TESTS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


class Options:
    """Base of every options dataclass: on creation, OmegaConf checks (and converts: "4" -> 4) each
    value against its field's type, then each value must be in its range.

    KEY is where the options live in the config ("model", "optim", ... or "" for an entry point's
    top-level keys), so errors name the key a user types. Subclasses add checks that involve
    several fields in `check()`. OPEN: keys beyond the fields are left to their consumer.
    """

    KEY: ClassVar[str] = ""
    OPEN: ClassVar[bool] = False

    def __post_init__(self) -> None:
        from omegaconf import OmegaConf
        from omegaconf.errors import MissingMandatoryValue, ValidationError

        fields = {f.name: f for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        given = {name: getattr(self, name) for name in fields}

        try:
            node = OmegaConf.merge(OmegaConf.structured(type(self)), _literal(given))
            checked = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:
            raise UserError(field_error(type(self), str(e.key))) from None
        except ValidationError as e:
            name = re.sub(r"\[\d+\]$", "", str(e.full_key)).split(".")[0]
            raise UserError(field_error(type(self), name, given[name])) from None
        for name, value in checked.items():
            if not allowed(value, fields[name].metadata):
                raise UserError(field_error(type(self), name, given[name]))
            setattr(self, name, value)
        self.check()

    def check(self) -> None:
        """Checks across fields; raise UserError naming the key to change."""

    @classmethod
    def key(cls, name: str) -> str:
        return f"{cls.KEY}.{name}" if cls.KEY else name

    def to_dict(self) -> dict[str, Any]:
        """Plain values only, e.g. for a checkpoint or JSON: the options, without Hydra's `_target_`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("_")}  # type: ignore[call-overload]


def build(cls: type, values: Any = None, **extra: Any) -> Any:
    """cls(**values, **extra) from plain values, options or a config node (interpolations resolved), with an unknown key
    refused by name (an OPEN cls leaves them out) and a node's `_target_` left out."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(values, cls) and not extra:
        return values
    if isinstance(values, Options):  # an instance, with `extra` over it (or of a parent schema)
        values = values.to_dict()
    if OmegaConf.is_config(values):
        try:
            values = OmegaConf.to_container(values, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as e:  # a required key left out, an interpolation to nothing
            raise UserError(error_line(e)) from None
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in {**(values or {}), **extra}.items() if k in names or (k != "_target_" and not cls.OPEN)}
    unknown = sorted(set(values) - names)
    if unknown:
        keys = ", ".join(cls.key(k) for k in unknown)
        raise UserError(f"unknown option(s) {keys}: the valid ones are {', '.join(sorted(names))}")
    return cls(**values)


def _literal(value: Any) -> Any:
    """value with each `${` escaped, so OmegaConf keeps a string such as a prompt "${x}" as it is, and
    a numpy (or 0-d tensor) scalar as the Python number it holds."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str) and "${" in value:
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, (list, tuple)):
        return [_literal(v) for v in value]
    return {k: _literal(v) for k, v in value.items()} if isinstance(value, Mapping) else value


def error_line(e: BaseException) -> str:
    """One line for an error OmegaConf raised on the composed config, made from the exception's fields
    (the key, its schema, the value) and the value as this command line has it, never from its text."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    key = re.sub(r"\[\d+\]$", "", getattr(e, "full_key", None) or str(getattr(e, "key", None) or ""))
    if isinstance(e, (ConfigAttributeError, ConfigKeyError)):
        return f"{key}: no such option; `--cfg job` prints every option (a new key needs +{key}=...)"
    cls, name = getattr(e, "object_type", None), key.rsplit(".", 1)[-1]
    schema = cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None
    if isinstance(e, MissingMandatoryValue):
        return field_error(schema, name, key=key)
    if isinstance(e, ValidationError) and schema and name in {f.name for f in dataclasses.fields(schema)}:
        return field_error(schema, name, getattr(e, "value", None), key=key)
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return f"{key}: {first}" if key else first


def field_error(cls: type | None, name: str, value: Any = dataclasses.MISSING, key: str | None = None) -> str:
    """The one line for option `name` of schema cls (the key a user types: `key`, else cls.key(name)):
    required and not given (no value), or a value it does not allow: ``model.n_layer=0: must be an
    integer >= 1``."""
    key = key or cls.key(name)
    field = next((f for f in dataclasses.fields(cls) if f.name == name), None) if cls else None
    if value is dataclasses.MISSING:
        what = field and field.metadata.get("help")
        return f"{key} is required: pass {key}=..." + (f" ({what})" if what else "")
    return f"{key}={as_typed(key, value)}: must be {describe(typing.get_type_hints(cls)[name], field.metadata)}"


def as_typed(key: str, value: Any) -> str:
    """value as this command line has it when it is there (1e-3, not 0.001; 0, not 0.0), else as a user
    writes it: a value from elsewhere (a YAML file, a request, a sweep's a,b,c) is never shown as typed."""

    def same(typed: str) -> bool:
        if typed in (str(value), show_value(value)):
            return True
        try:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and float(typed) == value
        except ValueError:
            return False

    given = [v for k, sep, v in (a.partition("=") for a in sys.argv[1:]) if sep and k.lstrip("+~") == key]
    return next((v for v in given if same(v)), show_value(value))
