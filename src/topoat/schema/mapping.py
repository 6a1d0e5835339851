"""Config sections as mappings and back: `from_dict` checks every key and type against a dataclass and
names the key in a one-line TopoatError; `to_dict` writes the YAML keys."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union

from ..errors import TopoatError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) `value` against annotation `tp`; raise naming `key`."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key)
    if origin is Literal:
        return _coerce_literal(value, typing.get_args(tp), key)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a dataclass annotation, not an instance
        resolve = getattr(tp, "resolve_section", None)
        if resolve is not None:  # a section whose keys depend on a name in it (method.name)
            tp, value = resolve(value, key)
        return from_dict(tp, value, prefix=key)
    if origin in (list, dict):
        return _coerce_container(value, tp, key)
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    raise TopoatError(f"config: {key}: unsupported type {_type_name(tp)}")


def _coerce_container(value: Any, tp: Any, key: str) -> Any:
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise TopoatError(f"config: {key} must be a mapping, got {value!r}")
        return dict(value)
    if not isinstance(value, (list, tuple)):
        raise TopoatError(f"config: {key} must be a list, got {value!r}")
    args = typing.get_args(tp)
    return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)


def _coerce_union(value: Any, args: tuple[Any, ...], key: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, key)
        except TopoatError as e:
            errors.append(str(e))
    raise TopoatError(errors[0] if errors else f"config: {key}: bad value {value!r}")


def _coerce_literal(value: Any, args: tuple[Any, ...], key: str) -> Any:
    if isinstance(value, bool) and ("on" if value else "off") in args:
        value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
    if value not in args:
        raise TopoatError(f"config: {key} must be one of {', '.join(map(repr, args))}, got {value!r}")
    return value


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, str) and value.lower() in ("on", "off"):
        value = value.lower() == "on"  # a quoted "on"/"off" means what the bare word means
    if not isinstance(value, bool):
        raise TopoatError(f"config: {key} must be true or false, got {value!r}")
    return value


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopoatError(f"config: {key} must be an integer, got {value!r}")
    return value


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise TopoatError(f"config: {key} must be a number, got {value!r}")  # NaN means nothing anywhere
    return float(value)


def _coerce_str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise TopoatError(f"config: {key} must be a string, got {value!r}")
    return value


_SCALARS: dict[Any, typing.Callable[[Any, str], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
}


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types are TopoatErrors."""
    if data is None:
        data = {}
    where = prefix or "top level"
    if not isinstance(data, dict):
        raise TopoatError(f"config: {where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {_key(f): f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise TopoatError(f"config: unknown key '{full}' (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, name in fields.items():
        if key in data:
            full = f"{prefix}.{key}" if prefix else key
            kwargs[name] = _coerce(data[key], hints[name], full)
    return cls(**kwargs)


def _key(f: dataclasses.Field) -> str:
    """A field's YAML key: its name, or metadata["key"] where the name is a Python keyword (lambda)."""
    return f.metadata.get("key", f.name)


def to_dict(cfg: Any) -> Any:
    """A config (or any part of one) as plain YAML-ready data, with the YAML keys."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {_key(f): to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg
