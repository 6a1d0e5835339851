"""Fashion-MNIST from its IDX .gz files (Debian's dataset-fashion-mnist puts them in DEFAULT_ROOT)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import TopoatError
from .base import ImageDataset
from .registry import register_dataset

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
HOW_TO_GET = (
    "install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist) "
    "or pass --data-root / data.root pointing at the four IDX .gz files"
)


def read_idx(path: Path, magic: int, expected_count: int | None = None) -> np.ndarray:
    """Parse one gzipped IDX file, checking its magic number, dimensions and length."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise TopoatError(f"Fashion-MNIST file missing: {path}; {HOW_TO_GET}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise TopoatError(f"Fashion-MNIST file {path} is corrupt or truncated ({e.__class__.__name__})") from None
    header = 16 if magic == IMAGE_MAGIC else 8  # images add two dimensions (rows, cols) to the count
    if len(raw) < header:
        raise TopoatError(f"{path}: too short to be an IDX file ({len(raw)} bytes, the header alone is {header})")
    got_magic, count = struct.unpack(">II", raw[:8])
    if got_magic != magic:
        raise TopoatError(f"{path}: bad IDX magic number {got_magic} (expected {magic})")
    if expected_count is not None and count != expected_count:
        raise TopoatError(f"{path}: holds {count} items, expected {expected_count}")
    dims = [count]
    offset = 8
    if magic == IMAGE_MAGIC:
        rows, cols = struct.unpack(">II", raw[8:16])
        dims += [rows, cols]
        offset = 16
    size = int(np.prod(dims))
    if len(raw) - offset != size:
        raise TopoatError(f"{path}: payload is {len(raw) - offset} bytes, expected {size}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def load_fashion_mnist(root: str | None = None, full_size: bool = True) -> ImageDataset:
    base = Path(root).expanduser() if root else DEFAULT_ROOT
    if not base.is_dir():
        raise TopoatError(f"Fashion-MNIST folder not found: {base}; {HOW_TO_GET}")
    n_train, n_test = (60000, 10000) if full_size else (None, None)
    x_tr = read_idx(base / FILES["train_images"], IMAGE_MAGIC, n_train)
    y_tr = read_idx(base / FILES["train_labels"], LABEL_MAGIC, x_tr.shape[0])
    x_te = read_idx(base / FILES["test_images"], IMAGE_MAGIC, n_test)
    y_te = read_idx(base / FILES["test_labels"], LABEL_MAGIC, x_te.shape[0])
    if y_tr.size and y_tr.max() > 9 or y_te.size and y_te.max() > 9:
        raise TopoatError(f"Fashion-MNIST labels in {base} are out of range 0..9")
    return ImageDataset(
        name="fashion-mnist",
        x_train=torch.from_numpy(x_tr.copy()).unsqueeze(1),
        y_train=torch.from_numpy(y_tr.astype(np.int64)),
        x_test=torch.from_numpy(x_te.copy()).unsqueeze(1),
        y_test=torch.from_numpy(y_te.astype(np.int64)),
        num_classes=10,
        class_names=CLASS_NAMES,
    )


register_dataset("fashion-mnist", lambda root: load_fashion_mnist(root))
