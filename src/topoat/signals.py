"""SIGINT and SIGTERM outside the training loop: they stop the command at once with one line naming the
stage it was in (the training loop installs its own handler, which saves a checkpoint first)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType
from typing import NoReturn

from .errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[int, FrameType | None], None]  # what signal.signal calls
_stages: list[tuple[str, str]] = []  # (when, hint) of the innermost stage last


@contextmanager
def stage(when: str, hint: str = "") -> Iterator[None]:
    """Name what the process is doing ("during the final evaluation") and how to continue after a signal."""
    _stages.append((when, hint))
    try:
        yield
    finally:
        _stages.pop()


def _raise(signum: int, _frame: FrameType | None) -> NoReturn:
    when, hint = _stages[-1] if _stages else ("", "")
    raise Interrupted(signum, when, hint)


def install(handler: Handler) -> dict:
    """SIGINT and SIGTERM go to `handler`; returns the handlers it replaced (none outside the main thread)."""
    previous = {}
    try:
        for sig in SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    return previous


def restore(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def handling_signals(handler: Handler) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` inside the block; the previous handlers come back after it."""
    previous = install(handler)
    try:
        yield
    finally:
        restore(previous)


def raise_on_signals() -> AbstractContextManager[None]:
    """SIGINT/SIGTERM raise `Interrupted` in the main thread (the default SIGTERM kills without a word)."""
    return handling_signals(_raise)


def exit_on_signals(when: str, hint: str = "") -> dict:
    """From now on SIGINT/SIGTERM end the process at once, with one line (`when`, `hint`) and status 128 +
    the signal. For where a command writes nothing: its start, inside imports (where an exception might be
    caught and lost), and its end, up to the interpreter's own shutdown. Returns the replaced handlers."""
    return install(functools.partial(_exit_now, when, hint))


def _exit_now(when: str, hint: str, signum: int, _frame: FrameType | None) -> NoReturn:
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()  # what the command printed comes before the line
    os.write(2, f"topoat: {Interrupted(signum, when, hint)}\n".encode())
    os._exit(128 + signum)
