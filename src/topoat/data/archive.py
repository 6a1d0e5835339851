"""Downloads with checksum verification, finding a published data set's archive or folder, and reading
tar/zip archives without trusting them (extract.py extracts them).

A dataset archive comes from the network or from a user's disk, so every member is checked before a
byte of it is used: no absolute paths, no `..` components, no links or device files, and no member
(nor total) larger than a limit, so a crafted archive can neither write outside its folder nor fill
the disk. Corrupt or truncated archives end in a one-line `TopoatError`: every tar stream is read to its
end, so gzip's CRC (bzip2's, xz's check) covers every byte, and zip members are CRC-checked as they are
read. An archive bearing an official archive's name (OFFICIAL_MD5) must also match its published MD5.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, cast

from tqdm.auto import tqdm

from ..errors import TopoatError
from ..files import honour_umask
from ..runtime import bar_disabled

MAX_MEMBER_BYTES = 1 << 30  # 1 GiB: the largest real member (CIFAR-100 train.bin) is 154 MB
MAX_TOTAL_BYTES = 8 << 30  # 8 GiB: the largest real archive (Tiny ImageNet) unpacks to about 0.5 GB
CHUNK = 1 << 20
# The published MD5 of each official archive (as torchvision and RobustBench check them), by file name: an
# archive called so is checked whole before it is read, whatever the part of it a loader needs.
OFFICIAL_MD5 = {
    "cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530",
    "cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8",
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "tiny-imagenet-200.zip": "90528d7ca1a48142e341f4ef8d21d0de",
}
# Errors a damaged gzip/tar/zip stream raises somewhere in the standard library.
CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)
ARCHIVE_SUFFIXES = (".gz", ".tgz", ".zip")  # a data.root ending so names an archive, not a folder to download into


# -- checksums and downloads ------------------------------------------------------------------------
def file_digest(path: str | Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | Path, *, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise TopoatError unless `path` has the given digest(s); with neither given, check nothing."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        got = file_digest(path, algorithm)
        if got != expected.lower():
            raise TopoatError(
                f"{path}: {algorithm} checksum mismatch (got {got}, expected {expected.lower()}); "
                "the file is corrupt, truncated or not the official one"
            )


def verify_official(path: str | Path) -> None:
    """If `path` bears the name of an official archive, it must be that archive, byte for byte."""
    expected = OFFICIAL_MD5.get(Path(path).name)
    if expected is not None and Path(path).is_file():
        try:
            verify_checksum(path, md5=expected)
        except OSError as e:
            raise TopoatError(f"cannot read {path}: {e.strerror or e}") from None


def download(
    url: str,
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` into file `dest` and verify its checksum.

    The bytes go to a temporary file next to `dest` and are renamed into place only once the
    checksum matches, so `dest` is never a partial or wrong file; on a mismatch nothing is left behind.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TopoatError(f"cannot create {dest.parent}: {e.strerror or e}") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    honour_umask(fd)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (http/https/file)
                    total = response.headers.get("Content-Length")
                    bar = tqdm(
                        total=int(total) if total and total.isdigit() else None,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=f"downloading {dest.name}",
                        disable=bar_disabled(progress),
                        leave=False,
                    )
                    with bar:
                        for chunk in iter(lambda: response.read(CHUNK), b""):
                            out.write(chunk)
                            bar.update(len(chunk))
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
                raise TopoatError(
                    f"cannot download {url}: {reason}; download it yourself and point data.root at the file"
                ) from None
        verify_checksum(tmp, md5=md5, sha256=sha256)
        os.replace(tmp, dest)
    except BaseException:
        _remove_quietly(tmp)
        raise
    return dest


def _remove_quietly(path: str | Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


# -- member checks ----------------------------------------------------------------------------------
def safe_member_name(name: str, archive: str | Path) -> str:
    """The member's relative POSIX path, or TopoatError if it could land outside the target folder."""
    if not name or "\x00" in name:
        raise TopoatError(f"{archive}: refusing a member with an empty or NUL-containing name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise TopoatError(f"{archive}: refusing member {name!r}: absolute path")
    parts = [p for p in PurePosixPath(unified).parts if p != "."]
    if ".." in parts:
        raise TopoatError(f"{archive}: refusing member {name!r}: '..' in its path")
    return "/".join(parts)


def _check_size(
    name: str, size: int, total: int, archive: str | Path, max_member_bytes: int, max_total_bytes: int
) -> None:
    if size > max_member_bytes:
        raise TopoatError(
            f"{archive}: refusing member {name!r}: {size} bytes exceeds the {max_member_bytes}-byte limit per member"
        )
    if total > max_total_bytes:
        raise TopoatError(f"{archive}: refusing archive: members add up to more than {max_total_bytes} bytes")


def _read_limited(f: IO[bytes], name: str, archive: str | Path, limit: int) -> bytes:
    """Read a member's bytes, refusing more than `limit` whatever its header claimed."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise TopoatError(f"{archive}: refusing member {name!r}: it unpacks to more than {limit} bytes")
    return data


def _corrupt(archive: str | Path, e: BaseException) -> TopoatError:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
    return TopoatError(f"{archive} is corrupt or truncated ({detail}); delete it and download it again")


# -- tar --------------------------------------------------------------------------------------------
def _checked_tar_members(
    tar: tarfile.TarFile, archive: str | Path, max_member_bytes: int, max_total_bytes: int
) -> Iterator[tuple[tarfile.TarInfo, str]]:
    total = 0
    for info in tar:
        name = safe_member_name(info.name, archive)
        if not (info.isreg() or info.isdir()):
            kind = "link" if info.issym() or info.islnk() else "special file"
            raise TopoatError(f"{archive}: refusing member {info.name!r}: it is a {kind}")
        total += info.size
        _check_size(info.name, info.size, total, archive, max_member_bytes, max_total_bytes)
        yield info, name


def read_tar_members(
    archive: str | Path,
    wanted: Callable[[str], bool],
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> dict[str, bytes]:
    """Read the regular-file members whose checked name satisfies `wanted`, in one streaming pass.

    Every member is checked, wanted or not: an archive with one hostile entry is refused whole. The
    stream is read to its end, so a compressed archive's own checksum (gzip's CRC) is verified too.
    """
    return read_tar_tree(archive, wanted, max_member_bytes=max_member_bytes, max_total_bytes=max_total_bytes)[0]


def read_tar_tree(
    archive: str | Path,
    wanted: Callable[[str], bool],
    *,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> tuple[dict[str, bytes], set[str]]:
    """`read_tar_members`'s files, and the name of every folder the archive holds: those it lists
    (an empty one included) and those its files imply."""
    found: dict[str, bytes] = {}
    folders: set[str] = set()
    verify_official(archive)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for info, name in _checked_tar_members(tar, archive, max_member_bytes, max_total_bytes):
                if info.isdir():
                    folders.add(name)
                    continue
                folders.update(_parents(name))
                if wanted(name):
                    f = tar.extractfile(info)
                    assert f is not None  # a regular member always has a file object
                    found[name] = _read_limited(f, info.name, archive, info.size)
                    if len(found[name]) != info.size:
                        raise EOFError(f"member {info.name} is cut short")
            _read_to_end(tar)
    except FileNotFoundError:
        raise TopoatError(f"archive not found: {archive}") from None
    except TopoatError:
        raise
    except CORRUPT as e:
        raise _corrupt(archive, e) from None
    folders.discard("")
    return found, folders


def _read_to_end(tar: tarfile.TarFile) -> None:
    """tar stops at its end-of-archive blocks; what follows (padding, then gzip's CRC and length, or
    bzip2's and xz's checks) is only verified when read, so a flipped byte in a member would pass."""
    stream = cast(IO[bytes], tar.fileobj)
    while stream.read(CHUNK):
        pass


def _parents(name: str) -> list[str]:
    """The folders above a member: "a/b/c.png" -> ["a", "a/b"]."""
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


# -- zip --------------------------------------------------------------------------------------------
class SafeZip:
    """A zip archive whose member list has been checked; `read` refuses more bytes than declared."""

    def __init__(
        self, archive: str | Path, *, max_member_bytes: int = MAX_MEMBER_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES
    ):
        self.archive = Path(archive)
        self.max_member_bytes = max_member_bytes
        verify_official(self.archive)  # each member's CRC is checked as it is read; the MD5 covers the rest
        try:
            self.zip = zipfile.ZipFile(self.archive)
        except FileNotFoundError:
            raise TopoatError(f"archive not found: {archive}") from None
        except CORRUPT as e:
            raise _corrupt(archive, e) from None
        self.files: dict[str, zipfile.ZipInfo] = {}
        self.dirs: set[str] = set()
        total = 0
        try:
            for info in self.zip.infolist():
                name = safe_member_name(info.filename, archive)
                # Unix file type bits, when the zip recorded them (many writers leave them 0).
                file_type = stat.S_IFMT(info.external_attr >> 16)
                if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
                    kind = "link" if file_type == stat.S_IFLNK else "special file"
                    raise TopoatError(f"{archive}: refusing member {info.filename!r}: it is a {kind}")
                total += info.file_size
                _check_size(info.filename, info.file_size, total, archive, max_member_bytes, max_total_bytes)
                if info.is_dir():
                    self.dirs.add(name)
                elif name:
                    self.files[name] = info
        except BaseException:
            self.zip.close()
            raise

    def read(self, name: str) -> bytes:
        info = self.files.get(name)
        if info is None:
            raise TopoatError(f"{self.archive}: member {name!r} is missing")
        try:
            with self.zip.open(info) as f:
                data = _read_limited(f, info.filename, self.archive, info.file_size)
        except TopoatError:
            raise
        except CORRUPT as e:
            raise _corrupt(self.archive, e) from None
        if len(data) != info.file_size:
            raise _corrupt(self.archive, EOFError(f"member {info.filename} is cut short"))
        return data

    def close(self) -> None:
        self.zip.close()

    def __enter__(self) -> SafeZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- finding a published data set -------------------------------------------------------------------
@dataclass(frozen=True)
class Published:
    """A data set published as one archive: its file name, download address and MD5, the folder it
    extracts to, and a file that marks that folder (so an extracted copy is found too)."""

    title: str
    archive: str
    folder: str
    marker: str
    url: str
    md5: str

    @property
    def how_to_get(self) -> str:
        return (
            f"point data.root at {self.archive} (from {self.url}), at the extracted {self.folder}/ folder "
            f"or at a folder holding either, or set data.download: true to download it"
        )


def locate(
    published: Published, root: str | None, default: Path, allow_download: bool, progress: bool = True
) -> tuple[Path, bool]:
    """Where `published` is under `root` (default: `default`), and whether that is its archive (else its
    extracted folder): `root` itself, an extracted folder at or in it, or the archive in it; else, if
    allowed, the archive downloaded into it and checked against its MD5."""
    path = Path(root).expanduser() if root else default
    if path.is_file():
        return path, True
    if path.is_dir():
        for folder in (path, path / published.folder):
            if (folder / published.marker).is_file():
                return folder, False
        if (path / published.archive).is_file():
            return path / published.archive, True
    elif path.exists():
        raise TopoatError(f"{published.title}: {path} is neither a file nor a folder")
    if not allow_download:
        raise TopoatError(f"{published.title} not found in {path}; {published.how_to_get}")
    if path.suffix in ARCHIVE_SUFFIXES:
        raise TopoatError(f"{published.title}: archive {path} not found (to download, set data.root to a folder)")
    return download(published.url, path / published.archive, md5=published.md5, progress=progress), True
