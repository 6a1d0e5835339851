"""YAML a user hands topoat (config and study files, --set and --arch-args values), read and parsed within
bounds: an endless or huge file (/dev/zero), a number of thousands of digits or nesting thousands deep is
one line, not a hang, a MemoryError or a RecursionError."""

from __future__ import annotations

import re
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


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"key {key!r} appears twice (the second at line {line})")


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe YAML 1.1, plus YAML 1.2's floats without a dot (5e-4, 1e3 were strings); a mapping that
    names a key twice is refused (YAML 1.1 silently kept the last); it stops at MAX_DEPTH levels: PyYAML
    composes nodes recursively (a RecursionError near 500 levels) and its scanner looks back over every open
    bracket (5000 of them take seconds)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH + 1:  # + 1: the scalars inside the deepest containers
                raise _TooDeep
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # an unhashable key: the constructor below says so
                pass
        return super().construct_mapping(node, deep)


_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str, where: str) -> Any:
    """yaml.safe_load (with the loader above), with a key given twice and what PyYAML raises besides
    YAMLError (which the caller handles) made a TopoatError naming `where`: nesting past MAX_DEPTH, a
    ValueError from an integer of over 4300 digits (Python's limit) or an impossible date."""
    try:
        data = yaml.load(text, Loader=_BoundedLoader)
    except DuplicateKey as e:
        raise TopoatError(f"{where}: {e}") from None
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
