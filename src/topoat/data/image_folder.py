"""Images in torchvision's ImageFolder layout (without torchvision): a folder, or a .tar(.gz)/.tgz/.zip of one.

Layout: `train/<class>/*.jpg|.jpeg|.png` and `test/<class>/...` (files further down a class folder
count too), directly in `data.root` or in the one folder it holds, as archives often wrap their
content. The class folders, sorted by name, are the labels 0..K-1; train and test must have the same
ones, and none may be empty. Other files, and names starting with "." or `__MACOSX`, are ignored.

Every image is decoded once with Pillow into uint8 (N, C, H, W) arrays. All must have one size. They
become RGB (C = 3: alpha dropped, palettes and CMYK converted) unless every image is greyscale (modes
1, L, LA), which gives C = 1; 16-bit and floating-point images are refused. Mean and std come from
every training image. The decoded arrays are cached in `<name>.decoded.npz` beside the source (the
folder, or the archive without its .tar.gz/.zip ending) or, where that folder cannot be written or is
marked read-only, in ~/.cache/topoat (or $XDG_CACHE_HOME/topoat). The cache records the source's
fingerprint (an archive's sha256; a folder's file names, sizes and modification times) and is decoded
again whenever the source changes; it is read back with `allow_pickle=False`.

Archives are read with `archive`'s checks (no absolute paths, `..`, links or special files; size
limits) and to their end, so a damaged .tar.gz fails on its gzip CRC even past the last image.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import TopoatError
from ..files import write_atomic
from ..runtime import bar_disabled
from .archive import SafeZip, file_digest, read_tar_tree
from .base import ImageDataset, exact_channel_stats
from .cache import cache_file, read_array_cache
from .registry import register_dataset

NAME = "image-folder"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TAR_SUFFIXES = (".tar", ".tgz", ".tbz2", ".txz", ".gz", ".bz2", ".xz")
ARCHIVE_ENDINGS = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")
SPLITS = ("train", "test")
GREY_MODES = ("1", "L", "LA")
CACHE_SUFFIX = ".decoded.npz"
CACHE_VERSION = 1
MAX_DECODED_BYTES = 32 << 30  # every image is held in memory: 32 GiB is far beyond any data set meant here
HOW = "data.root must be a folder, or a .tar.gz/.tgz/.zip of one, holding train/<class>/ and test/<class>/ images"


def _ignored(name: str) -> bool:
    """Hidden entries (.DS_Store, ._x.jpg, .ipynb_checkpoints) and macOS's __MACOSX, at any depth."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not _ignored(name)


# -- sources ----------------------------------------------------------------------------------------
class _FolderSource:
    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        self.files: list[str] = []
        self.dirs: set[str] = set()
        self._stamps: list[str] = []
        for top, dirnames, filenames in os.walk(path, onerror=self._walk_error):
            dirnames.sort()
            rel = Path(top).relative_to(path).as_posix()
            prefix = "" if rel == "." else rel + "/"
            for d in dirnames:
                self.dirs.add(prefix + d)
                self._stamps.append(f"d {prefix}{d}")
            for f in sorted(filenames):
                name = prefix + f
                try:
                    st = (path / name).stat()
                except OSError as e:
                    raise TopoatError(f"{NAME}: cannot read {path / name}: {e.strerror or e}") from None
                if stat.S_ISREG(st.st_mode):
                    self.files.append(name)
                    self._stamps.append(f"f {name} {st.st_size} {st.st_mtime_ns}")

    @staticmethod
    def _walk_error(e: OSError) -> None:
        raise TopoatError(f"{NAME}: cannot read {e.filename}: {e.strerror or e}")

    def fingerprint(self) -> str:
        digest = hashlib.sha256("\n".join(self._stamps).encode("utf-8", "surrogateescape")).hexdigest()
        return f"folder:{digest}"

    def where(self, name: str) -> str:
        return str(self.path / name)

    def read(self, name: str) -> bytes:
        try:
            return (self.path / name).read_bytes()
        except OSError as e:
            raise TopoatError(f"{NAME}: cannot read {self.path / name}: {e.strerror or e}") from None

    def close(self) -> None:
        pass


class _TarSource:
    """Every image's bytes, read in one checked pass over the archive (the JPEGs of CIFAR-10 are 55 MB)."""

    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        self.members, self.dirs = read_tar_tree(path, _is_image)
        self.files = sorted(self.members)

    def where(self, name: str) -> str:
        return f"{name} in {self.path}"

    def read(self, name: str) -> bytes:
        return self.members[name]

    def close(self) -> None:
        self.members = {}


class _ZipSource:
    def __init__(self, path: Path):
        self.path = path
        self.description = str(path)
        self.zip = SafeZip(path)  # checks every member's name, type and size
        self.files = sorted(self.zip.files)
        self.dirs = set(self.zip.dirs)
        for name in self.files:
            parts = name.split("/")[:-1]
            self.dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        self.dirs.discard("")

    def where(self, name: str) -> str:
        return f"{name} in {self.path}"

    def read(self, name: str) -> bytes:
        return self.zip.read(name)  # verifies the member's CRC

    def close(self) -> None:
        self.zip.close()


def _archive_stem(path: Path) -> str:
    lower = path.name.lower()
    for ending in ARCHIVE_ENDINGS:
        if lower.endswith(ending) and len(lower) > len(ending):
            return path.name[: -len(ending)]
    return path.stem


def _resolve(root: str | None) -> tuple[Path, bool]:
    """The source's path and whether it is an archive; one-line errors for anything else."""
    if not root:
        raise TopoatError(f"the {NAME} dataset needs data.root (or --data-root): {HOW}")
    path = Path(root).expanduser()
    if path.is_dir():
        return path, False
    if path.is_file():
        if path.suffix.lower() == ".zip" or path.suffix.lower() in TAR_SUFFIXES or zipfile.is_zipfile(path):
            return path, True
        raise TopoatError(f"{NAME}: {path} is neither a folder nor a .tar.gz/.tgz/.zip archive")
    if path.exists():
        raise TopoatError(f"{NAME}: {path} is neither a file nor a folder")
    raise TopoatError(f"{NAME}: {path} not found; {HOW}")


def _archive_fingerprint(path: Path) -> str:
    try:
        return f"sha256:{file_digest(path, 'sha256')}"
    except OSError as e:
        raise TopoatError(f"{NAME}: cannot read {path}: {e.strerror or e}") from None


def _open_archive(path: Path) -> _ZipSource | _TarSource:
    if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
        return _ZipSource(path)
    return _TarSource(path)


# -- layout -----------------------------------------------------------------------------------------
def _layout(source: _FolderSource | _TarSource | _ZipSource) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """The class names, and per split the (file, label) pairs in order: by class, then by path."""
    dirs = {d for d in source.dirs if not _ignored(d)}
    prefix = _splits_prefix(source, dirs)
    names = _class_names(source, dirs, prefix)
    return names, {split: _split_files(source, f"{prefix}{split}/", names) for split in SPLITS}


def _splits_prefix(source: _FolderSource | _TarSource | _ZipSource, dirs: set[str]) -> str:
    """Where train/ and test/ are: at the top ("") or inside the one top folder ("name/")."""
    tops = sorted(d for d in dirs if "/" not in d)
    if "train" in dirs or "test" in dirs:
        prefix = ""
    elif len(tops) == 1 and ({f"{tops[0]}/train", f"{tops[0]}/test"} & dirs):
        prefix = tops[0] + "/"
    else:
        raise TopoatError(f"{NAME}: {source.description} has no train/ and test/ folders (nor one folder holding them)")
    for split in SPLITS:
        if prefix + split not in dirs:
            where = f"{source.description}/{prefix}" if prefix else source.description
            raise TopoatError(f"{NAME}: {where} has no {split}/ folder (need train/<class>/ and test/<class>/)")
    return prefix


def _class_names(source: _FolderSource | _TarSource | _ZipSource, dirs: set[str], prefix: str) -> list[str]:
    """The class folders, the same in train/ and test/, sorted."""
    classes: dict[str, list[str]] = {}
    for split in SPLITS:
        top = f"{prefix}{split}/"
        classes[split] = sorted(d[len(top) :] for d in dirs if d.startswith(top) and "/" not in d[len(top) :])
        if not classes[split]:
            raise TopoatError(f"{NAME}: {source.description}: {prefix}{split}/ holds no class folders")
    if classes["train"] != classes["test"]:
        only_train = sorted(set(classes["train"]) - set(classes["test"]))
        only_test = sorted(set(classes["test"]) - set(classes["train"]))
        parts = [f"only in train/: {', '.join(only_train)}"] if only_train else []
        parts += [f"only in test/: {', '.join(only_test)}"] if only_test else []
        raise TopoatError(
            f"{NAME}: {source.description}: train/ and test/ must have the same class folders ({'; '.join(parts)})"
        )
    return classes["train"]


def _split_files(source: _FolderSource | _TarSource | _ZipSource, top: str, names: list[str]) -> list[tuple[str, int]]:
    """The (file, label) pairs of the images under `top` (a split's folder), every class holding some."""
    index = {c: i for i, c in enumerate(names)}
    pairs = []
    for f in source.files:
        cls, sep, _ = f[len(top) :].partition("/")
        if f.startswith(top) and _is_image(f) and sep and cls in index:
            pairs.append((f, index[cls]))
    pairs.sort(key=lambda p: (p[1], p[0]))
    counts = np.bincount([label for _, label in pairs], minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise TopoatError(
            f"{NAME}: {source.description}: {top}{empty[0]}/ holds no "
            f"{', '.join(IMAGE_SUFFIXES)} images" + (f" (nor do {len(empty) - 1} more)" if len(empty) > 1 else "")
        )
    return pairs


# -- decoding ---------------------------------------------------------------------------------------
def decode_image(raw: bytes, name: str, size: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """One image as an (H, W, 3) uint8 RGB array, and whether it was greyscale (mode 1, L or LA).

    `size` (width, height), when given, is checked from the header, before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as img:
            if size is not None and img.size != size:
                raise TopoatError(
                    f"{NAME}: {name} is {img.size[0]}x{img.size[1]}, but the first image is {size[0]}x{size[1]}; "
                    "all images must have one size"
                )
            if img.mode.startswith("I") or img.mode.startswith("F"):
                raise TopoatError(f"{NAME}: {name} has Pillow mode {img.mode} (16-bit or float); use 8-bit images")
            img.load()
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8), img.mode in GREY_MODES
    except TopoatError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise TopoatError(f"{NAME}: cannot decode {name} ({e.__class__.__name__}); the file is corrupt") from None


def _decode_all(source: _FolderSource | _TarSource | _ZipSource, progress: bool) -> dict[str, np.ndarray]:
    names, files = _layout(source)
    total = sum(len(pairs) for pairs in files.values())
    arrays: dict[str, np.ndarray] = {}
    size: tuple[int, int] | None = None
    all_grey = True
    bar = tqdm(
        total=total,
        desc=f"decoding {Path(source.description).name} (once; cached)",
        disable=bar_disabled(progress),
        leave=False,
    )
    with bar:
        for split in SPLITS:
            pairs = files[split]
            x: np.ndarray | None = None
            for k, (name, _) in enumerate(pairs):
                image, grey = decode_image(source.read(name), source.where(name), size)
                all_grey = all_grey and grey
                if size is None:
                    height, width = image.shape[:2]
                    size = (width, height)
                    needed = total * 3 * height * width
                    if needed > MAX_DECODED_BYTES:
                        raise TopoatError(
                            f"{NAME}: {total} images of {width}x{height} need {needed / 2**30:.0f} GiB decoded; "
                            f"the data set is held in memory (limit {MAX_DECODED_BYTES >> 30} GiB)"
                        )
                if x is None:
                    x = np.empty((len(pairs), 3, image.shape[0], image.shape[1]), dtype=np.uint8)
                x[k] = image.transpose(2, 0, 1)  # NCHW, filled in place
                bar.update(1)
            assert x is not None  # _layout refuses an empty split
            arrays[f"x_{split}"] = x
            arrays[f"y_{split}"] = np.array([label for _, label in pairs], dtype=np.int64)
    if all_grey:  # every image was greyscale: its three RGB channels are equal, keep one
        for split in SPLITS:
            arrays[f"x_{split}"] = np.ascontiguousarray(arrays[f"x_{split}"][:, :1])
    mean, std = exact_channel_stats(torch.from_numpy(arrays["x_train"]))
    arrays.update(classes=np.array(names, dtype=str), mean=np.array(mean), std=np.array(std))
    return arrays


# -- cache ------------------------------------------------------------------------------------------
def cache_path(path: Path, is_archive: bool) -> Path:
    """Where the decoded arrays of the source at `path` are cached (see the module docstring)."""
    return cache_file(path, _archive_stem(path) if is_archive else path.resolve().name, CACHE_SUFFIX)


CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test", "classes", "mean", "std", "source", "version")


def _read_cache(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if there is no cache or it is stale, damaged or of another version."""
    return read_array_cache(path, fingerprint, CACHE_KEYS, CACHE_VERSION, _cache_is_sound)


def _cache_is_sound(a: dict[str, np.ndarray]) -> bool:
    """The shapes and types the decoder writes; a cache that differs is decoded again rather than trusted."""
    n_classes = a["classes"].shape[0] if a["classes"].ndim == 1 and a["classes"].dtype.kind == "U" else 0
    x_train, x_test = a["x_train"], a["x_test"]
    images_ok = all(x.dtype == np.uint8 and x.ndim == 4 and x.shape[1] in (1, 3) for x in (x_train, x_test))
    images_ok = images_ok and x_train.shape[1:] == x_test.shape[1:] and min(x_train.shape[2:], default=0) > 0
    labels_ok = all(
        a[y].ndim == 1
        and a[y].dtype == np.int64
        and a[y].shape[0] == a[x].shape[0] > 0
        and a[y].min() >= 0
        and a[y].max() < n_classes
        for x, y in (("x_train", "y_train"), ("x_test", "y_test"))
    )
    stats_ok = images_ok and all(
        a[k].shape == (x_train.shape[1],) and np.issubdtype(a[k].dtype, np.floating) and np.isfinite(a[k]).all()
        for k in ("mean", "std")
    )
    return n_classes > 0 and images_ok and labels_ok and stats_ok


def _write_cache(path: Path, arrays: dict[str, np.ndarray], fingerprint: str) -> None:
    """Write atomically; a cache that cannot be written only costs the next run another decode."""
    # Any: numpy's stub would match a ** mapping of arrays against savez's allow_pickle flag
    payload: dict[str, Any] = {**arrays, "source": np.array(fingerprint), "version": np.array(CACHE_VERSION)}
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    try:
        write_atomic(path, buffer.getbuffer())
    except TopoatError as e:
        print(f"topoat: warning: {e}; the images will be decoded again next time", file=sys.stderr)


# -- the loader -------------------------------------------------------------------------------------
def load_image_folder(root: str | None, progress: bool = True, cache: bool = True) -> ImageDataset:
    """The data set in the folder or archive `root` (see the module docstring), named "image-folder"
    (`data.name` in a config renames it) with its class folders as class names."""
    path, is_archive = _resolve(root)
    folder = None if is_archive else _FolderSource(path)  # its listing is the fingerprint, and what is decoded
    fingerprint = folder.fingerprint() if folder is not None else _archive_fingerprint(path)
    where = cache_path(path, is_archive)
    arrays = _read_cache(where, fingerprint) if cache else None
    if arrays is None:
        source = folder if folder is not None else _open_archive(path)
        try:
            arrays = _decode_all(source, progress)
        finally:
            source.close()
        if cache:
            _write_cache(where, arrays, fingerprint)
    classes = [str(c) for c in arrays["classes"]]
    return ImageDataset(
        NAME,
        torch.from_numpy(arrays["x_train"]),
        torch.from_numpy(arrays["y_train"]),
        torch.from_numpy(arrays["x_test"]),
        torch.from_numpy(arrays["y_test"]),
        len(classes),
        classes,
        mean=[float(v) for v in arrays["mean"]],
        std=[float(v) for v in arrays["std"]],
    )


register_dataset("image-folder", lambda root: load_image_folder(root))
