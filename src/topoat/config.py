"""Typed, validated configuration: YAML in, dataclasses out, one-line errors naming the key.

This module reads config files (packaged presets, `base:` chains, `--set` overrides); the sections and
their checks live in `topoat.schema`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .errors import TopoatError
from .schema import TrainConfig, from_dict, to_dict
from .yamltext import read_yaml_text, safe_load

__all__ = [
    "PRESETS",
    "apply_overrides",
    "dump_config",
    "load_config",
    "merge_sections",
    "override",
    "preset_names",
    "preset_path",
    "read_config_yaml",
    "read_yaml",
]


def _parse_scalar(text: str, key: str) -> Any:
    try:
        return safe_load(text, f"--set {key}")
    except yaml.YAMLError:
        return text


def override(key: str, value: Any) -> str:
    """The `key=value` override that sets `key` to exactly `value`: the value written as JSON, which YAML
    reads back as it was (a path holding ' #' or ': ', a name such as `yes`, `12` or `~` stay strings)."""
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` strings (values parsed as YAML) to a nested mapping."""
    for item in overrides:
        if "=" not in item:
            raise TopoatError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise TopoatError(f"--set: bad key {key!r}")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise TopoatError(f"--set: {key}: '{part}' is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text, key.strip())
    return data


PRESETS = Path(__file__).resolve().parent / "presets"  # the configs/ and studies/ the package ships


def preset_path(name: str | Path, kind: str = "configs") -> Path:
    """A config (`kind` "configs") or study ("studies") file: `name` as a path when that file exists,
    else the packaged one of that name, e.g. `fashion-mnist/pgd-at` -> presets/configs/fashion-mnist/pgd-at.yaml,
    so the shipped files work from any folder after `pip install`."""
    path = Path(name).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    stem = str(name)[: -len(".yaml")] if str(name).endswith(".yaml") else str(name)
    for candidate in (stem, stem.removeprefix(f"{kind}/")):
        packaged = PRESETS / kind / f"{candidate}.yaml"
        if packaged.is_file():
            return packaged
    return path  # not found either way: read_yaml names the path as given


def preset_names(kind: str = "configs") -> list[str]:
    """The packaged configs or studies, by the names `preset_path` accepts; files and folders named `_*` are
    layers that configs build on with `base:` (a data set's protocol, a method), not runs of their own."""
    root = PRESETS / kind
    paths = (p.relative_to(root) for p in root.rglob("*.yaml"))
    return sorted(p.with_suffix("").as_posix() for p in paths if not any(part.startswith("_") for part in p.parts))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = read_yaml_text(path, "config file")
    except FileNotFoundError:
        raise TopoatError(
            f"config file not found: {path} (nor a packaged one of that name; `topoat configs` lists them)"
        ) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise TopoatError(f"cannot read config file {path}: {e.__class__.__name__}") from None
    except OSError as e:
        raise TopoatError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = safe_load(text, f"config file {path}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TopoatError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise TopoatError(f"config file {path} must hold a mapping at the top level")
    return data


def read_config_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping with its `base:` resolved: `base: pgd-at.yaml`, or a list such as
    `base: [_protocol.yaml, ../_methods/trades.yaml]` (paths relative to the file), starts from those configs
    merged left to right, and this file's keys are merged over them, section by section."""
    path = Path(path)
    if path.resolve() in _seen:
        chain = " -> ".join(link.name for link in (*_seen, path))
        raise TopoatError(f"config file {path}: its base: chain comes back to it ({chain})")
    raw = read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise TopoatError(
            f"config file {path}: base must be the path of another config file or a list of them, got {base!r}"
        )
    merged: dict = {}
    for name in bases:
        source = path.parent / name
        if not source.exists():
            raise TopoatError(f"config file {path}: its base {name} is not found")
        merged = _layer_over(merged, read_config_yaml(source, (*_seen, path.resolve())), source)
    return _layer_over(merged, raw, path)


def _layer_over(inherited: dict, layer: dict, source: Path) -> dict:
    """`layer`, read from `source`, merged over what it inherits; an empty section would drop the inherited one."""
    for key, value in layer.items():
        if value is None and isinstance(inherited.get(key), dict):  # `optim:` with its keys lost or forgotten
            raise TopoatError(
                f"config file {source}: '{key}:' is empty, which would drop the {key} section of its base; "
                f"give its keys, or remove the line to keep the base's (--set {key}=null drops it on purpose)"
            )
    return merge_sections(inherited, layer)


def merge_sections(base: dict, over: dict) -> dict:
    """`over` merged into `base`: mappings key by key, anything else (lists, null) replaced whole."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, data: dict | None = None
) -> TrainConfig:
    raw = dict(data or {}) if path is None else read_config_yaml(preset_path(path, "configs"))
    raw = apply_overrides(raw, list(overrides or []))
    return from_dict(TrainConfig, raw).validate()


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
