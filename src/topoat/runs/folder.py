"""A run's folder: the one place that knows what its files are called and how each is written.

    config.yaml      the resolved config the run was started with
    metrics.jsonl    one JSON line per epoch (losses, validation accuracy, topology metrics, seconds)
    last.pt          the resumable checkpoint (model, optimiser, RNG, position in the epoch)
    best.pt          the weights with the best validation robust accuracy
    results.json     the test-set evaluation (the contract is in results.py)
    provenance.json  one entry per start of the run: versions, commit, device, command line
    tensorboard/     event files, when runtime.tensorboard is on
    .lock            held (flock) by the one process training or evaluating the run

Every file is written whole or not at all (files.write_atomic). A study folder holds run folders and its
own results.json and study.yaml.

The lock is an advisory `fcntl.flock` on `.lock`: the kernel releases it when its process exits, however
it exits (a crash or SIGKILL included), so a lock is never stale and the file is never removed by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import TopoatError
from ..files import is_temp_name, write_atomic, write_text_atomic

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
RESULTS = "results.json"
PROVENANCE = "provenance.json"
BOARD = "tensorboard"
STUDY_FILE = "study.yaml"
LOCK = ".lock"

# What a run writes before its first last.pt: a folder holding only these never completed an epoch
# (it failed or was killed in epoch 1), so starting it again loses nothing.
RUN_LEFTOVERS = frozenset({CONFIG, METRICS, BEST, PROVENANCE})
# A study folder holding only its copy of the study file started nothing: it can be started again.
STUDY_LEFTOVERS = frozenset({STUDY_FILE})
# What a run writes before it loads its data: a folder holding only this trained nothing.
UNSTARTED = frozenset({CONFIG})


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    config = property(lambda self: self.root / CONFIG)
    metrics = property(lambda self: self.root / METRICS)
    last = property(lambda self: self.root / LAST)
    best = property(lambda self: self.root / BEST)
    results = property(lambda self: self.root / RESULTS)
    provenance = property(lambda self: self.root / PROVENANCE)
    board = property(lambda self: self.root / BOARD)

    def run(self, name: str) -> RunFolder:
        """The folder of run `name` inside this (study) folder."""
        return RunFolder(self.root / name)

    # -- starting and resuming ---------------------------------------------------------------------
    def restartable(self, leftovers: frozenset[str] = RUN_LEFTOVERS) -> bool:
        """The folder holds nothing but `leftovers` and temporary files of an interrupted write."""
        return self.root.is_dir() and all(
            p.is_file() and (p.name in leftovers or is_temp_name(p.name)) for p in self._entries()
        )

    def _entries(self) -> list[Path]:
        """What the folder holds, its lock file aside (a lock says who works in it, not what it holds)."""
        return [p for p in self.root.iterdir() if p.name != LOCK]

    def prepare(self, resume: bool, create: bool = True, leftovers: frozenset[str] = RUN_LEFTOVERS) -> None:
        """Check the folder can take a new run (empty, or only `leftovers`) or be resumed (it has last.pt);
        with `create`, clear the leftovers and make it."""
        out = self.root
        if resume:
            if not self.last.is_file():
                raise TopoatError(f"nothing to resume in {out} (no {LAST})")
            return
        if out.exists() and (not out.is_dir() or self._entries()):
            if not self.restartable(leftovers):
                raise TopoatError(
                    f"output folder {out} already exists and is not empty; pass --resume to "
                    "continue that run, or choose another --out"
                )
            if create:
                self._clear(leftovers)
        if not create:
            return
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TopoatError(f"cannot create output folder {out}: {e.strerror}") from None

    def _clear(self, leftovers: frozenset[str]) -> None:
        for p in self._entries():
            if p.name in leftovers or is_temp_name(p.name):
                try:
                    p.unlink()
                except OSError as e:
                    raise TopoatError(f"cannot remove {p} to start again: {e.strerror or e}") from None

    # -- one process at a time ---------------------------------------------------------------------
    @contextmanager
    def locked(self, role: str = "run folder") -> Iterator[None]:
        """Hold the folder's lock while the block runs; a second process on the same folder is refused in
        one line. The folder is made if it is missing, and removed again if the block fails and leaves
        it holding nothing but files it never got further than (`restartable`) and this process made it."""
        made = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise TopoatError(f"cannot create {role} {self.root}: {e.strerror or e}") from None
        ok = False
        try:
            if not _try_lock(fd):
                raise TopoatError(
                    f"{role} {self.root} is in use by another topoat process (it holds {LOCK}); "
                    "wait for it to finish, or choose another folder"
                )
            yield
            ok = True
        finally:
            os.close(fd)  # releases the lock
            if not ok and made and self.restartable(UNSTARTED):
                self._remove_unstarted()

    def in_use(self) -> bool:
        """Another process holds the folder's lock (it is training or evaluating the run now)."""
        try:
            fd = os.open(self.root / LOCK, os.O_RDONLY)
        except OSError:
            return False  # no lock file: nobody ever locked it
        try:
            return not _try_lock(fd)
        finally:
            os.close(fd)

    def _remove_unstarted(self) -> None:
        """Take away a folder this process made for a run that failed before it trained anything."""
        try:
            for p in self.root.iterdir():
                p.unlink()
            self.root.rmdir()
        except OSError:
            pass  # a leftover folder can still be rerun into; failing to tidy it is no reason to fail

    # -- metrics.jsonl -----------------------------------------------------------------------------
    def append_metrics(self, record: dict) -> None:
        """Append one line, atomically: the file is rewritten whole (a few kB), so a kill or a full disk
        never leaves a torn line."""
        path = self.metrics
        try:
            old = path.read_bytes() if path.exists() else b""
        except OSError as e:
            raise TopoatError(f"cannot read {path}: {e.strerror or e}") from None
        write_atomic(path, old + (json.dumps(record) + "\n").encode())

    def repair_metrics(self, epochs_done: int, last_record: dict | None) -> None:
        """Make metrics.jsonl hold exactly the lines of the epochs the checkpoint covers, one per epoch:
        later lines go (those epochs are trained again), so do a torn last line (a kill mid-write by an
        older topoat, or a full disk) and a repeated line (the last of an epoch's lines is kept), and the
        checkpoint's own last line comes back if it is missing."""
        path = self.metrics
        lines = [line for line in (path.read_text() if path.exists() else "").splitlines() if line.strip()]
        by_epoch: dict[int, str] = {}  # one line per epoch, the last written (a line may appear twice)
        for i, line in enumerate(lines):
            epoch = _metrics_epoch(line)
            if epoch is None and i < len(lines) - 1:
                raise TopoatError(f"{path}: line {i + 1} is not a metrics record; remove it to resume")
            if epoch is not None and epoch <= epochs_done:
                by_epoch[epoch] = line
        if last_record is not None and last_record.get("epoch") == epochs_done and epochs_done not in by_epoch:
            by_epoch[epochs_done] = json.dumps(last_record)
        keep = [by_epoch[epoch] for epoch in sorted(by_epoch)]
        if keep != lines:
            write_text_atomic(path, "".join(line + "\n" for line in keep))

    # -- provenance.json ---------------------------------------------------------------------------
    def record_start(self, entry: dict, resumed: bool) -> None:
        """Add one entry per start of the run (a resume may be on another machine or code)."""
        starts: list[Any] = []
        if resumed and self.provenance.is_file():
            try:
                starts = list(json.loads(self.provenance.read_text()).get("starts", []))
            except (OSError, ValueError, AttributeError):
                starts = []  # a damaged record is replaced, never a reason to stop training
        starts.append(entry)
        write_json_atomic({"starts": starts}, self.provenance, indent=1)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one process per folder is then the user's to keep
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True  # a file system without flock (some network mounts): no lock rather than no run
    return True


def _metrics_epoch(line: str) -> int | None:
    try:
        return int(json.loads(line)["epoch"])
    except (ValueError, KeyError, TypeError, IndexError):  # json's errors are ValueErrors
        return None


def write_json_atomic(obj: Any, path: str | Path, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TopoatError(f"file not found: {path}") from None
    except OSError as e:
        raise TopoatError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError:  # not JSON, or not text at all
        raise TopoatError(f"{path} is not valid JSON") from None
