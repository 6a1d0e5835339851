"""Data sets by name: each loader registers itself (`register_dataset`), and `load_dataset` finds it.

A loader is `load(root, **args)`: `root` is where its files are (None: its default place), `args` its
own options (a config's `data.args`, e.g. the synthetic set's `shape`, `classes`, `train`, `test`). A
loader that names a `download` or `seed` parameter also gets the config's `data.download` and `seed`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..builder_args import builder_defaults, check_builder_args
from ..registry import DATASETS
from .base import ImageDataset

Loader = Callable[..., ImageDataset]
L = TypeVar("L", bound=Loader)
# what every loader may take besides its own args
COMMON = ("root", "download", "seed")


@dataclass(frozen=True)
class DataSpec:
    name: str
    load: Loader

    def arg_defaults(self) -> dict[str, Any]:
        """The loader's own options and their defaults (what `data.args` may set)."""
        return builder_defaults(self.load, skip=COMMON)

    def check_args(self, args: Mapping[str, Any]) -> None:
        """Unknown options, or values not of their default's kind, are a one-line TopoatError."""
        check_builder_args("data.args", self.name, args, self.arg_defaults())

    def __call__(
        self, root: str | None, args: Mapping[str, Any], *, download: bool = False, seed: int = 0
    ) -> ImageDataset:
        self.check_args(args)
        taken = inspect.signature(self.load).parameters
        common = {key: value for key, value in (("download", download), ("seed", seed)) if key in taken}
        return self.load(root, **common, **args)


def register_dataset(name: str, loader: L) -> L:
    """Make `name` usable as `data.dataset` and in `load_dataset`: call it once, in the loader's module."""
    DATASETS.register(name, DataSpec(name, loader))
    return loader


def load_dataset(
    name: str,
    root: str | None = None,
    *,
    seed: int = 0,
    download: bool = False,
    **args: Any,
) -> ImageDataset:
    """The data set registered as `name`, with its own options `args` (e.g. `load_dataset("synthetic",
    shape=[3, 32, 32], classes=10)`). `download` lets cifar10/cifar100/tiny-imagenet fetch their official
    archive into `root` if missing."""
    return DATASETS.get(name)(root, args, download=download, seed=seed)
