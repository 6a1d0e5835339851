"""A user's own images: one .npz with x_train, y_train, x_test, y_test (uint8 images, integer labels)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import TopoatError
from .base import ImageDataset

KEYS = ("x_train", "y_train", "x_test", "y_test")


def _images(name: str, a: np.ndarray, path: Path) -> torch.Tensor:
    if a.dtype != np.uint8:
        raise TopoatError(f"{path}: {name} must be uint8, got {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4:
        a = a.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    else:
        raise TopoatError(f"{path}: {name} must be (N, H, W) or (N, H, W, C), got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a))


def _labels(name: str, a: np.ndarray, path: Path) -> torch.Tensor:
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise TopoatError(f"{path}: {name} must be a 1-D integer array, got {a.dtype} {a.shape}")
    return torch.from_numpy(a.astype(np.int64))


def load_npz(path: str | None) -> ImageDataset:
    if not path:
        raise TopoatError("the npz dataset needs data.root (or --data-root) naming the .npz file")
    p = Path(path)
    if not p.is_file():
        raise TopoatError(f"npz file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise TopoatError(f"{p}: missing array(s) {', '.join(missing)} (need {', '.join(KEYS)})")
            arrays = {k: f[k] for k in KEYS}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise TopoatError(f"cannot read {p}: not a valid .npz ({e.__class__.__name__})") from None
    y_train = _labels("y_train", arrays["y_train"], p)
    y_test = _labels("y_test", arrays["y_test"], p)
    if y_train.numel() == 0:
        raise TopoatError(f"{p}: y_train is empty")
    if int(y_train.min()) < 0 or (y_test.numel() and int(y_test.min()) < 0):
        raise TopoatError(f"{p}: labels must be integers 0..K-1")
    num_classes = int(max(int(y_train.max()), int(y_test.max()) if y_test.numel() else 0)) + 1
    return ImageDataset(p.stem, _images("x_train", arrays["x_train"], p), y_train,
                        _images("x_test", arrays["x_test"], p), y_test, num_classes)
