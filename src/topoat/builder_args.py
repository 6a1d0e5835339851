"""Options passed through to a registered builder (`model.args`, `data.args`), checked against the
builder's own signature: an unknown name or a value not of its default's kind is a one-line error before
anything is built."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .errors import TopoatError


def builder_defaults(builder: Callable[..., Any], skip: Collection[str] = ()) -> dict[str, Any]:
    """The builder's own options and their defaults, less `skip` (what the caller passes itself)."""
    parameters = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in skip and p.kind is not p.VAR_KEYWORD}


def check_builder_args(
    section: str, owner: str, args: Mapping[str, Any], defaults: Mapping[str, Any], *, least: int | None = None
) -> None:
    """`args` for `owner` (named in errors as `section`, e.g. "model.args"): known names only, each of its
    default's kind. With `least`, integers (and the integers of a list, which must not be empty) are at
    least `least`: sizes of 0 build a model that fails in its first step or silently has no layers."""
    unknown = sorted(set(args) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise TopoatError(f"{section}: unknown argument(s) {', '.join(unknown)} for {owner} (allowed: {allowed})")
    for key, value in args.items():
        what = _kind_problem(value, defaults[key], least)
        if what:
            raise TopoatError(f"{section}.{key} must be {what} for {owner}, got {value!r}")


def _integer(value: Any, least: int | None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and (least is None or value >= least)


def _kind_problem(value: Any, default: Any, least: int | None) -> str | None:
    """What `value` should be, when it is not of the default's kind (None: it is, or there is no default).
    Switches must be booleans: a string such as "no" would be true."""
    bound = "" if least is None else f" >= {least}"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if _integer(value, least) else f"an integer{bound}"
    if isinstance(default, float):
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if isinstance(default, (list, tuple)):
        ok = (
            isinstance(value, (list, tuple))
            and (least is None or len(value) > 0)
            and all(_integer(v, least) for v in value)
        )
        return None if ok else f"a list of integers{bound}"
    return None
