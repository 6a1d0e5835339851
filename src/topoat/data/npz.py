"""A user's own images: one .npz with x_train, y_train, x_test, y_test (uint8 images, integer labels), and
optionally num_classes (a scalar) when the labels do not show the class count."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import TopoatError
from .base import ImageDataset
from .registry import register_dataset

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


# Deflate packs at most about 1032 bytes into one, so a member claiming more than this many bytes per
# stored byte is lying about its size.
MAX_DEFLATE_RATIO = 1100


def _check_declared_sizes(p: Path, names: list[str]) -> None:
    """Compare each array's header (shape, dtype) with the bytes its zip member holds, before numpy
    allocates what the header declares: a 1 KB file must not ask for 93 GiB."""
    with zipfile.ZipFile(p) as z:
        for name in names:
            info = z.getinfo(f"{name}.npy")
            stored_limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else MAX_DEFLATE_RATIO)
            if info.file_size > stored_limit:
                raise TopoatError(
                    f"{p}: member {name}.npy claims {info.file_size} bytes but stores {info.compress_size}"
                )
            with z.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(f)
                declared = math.prod(shape) * dtype.itemsize
                available = info.file_size - f.tell()
            if declared > available:
                raise TopoatError(
                    f"{p}: {name} declares shape {shape} ({declared} bytes) but holds only "
                    f"{available} bytes; the file is damaged"
                )


def _read_arrays(p: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(p, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise TopoatError(f"{p}: missing array(s) {', '.join(missing)} (need {', '.join(KEYS)})")
            names = [k for k in (*KEYS, "num_classes") if k in f.files]
            _check_declared_sizes(p, names)
            return {k: f[k] for k in names}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise TopoatError(f"cannot read {p}: not a valid .npz ({e.__class__.__name__})") from None


def _class_count(p: Path, arrays: dict[str, np.ndarray], y_train: torch.Tensor, y_test: torch.Tensor) -> int:
    """The declared `num_classes` if the file has one; else the training labels' range. A test label the
    training split never reaches is an error without a declaration: it would add an output the model
    is never trained for, and test images it can only get wrong."""
    if "num_classes" in arrays:
        declared = arrays["num_classes"]
        if declared.ndim != 0 or not np.issubdtype(declared.dtype, np.integer) or int(declared) < 2:
            raise TopoatError(f"{p}: num_classes must be a single integer >= 2, got {declared!r}")
        return int(declared)
    num_classes = int(y_train.max()) + 1
    unseen = sorted({int(v) for v in y_test[y_test >= num_classes]})
    if unseen:
        raise TopoatError(
            f"{p}: y_test has label(s) {', '.join(map(str, unseen[:5]))} above every training label "
            f"(0..{num_classes - 1}); add a num_classes array to the .npz to declare the class count"
        )
    return num_classes


def load_npz(path: str | None) -> ImageDataset:
    if not path:
        raise TopoatError("the npz dataset needs data.root (or --data-root) naming the .npz file")
    p = Path(path).expanduser()
    if not p.is_file():
        raise TopoatError(f"npz file not found: {p}")
    arrays = _read_arrays(p)
    y_train = _labels("y_train", arrays["y_train"], p)
    y_test = _labels("y_test", arrays["y_test"], p)
    if y_train.numel() == 0:
        raise TopoatError(f"{p}: y_train is empty")
    if y_test.numel() == 0:  # every accuracy would be 0/0
        raise TopoatError(f"{p}: y_test is empty; the test split needs at least one image")
    if int(y_train.min()) < 0 or int(y_test.min()) < 0:
        raise TopoatError(f"{p}: labels must be integers 0..K-1")
    return ImageDataset(
        p.stem,
        _images("x_train", arrays["x_train"], p),
        y_train,
        _images("x_test", arrays["x_test"], p),
        y_test,
        _class_count(p, arrays, y_train, y_test),
    )


register_dataset("npz", lambda root: load_npz(root))
