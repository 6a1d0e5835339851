"""The one way topoat writes a file: whole or not at all, and a failure is one line that names the file."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import TopoatError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEMP_SUFFIX = ".tmp"  # temporary files are ".NAME.XXXXXXXX.tmp" next to NAME


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set it and put it straight back
    os.umask(mask)
    return mask


# What open() gives a new file. Read once, at import: reading the umask sets it for a moment, which a file
# created meanwhile by another thread (a TensorBoard writer) must not see.
_UMASK = _umask()
_CREATE_MODE = 0o666 & ~_UMASK


def write_atomic(path: str | Path, data: bytes | bytearray | memoryview) -> None:
    """Write `data` to a temporary file in the same folder, fsync it, then rename it over `path`: a crash
    or a full disk leaves the old file (or none), never a half-written one, and no temporary file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            _write_all(fd, memoryview(data).cast("B"))
            honour_umask(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as e:
        raise TopoatError(f"cannot write {path}: {_cause(e)}") from None
    finally:
        if tmp is not None:  # any failure, a signal's exception included, takes the temporary file away
            _remove_quietly(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, text.encode())


def write_figure_atomic(fig: Figure, path: str | Path, **savefig_options: Any) -> Path:
    """A matplotlib figure drawn in memory, then written by `write_atomic`: a full disk leaves the previous
    picture (or none), never a truncated PNG."""
    import io

    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig_options)
    write_atomic(path, buffer.getbuffer())
    return path


def is_temp_name(name: str) -> bool:
    """A temporary file `write_atomic` may have left behind when the process was killed."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _write_all(fd: int, data: memoryview) -> None:
    while data:  # os.write may write less than asked (a signal, a nearly full disk)
        data = data[os.write(fd, data) :]


def honour_umask(target: int | str | Path) -> None:
    """mkstemp makes its file 0600 and mkdtemp its folder 0700; what they become is as readable as any new
    file or folder (0666 or 0777 less the umask). `target` is an open file's descriptor or a folder. A file
    system that cannot change modes (some network mounts) keeps theirs: a private file, not a failed write."""
    try:
        if isinstance(target, int):
            os.fchmod(target, _CREATE_MODE)
        else:
            os.chmod(target, _CREATE_MODE | (0o111 & ~_UMASK))
    except OSError:
        pass


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a folder, which is harmless."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def describe_os_error(e: OSError) -> str:
    """An OSError as the one line the CLI prints: the path it concerns, shortened when it is absurdly long
    (a 5,000-character --out), and why."""
    if e.filename is None:
        return _cause(e)
    name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else str(e.filename)
    if len(name) > 200:
        name = f"{name[:80]}...{name[-40:]} ({len(name)} characters)"
    return f"{name}: {_cause(e)}"


def _cause(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on device"
    if e.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return e.strerror or str(e)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def check_output_folder(flag: str, path: str | Path | None) -> None:
    """An output file whose folder does not exist fails before the work, not after it."""
    if path is not None and not Path(path).parent.is_dir():
        raise TopoatError(f"{flag} {path}: folder {Path(path).parent} does not exist")
