"""Registries: what a name in a config stands for (a base method, a kernel, an attack family, a data set).

Each entry registers itself in the module that defines it, so adding one is one new file and no edit to a
list. Config validation asks a registry which names exist; a registry imports the package of its built-in
entries the first time it is asked, which keeps this module free of imports (the packages import it).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

from .errors import TopoatError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order (the built-ins first)."""

    def __init__(self, what: str, builtins: str):
        self.what = what  # "method", "kernel", ...: how an error names an entry
        self.builtins = builtins  # the package whose import registers the built-in entries
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, entry: T) -> T:
        """Add `entry` under `name`; registering a name again replaces its entry (a reloaded module)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.what} needs a non-empty name, got {name!r}")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _load(self) -> None:
        """Import the built-ins' package and every module in it: a module registers what it defines, so a
        new built-in is one new file, listed nowhere."""
        if not self._loaded:
            self._loaded = True
            package = importlib.import_module(self.builtins)
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.builtins}.{module.name}")

    def get(self, name: str) -> T:
        """The entry of that name; an unknown name is a one-line TopoatError listing the known ones."""
        self._load()
        if name not in self._entries:
            raise TopoatError(f"unknown {self.what} {name!r}; choose from {', '.join(sorted(self.names()))}")
        return self._entries[name]

    def check(self, name: object, key: str) -> None:
        """A config's `key` names a registered entry, else a one-line TopoatError in the config's words."""
        if name not in self:
            known = ", ".join(map(repr, sorted(self.names())))
            raise TopoatError(f"config: {key} must be one of {known}, got {name!r}")

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def __iter__(self) -> Iterator[T]:
        self._load()
        return iter(list(self._entries.values()))


if TYPE_CHECKING:
    from .attacks.names import AttackFamily
    from .data.registry import DataSpec
    from .objectives.base import MethodSpec
    from .topology.kernels import Kernel

# Each registry's entries register themselves in these packages (see their register_* functions).
METHODS: Registry[MethodSpec] = Registry("method", "topoat.objectives")
KERNELS: Registry[type[Kernel]] = Registry("kernel", "topoat.topology")
ATTACKS: Registry[AttackFamily] = Registry("attack", "topoat.attacks")
DATASETS: Registry[DataSpec] = Registry("dataset", "topoat.data")
