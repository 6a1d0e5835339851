"""YAML a user hands topoat (config and study files, --set and --arch-args values), read and parsed within
bounds: an endless or huge file (/dev/zero), a number of thousands of digits or nesting thousands deep is
one line, not a hang, a MemoryError or a RecursionError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import TopoatError

MAX_BYTES = 2**20  # the largest packaged study is a few kB
MAX_DEPTH = 32  # a config nests 3 or 4 levels; deeper data would also strain the code that walks it


def read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file, read up to MAX_BYTES; pipes (`--config <(...)`) work, a device that never
    ends does not. OSError and UnicodeDecodeError go to the caller, which names the file its way."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise TopoatError(f"{what} {path} is larger than {MAX_BYTES // 2**20} MiB; it cannot be a topoat {what}")
    return data.decode()


class _TooDeep(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, stopping at MAX_DEPTH levels: PyYAML composes nodes recursively (a RecursionError
    near 500 levels) and its scanner looks back over every open bracket (5000 of them take seconds)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # + 1: the scalars inside the deepest containers
                raise _TooDeep
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def safe_load(text: str, where: str) -> Any:
    """yaml.safe_load, with what PyYAML raises besides YAMLError (which the caller handles) made a TopoatError
    naming `where`: nesting past MAX_DEPTH, a ValueError from an integer of over 4300 digits (Python's limit)
    or an impossible date."""
    try:
        data = yaml.load(text, Loader=_BoundedLoader)
    except (_TooDeep, RecursionError):
        raise TopoatError(f"{where} nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        reason = str(e).split(";")[0]  # Python's advice to raise its digit limit is not the user's fix
        raise TopoatError(f"{where} holds a value YAML cannot read: {reason}") from None
    _check_depth(data, where)
    return data


def _check_depth(data: Any, where: str) -> None:
    """The loaded data's depth, which aliases (`*a` inside a deep `&a`) can make deeper than the text's:
    level by level, each shared node once per level, so chains of aliases cost at most MAX_DEPTH passes."""
    level = [data]
    for _ in range(MAX_DEPTH):
        children: dict[int, Any] = {}
        for node in level:
            items = [*node.keys(), *node.values()] if isinstance(node, dict) else node if isinstance(node, list) else []
            children.update((id(c), c) for c in items if isinstance(c, (dict, list)))
        level = list(children.values())
        if not level:
            return
    raise TopoatError(f"{where} nests deeper than {MAX_DEPTH} levels")
