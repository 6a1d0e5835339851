"""The decoded-array caches of the image loaders (Tiny ImageNet, image folders): one .npz per source,
keyed by the source's fingerprint and the decoder's version, trusted only if its arrays look as written."""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def read_array_cache(
    path: Path,
    fingerprint: str,
    keys: Sequence[str],
    version: int,
    is_sound: Callable[[dict[str, np.ndarray]], bool],
) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if there is no cache or it is stale, damaged or of another version.
    `keys` must include "source" (the fingerprint) and "version"."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if not all(k in f.files for k in keys):
                return None
            if f["version"].shape != () or int(f["version"]) != version or str(f["source"]) != fingerprint:
                return None
            arrays = {k: f[k] for k in keys}
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    return arrays if is_sound(arrays) else None


def cache_file(source: Path, stem: str, suffix: str) -> Path:
    """Where the decoded arrays of `source` are cached: `stem + suffix` beside it when its folder is
    writable, else in the user's cache folder under a name that also tells the source's path."""
    folder = source.resolve().parent
    if _writable(folder):
        return folder / (stem + suffix)
    key = hashlib.sha256(str(source.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return _user_cache() / f"{stem}-{key}{suffix}"


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "topoat"


def _writable(folder: Path) -> bool:
    """A folder topoat may write into: writable, and not marked read-only (which root could still write)."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK | os.X_OK)
