"""Extracting a tar/zip archive to disk, all or nothing, with every member checked as archive.py checks
those it reads (no absolute paths, no `..`, no links or device files, no member nor total over a limit)."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import IO

from ..errors import TopoatError
from ..files import honour_umask
from .archive import (
    CHUNK,
    CORRUPT,
    MAX_MEMBER_BYTES,
    MAX_TOTAL_BYTES,
    SafeZip,
    _checked_tar_members,
    _corrupt,
    _read_to_end,
    verify_official,
)


def safe_extract(
    archive: str | Path,
    dest: str | Path,
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Path:
    """Extract a .tar(.gz/.bz2/.xz) or .zip into the new folder `dest`, all or nothing.

    Members are checked (see the module docstring) and written into a temporary folder beside
    `dest`, which is renamed to `dest` only when everything was extracted: an interrupted or refused
    extraction leaves no half-filled `dest`. File modes from the archive are not applied.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise TopoatError(f"cannot extract {archive}: {dest} already exists")
    if not archive.is_file():
        raise TopoatError(f"archive not found: {archive}")
    verify_official(archive)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        honour_umask(tmp)
    except OSError as e:
        raise TopoatError(f"cannot create {dest.parent}: {e.strerror or e}") from None
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, tmp, max_member_bytes, max_total_bytes)
        else:
            _extract_tar(archive, tmp, max_member_bytes, max_total_bytes)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _write_member(root: Path, name: str, source: IO[bytes], size: int, archive: str | Path, limit: int) -> None:
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "wb") as out:
        for chunk in iter(lambda: source.read(CHUNK), b""):
            written += len(chunk)
            if written > min(size, limit):
                raise TopoatError(f"{archive}: refusing member {name!r}: it unpacks to more bytes than declared")
            out.write(chunk)
    if written != size:
        raise _corrupt(archive, EOFError(f"member {name} is cut short"))


def _extract_tar(archive: Path, root: Path, max_member_bytes: int, max_total_bytes: int) -> None:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for info, name in _checked_tar_members(tar, archive, max_member_bytes, max_total_bytes):
                if not name:
                    continue
                if info.isdir():
                    (root / name).mkdir(parents=True, exist_ok=True)
                else:
                    source = tar.extractfile(info)
                    assert source is not None  # a regular member (links and special files were refused)
                    _write_member(root, name, source, info.size, archive, max_member_bytes)
            _read_to_end(tar)
    except TopoatError:
        raise
    except CORRUPT as e:
        raise _corrupt(archive, e) from None


def _extract_zip(archive: Path, root: Path, max_member_bytes: int, max_total_bytes: int) -> None:
    with SafeZip(archive, max_member_bytes=max_member_bytes, max_total_bytes=max_total_bytes) as z:
        for name in sorted(z.dirs):
            if name:
                (root / name).mkdir(parents=True, exist_ok=True)
        for name, info in z.files.items():
            try:
                with z.zip.open(info) as f:
                    _write_member(root, name, f, info.file_size, archive, max_member_bytes)
            except TopoatError:
                raise
            except CORRUPT as e:
                raise _corrupt(archive, e) from None
