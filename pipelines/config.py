"""Typed dataclass configurations from plain mappings (YAML, JSON, flow parameters).

One place turns a mapping into a frozen config dataclass: unknown keys are refused, and every value
is checked against its field's annotation before the dataclass sees it, so a typo fails at the edge
with its location (``[embed -> num_epochs] expected an integer, got 'three'``) instead of as a
``TypeError`` deep inside a stage. Range checks that configs repeat (``> 0``, ``in [0, 1)``) go
through ``check_range`` so every message reads the same.

Annotations understood: ``int``, ``float`` (an integer is accepted), ``bool``, ``str``, ``X | None``,
``tuple[X, ...]`` and ``tuple[X, Y]`` (from a list; a ``tuple[str, ...]`` also takes one
comma-separated string), ``dict[K, V]``, ``Any``, and nested dataclass sections, which are built
through their own ``from_dict(data, where)`` when they define one.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pipelines.errors import ConfigError

T = TypeVar("T")


def location(where: str, key: str) -> str:
    """``embed`` + ``split`` → ``embed -> split``; the top level has no prefix."""
    return f"{where} -> {key}" if where else key


def from_dict(cls: type[T], data: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys and values of the wrong type raise
    ``ConfigError`` naming ``where`` (``train -> stage1``); keys left out take the field default."""
    at = f"[{where}] " if where else ""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{at}expected a mapping, got {_show(data)}")
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints), key=str)
    if unknown:
        raise ConfigError(f"{at}unknown key(s) {unknown}: expected some of {sorted(hints)}")
    kwargs = {key: convert(hints[key], value, location(where, key)) for key, value in data.items()}
    return cls(**kwargs)


def convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` checked against annotation ``tp`` (lists become tuples, ints become floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return convert(options[0], value, where)
        for option in options:  # the first annotation the value fits
            try:
                return convert(option, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"[{where}] expected {' or '.join(_describe(o) for o in options)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # already built (a default, or a config passed down whole)
            return value
        if value is not None and not isinstance(value, Mapping):  # before a section's own from_dict sees it
            raise ConfigError(f"[{where}] expected a mapping, got {_show(value)}")
        build = getattr(tp, "from_dict", None)
        return build(value, where) if build is not None else from_dict(tp, value, where)
    if origin is tuple:
        return _convert_tuple(args, value, where)
    if origin is dict or tp is dict:
        return _convert_dict(args, value, where)
    if tp in _SCALARS:
        return _convert_scalar(tp, value, where)
    return value  # an annotation this module does not check (e.g. a callable)


def _convert_scalar(tp: type, value: Any, where: str) -> Any:
    ok = {bool: isinstance(value, bool), int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool), str: isinstance(value, str)}[tp]
    if not ok:
        raise ConfigError(f"[{where}] expected {_describe(tp)}, got {_show(value)}")
    return float(value) if tp is float else value


def _convert_tuple(args: tuple, value: Any, where: str) -> tuple:
    if isinstance(value, str) and args in ((str, Ellipsis), ()):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"[{where}] expected a list, got {_show(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{where} -> {i}") for i, v in enumerate(value))
    if args:
        if len(value) != len(args):
            raise ConfigError(f"[{where}] expected a list of {len(args)} values, got {_show(value)}")
        return tuple(convert(a, v, f"{where} -> {i}") for i, (a, v) in enumerate(zip(args, value)))
    return tuple(value)


def _convert_dict(args: tuple, value: Any, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{where}] expected a mapping, got {_show(value)}")
    key_type, value_type = args if args else (Any, Any)
    return {convert(key_type, k, where): convert(value_type, v, location(where, str(k))) for k, v in value.items()}


_SCALARS = (bool, int, float, str)
_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if typing.get_origin(tp) is tuple:
        return "a list"
    return _NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field ``cls(...)`` accepts (string annotations included)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def section_names(cls: type) -> tuple[str, ...]:
    """The fields of ``cls`` that are nested dataclass sections."""
    return tuple(name for name, tp in _field_types(cls).items() if dataclasses.is_dataclass(tp))


def check_range(obj: Any, where: str, *names: str, gt: float | None = None, ge: float | None = None,
                lt: float | None = None, le: float | None = None, nullable: bool = False) -> None:
    """``check_value`` for fields ``names`` of ``obj`` (a config dataclass at location ``where``)."""
    for name in names:
        check_value(location(where, name), getattr(obj, name), gt=gt, ge=ge, lt=lt, le=le, nullable=nullable)


def check_value(where: str, value: Any, *, gt: float | None = None, ge: float | None = None,
                lt: float | None = None, le: float | None = None, nullable: bool = False) -> None:
    """Raise ``ConfigError`` ``[where] must be > 0, got 0`` when ``value`` is outside the bounds
    (``nullable``: ``None`` is allowed too)."""
    if value is None and nullable:
        return
    fine = value is not None and all((gt is None or value > gt, ge is None or value >= ge,
                                      lt is None or value < lt, le is None or value <= le))
    if not fine:
        raise ConfigError(f"[{where}] must be {_bounds(gt, ge, lt, le)}{' or null' if nullable else ''}, got {value!r}")


def _bounds(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    low, high = (gt, "(") if gt is not None else (ge, "["), (lt, ")") if lt is not None else (le, "]")
    if low[0] is not None and high[0] is not None:
        return f"in {low[1]}{low[0]}, {high[0]}{high[1]}"
    if low[0] is not None:
        return f"{'>' if gt is not None else '>='} {low[0]}"
    return f"{'<' if lt is not None else '<='} {high[0]}"


def check_choice(obj: Any, where: str, name: str, choices: tuple[str, ...], what: str = "",
                 nullable: bool = False) -> None:
    """Raise ``ConfigError`` ``[where -> name] expected one of a, b, got 'c'`` (``what``: a prefix
    such as ``unknown model:``)."""
    value = getattr(obj, name)
    if (value is None and nullable) or value in choices:
        return
    prefix = f"{what}: " if what else ""
    raise ConfigError(f"[{location(where, name)}] {prefix}expected one of {', '.join(choices)}, got {value!r}")
