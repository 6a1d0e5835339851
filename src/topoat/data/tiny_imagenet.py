"""Tiny ImageNet-200 from its official zip (or the extracted folder): 64x64 RGB, 200 classes.

Layout: `tiny-imagenet-200/wnids.txt` (the 200 class ids; their order is our class index order),
`words.txt` (id -> names), `train/<wnid>/images/*.JPEG` (500 per class) and `val/images/*.JPEG` with
`val/val_annotations.txt` (file -> wnid). The val split is our test split: the official test split
has no labels. Decoding 110k JPEGs with Pillow takes minutes, so the decoded arrays are cached in an
.npz beside the data (`tiny-imagenet-200.decoded.npz`), read back with `allow_pickle=False` and
rebuilt whenever the source archive or folder changes.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import TopoatError
from ..files import honour_umask
from ..runtime import bar_disabled
from .archive import OFFICIAL_MD5, Published, SafeZip, locate
from .base import ImageDataset, exact_channel_stats
from .cache import read_array_cache
from .registry import register_dataset

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ARCHIVE = "tiny-imagenet-200.zip"
MD5 = OFFICIAL_MD5[ARCHIVE]
FOLDER = "tiny-imagenet-200"
CACHE_SUFFIX = ".decoded.npz"
CACHE_VERSION = 1
DEFAULT_ROOT = Path("data")
SIZE = 64
N_CLASSES, N_TRAIN_PER_CLASS, N_VAL = 200, 500, 10000


def published() -> Published:
    """Tiny ImageNet's archive; URL and MD5 are read when called, so they can be pointed at a local copy."""
    return Published("Tiny ImageNet", ARCHIVE, FOLDER, "wnids.txt", URL, MD5)


HOW_TO_GET = published().how_to_get


class _FolderSource:
    def __init__(self, base: Path):
        self.base = base
        self.description = str(base)

    def read(self, rel: str) -> bytes:
        try:
            return (self.base / rel).read_bytes()
        except FileNotFoundError:
            raise TopoatError(f"Tiny ImageNet: {self.base / rel} is missing; {HOW_TO_GET}") from None

    def has(self, rel: str) -> bool:
        return (self.base / rel).is_file()

    def images_in(self, rel_dir: str) -> list[str]:
        folder = self.base / rel_dir
        if not folder.is_dir():
            return []
        return sorted(f"{rel_dir}/{p.name}" for p in folder.iterdir() if p.suffix.lower() == ".jpeg" and p.is_file())

    def fingerprint(self) -> str:
        # Cheap but enough to notice a different or re-extracted copy: file count and two mtimes.
        count = sum(len(files) for _, _, files in os.walk(self.base))
        stamps = [
            (self.base / f).stat().st_mtime_ns
            for f in ("wnids.txt", "val/val_annotations.txt")
            if (self.base / f).is_file()
        ]
        return f"folder:{count}:{stamps}"

    def close(self) -> None:
        pass


class _ZipSource:
    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        self.zip = SafeZip(path)
        # The folder holding wnids.txt is the dataset's top folder, whatever the zip calls it.
        tops = sorted((n for n in self.zip.files if n.rsplit("/", 1)[-1] == "wnids.txt"), key=len)
        if not tops:
            self.zip.close()
            raise TopoatError(f"{path}: no wnids.txt inside; is this the Tiny ImageNet zip?")
        self.prefix = tops[0][: -len("wnids.txt")]
        self.dirs: dict[str, list[str]] = {}
        for name in self.zip.files:
            if name.startswith(self.prefix) and name.lower().endswith(".jpeg"):
                rel = name[len(self.prefix) :]
                folder, _, _ = rel.rpartition("/")
                self.dirs.setdefault(folder, []).append(rel)

    def read(self, rel: str) -> bytes:
        if self.prefix + rel not in self.zip.files:
            raise TopoatError(f"Tiny ImageNet: {self.path} has no {self.prefix + rel}")
        return self.zip.read(self.prefix + rel)

    def has(self, rel: str) -> bool:
        return self.prefix + rel in self.zip.files

    def images_in(self, rel_dir: str) -> list[str]:
        return sorted(self.dirs.get(rel_dir, []))

    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"zip:{st.st_size}:{st.st_mtime_ns}"

    def close(self) -> None:
        self.zip.close()


def _open_source(root: str | None, allow_download: bool, progress: bool) -> tuple[_FolderSource | _ZipSource, Path]:
    """The data source and where its decoded cache lives."""
    path, is_archive = locate(published(), root, DEFAULT_ROOT, allow_download, progress)
    if is_archive:
        return _ZipSource(path), path.with_name(path.name.removesuffix(".zip") + CACHE_SUFFIX)
    return _FolderSource(path), path.with_name(path.name + CACHE_SUFFIX)


def _lines(raw: bytes) -> list[str]:
    return [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines() if line.strip()]


def decode_jpeg(raw: bytes, name: str) -> np.ndarray:
    """One JPEG as a (64, 64, 3) uint8 array; grey or CMYK images are converted to RGB."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            if img.size != (SIZE, SIZE):  # checked before decoding, so a huge image costs nothing
                raise TopoatError(f"Tiny ImageNet: {name} is {img.size[0]}x{img.size[1]}, expected {SIZE}x{SIZE}")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise TopoatError(f"Tiny ImageNet: cannot decode {name} ({e.__class__.__name__})") from None


def _decode_all(source: _FolderSource | _ZipSource, progress: bool) -> dict[str, np.ndarray]:
    wnids = _lines(source.read("wnids.txt"))
    if len(set(wnids)) != len(wnids) or not wnids:
        raise TopoatError(f"Tiny ImageNet: wnids.txt in {source.description} is empty or lists a class twice")
    index = {w: i for i, w in enumerate(wnids)}
    names = list(wnids)
    if source.has("words.txt"):
        words = {}
        for line in _lines(source.read("words.txt")):
            wnid, _, text = line.partition("\t")
            words[wnid.strip()] = text.split(",")[0].strip()
        names = [words.get(w) or w for w in wnids]
    train_files = [(f, i) for i, w in enumerate(wnids) for f in source.images_in(f"train/{w}/images")]
    val_files = []
    for line in _lines(source.read("val/val_annotations.txt")):
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2 or fields[1] not in index:
            raise TopoatError(f"Tiny ImageNet: bad line in val/val_annotations.txt: {line[:80]!r}")
        val_files.append((f"val/images/{fields[0]}", index[fields[1]]))
    if not train_files:
        raise TopoatError(f"Tiny ImageNet: no training images under train/<wnid>/images/ in {source.description}")
    arrays = {}
    bar = tqdm(
        total=len(train_files) + len(val_files),
        desc="decoding Tiny ImageNet (once; cached)",
        disable=bar_disabled(progress),
        leave=False,
    )
    with bar:
        for split, files in (("train", train_files), ("test", val_files)):
            x = np.empty((len(files), 3, SIZE, SIZE), dtype=np.uint8)  # NCHW, filled in place: no 1 GB copy
            for k, (rel, _) in enumerate(files):
                x[k] = decode_jpeg(source.read(rel), rel).transpose(2, 0, 1)
                bar.update(1)
            arrays[f"x_{split}"] = x
            arrays[f"y_{split}"] = np.array([label for _, label in files], dtype=np.int64)
    mean, std = exact_channel_stats(torch.from_numpy(arrays["x_train"]))
    arrays.update(wnids=np.array(wnids), names=np.array(names), mean=np.array(mean), std=np.array(std))
    return arrays


def _read_cache(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if there is no cache or it is stale, damaged or of another version."""
    keys = ("x_train", "y_train", "x_test", "y_test", "wnids", "names", "mean", "std", "source", "version")
    return read_array_cache(path, fingerprint, keys, CACHE_VERSION, _cache_is_sound)


def _cache_is_sound(a: dict[str, np.ndarray]) -> bool:
    """The shapes and types the decoder writes; a cache that differs (damaged, or another program's file
    under this name) is decoded again rather than trusted."""
    n_classes = a["wnids"].shape[0] if a["wnids"].ndim == 1 else 0
    images_ok = all(
        a[x].dtype == np.uint8 and a[x].ndim == 4 and a[x].shape[1:] == (3, SIZE, SIZE) for x in ("x_train", "x_test")
    )
    labels_ok = all(
        a[y].ndim == 1
        and a[y].dtype == np.int64
        and a[y].shape[0] == a[x].shape[0]
        and (a[y].size == 0 or a[y].min() >= 0 and a[y].max() < n_classes)
        for x, y in (("x_train", "y_train"), ("x_test", "y_test"))
    )
    stats_ok = all(
        a[k].shape == (3,) and np.issubdtype(a[k].dtype, np.floating) and np.isfinite(a[k]).all()
        for k in ("mean", "std")
    )
    return n_classes > 0 and a["names"].shape == (n_classes,) and images_ok and labels_ok and stats_ok


def _write_cache(path: Path, arrays: dict[str, np.ndarray], fingerprint: str) -> None:
    """Write atomically; a read-only data folder only costs the next run another decode."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        print(f"topoat: warning: cannot cache decoded Tiny ImageNet in {path.parent} ({e.strerror})", file=sys.stderr)
        return
    try:
        # Any: numpy's stub would match a ** mapping of arrays against savez's allow_pickle flag
        payload: dict[str, Any] = {**arrays, "source": np.array(fingerprint), "version": np.array(CACHE_VERSION)}
        honour_umask(fd)  # a shared data folder's cache is readable by all who read the data
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    except OSError as e:
        print(f"topoat: warning: cannot write {path} ({e.strerror})", file=sys.stderr)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def load_tiny_imagenet(
    root: str | None = None,
    download: bool = False,
    full_size: bool = True,
    progress: bool = True,
    cache: bool = True,
) -> ImageDataset:
    """Tiny ImageNet-200: train 100k images, test = the official val split (10k); `full_size` checks those sizes."""
    source, cache_path = _open_source(root, download, progress)
    try:
        fingerprint = source.fingerprint()
        arrays = _read_cache(cache_path, fingerprint) if cache else None
        if arrays is None:
            arrays = _decode_all(source, progress)
            if cache:
                _write_cache(cache_path, arrays, fingerprint)
    finally:
        source.close()
    wnids = [str(w) for w in arrays["wnids"]]
    y_train = torch.from_numpy(arrays["y_train"])
    if full_size:
        counts = torch.bincount(y_train, minlength=len(wnids))
        if len(wnids) != N_CLASSES or bool((counts != N_TRAIN_PER_CLASS).any()) or len(arrays["y_test"]) != N_VAL:
            raise TopoatError(
                f"Tiny ImageNet in {source.description}: expected {N_CLASSES} classes x "
                f"{N_TRAIN_PER_CLASS} training images and {N_VAL} val images, found {len(wnids)} "
                f"classes, {len(y_train)} training and {len(arrays['y_test'])} val images"
            )
    return ImageDataset(
        "tiny-imagenet",
        torch.from_numpy(arrays["x_train"]),
        y_train,
        torch.from_numpy(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"]),
        len(wnids),
        [str(n) for n in arrays["names"]],
        mean=[float(v) for v in arrays["mean"]],
        std=[float(v) for v in arrays["std"]],
    )


register_dataset("tiny-imagenet", lambda root, *, download=False: load_tiny_imagenet(root, download=download))
