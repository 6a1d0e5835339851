"""CIFAR-10 and CIFAR-100 from their official *binary* archives (never the pickled "python version").

Records are fixed-size: CIFAR-10 is 1 label byte + 3072 pixel bytes (1024 R, 1024 G, 1024 B, each
32x32 row-major), CIFAR-100 is 1 coarse + 1 fine label byte + 3072 pixel bytes; we use the fine
labels (100 classes). `data.root` may be the .tar.gz itself (members are read straight out of it,
nothing is extracted), the extracted folder, or a folder holding either; with `download` allowed and
nothing found, the archive is downloaded there from the official address and its MD5 verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import TopoatError
from .archive import OFFICIAL_MD5, Published, locate, read_tar_members
from .base import ImageDataset
from .registry import register_dataset

DEFAULT_ROOT = Path("data")
IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    name: str
    title: str
    url: str
    md5: str  # as published on https://www.cs.toronto.edu/~kriz/cifar.html
    archive: str
    folder: str  # the archive's top folder
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int
    label_index: int  # which label byte is the class (CIFAR-100: 1, the fine label)
    num_classes: int
    names_file: str
    n_train: int
    n_test: int
    # Per-channel statistics of the training images, the values the literature normalises with.
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + IMAGE_BYTES

    @property
    def members(self) -> tuple[str, ...]:
        return self.train_files + self.test_files + (self.names_file,)

    @property
    def published(self) -> Published:
        return Published(self.title, self.archive, self.folder, self.train_files[0], self.url, self.md5)


CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    md5=OFFICIAL_MD5["cifar-10-binary.tar.gz"],
    archive="cifar-10-binary.tar.gz",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    label_bytes=1,
    label_index=0,
    num_classes=10,
    names_file="batches.meta.txt",
    n_train=50000,
    n_test=10000,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
    md5=OFFICIAL_MD5["cifar-100-binary.tar.gz"],
    archive="cifar-100-binary.tar.gz",
    folder="cifar-100-binary",
    train_files=("train.bin",),
    test_files=("test.bin",),
    label_bytes=2,
    label_index=1,
    num_classes=100,
    names_file="fine_label_names.txt",
    n_train=50000,
    n_test=10000,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)
SPECS = {s.name: s for s in (CIFAR10, CIFAR100)}


def _read_folder(folder: Path, spec: CifarSpec) -> dict[str, bytes]:
    found = {}
    for name in spec.members:
        p = folder / name
        if p.is_file():
            found[name] = p.read_bytes()
    return found


def _read_archive(archive: Path, spec: CifarSpec) -> dict[str, bytes]:
    # Members are found by base name under any top folder, so a re-packed archive works too.
    wanted = set(spec.members)
    raw = read_tar_members(archive, lambda name: name.rsplit("/", 1)[-1] in wanted)
    found: dict[str, bytes] = {}
    for name, data in raw.items():
        base = name.rsplit("/", 1)[-1]
        if base in found:
            raise TopoatError(f"{archive}: holds {base} more than once")
        found[base] = data
    return found


def read_members(spec: CifarSpec, root: str | None, allow_download: bool, progress: bool = True) -> dict[str, bytes]:
    """The raw bytes of every member the dataset needs, from wherever `root` points."""
    path, is_archive = locate(spec.published, root, DEFAULT_ROOT, allow_download, progress)
    return _read_archive(path, spec) if is_archive else _read_folder(path, spec)


def parse_records(raw: bytes, spec: CifarSpec, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images and (N,) int64 labels from one binary batch file."""
    if len(raw) == 0 or len(raw) % spec.record_bytes:
        raise TopoatError(
            f"{spec.title}: {source} is {len(raw)} bytes, not a whole number of "
            f"{spec.record_bytes}-byte records (truncated or not the binary version)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, spec.record_bytes)
    labels = records[:, spec.label_index].astype(np.int64)
    if labels.max() >= spec.num_classes:
        raise TopoatError(f"{spec.title}: {source} has label {int(labels.max())}, outside 0..{spec.num_classes - 1}")
    if spec.label_bytes == 2 and records[:, 0].max() >= 20:  # CIFAR-100's coarse labels: a cheap format check
        raise TopoatError(f"{spec.title}: {source} has coarse label {int(records[:, 0].max())}, outside 0..19")
    images = records[:, spec.label_bytes :].reshape(-1, 3, 32, 32)
    return images, labels


def _split(
    members: dict[str, bytes], files: tuple[str, ...], spec: CifarSpec, expected: int | None, split: str
) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for name in files:
        if name not in members:
            raise TopoatError(f"{spec.title}: {name} is missing; {spec.published.how_to_get}")
        x, y = parse_records(members[name], spec, name)
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if expected is not None and x.shape[0] != expected:
        raise TopoatError(f"{spec.title}: the {split} split holds {x.shape[0]} images, expected {expected}")
    return torch.from_numpy(x.copy()), torch.from_numpy(y)


def _class_names(members: dict[str, bytes], spec: CifarSpec) -> list[str] | None:
    raw = members.get(spec.names_file)
    if raw is None:
        return None
    names = [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(names) != spec.num_classes:
        raise TopoatError(f"{spec.title}: {spec.names_file} lists {len(names)} classes, expected {spec.num_classes}")
    return names


def load_cifar(
    name: str, root: str | None = None, download: bool = False, full_size: bool = True, progress: bool = True
) -> ImageDataset:
    """CIFAR-10 (`name="cifar10"`) or CIFAR-100 (`"cifar100"`); `full_size` insists on 50k/10k images."""
    spec = SPECS[name]
    members = read_members(spec, root, download, progress)
    x_train, y_train = _split(members, spec.train_files, spec, spec.n_train if full_size else None, "train")
    x_test, y_test = _split(members, spec.test_files, spec, spec.n_test if full_size else None, "test")
    return ImageDataset(
        spec.name,
        x_train,
        y_train,
        x_test,
        y_test,
        spec.num_classes,
        _class_names(members, spec),
        mean=list(spec.mean),
        std=list(spec.std),
    )


register_dataset("cifar10", lambda root, *, download=False: load_cifar("cifar10", root, download=download))
register_dataset("cifar100", lambda root, *, download=False: load_cifar("cifar100", root, download=download))
