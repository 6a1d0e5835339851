"""The decoded-array caches of the image loaders (Tiny ImageNet, image folders): one .npz per source,
keyed by the source's fingerprint and the decoder's version, trusted only if its arrays look as written."""

from __future__ import annotations

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
