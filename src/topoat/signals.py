"""SIGINT and SIGTERM outside the training loop: they stop the command at once with one line naming the
stage it was in (the training loop installs its own handler, which saves a checkpoint first)."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

from .errors import Interrupted

_stages: list[tuple[str, str]] = []  # (when, hint) of the innermost stage last


@contextmanager
def stage(when: str, hint: str = "") -> Iterator[None]:
    """Name what the process is doing ("during the final evaluation") and how to continue after a signal."""
    _stages.append((when, hint))
    try:
        yield
    finally:
        _stages.pop()


def _raise(signum, _frame):
    when, hint = _stages[-1] if _stages else ("", "")
    raise Interrupted(signum, when, hint)


@contextmanager
def handling_signals(handler) -> Iterator[None]:
    """SIGINT and SIGTERM go to `handler` inside the block; the previous handlers come back after it."""
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def raise_on_signals():
    """SIGINT/SIGTERM raise `Interrupted` in the main thread (the default SIGTERM kills without a word)."""
    return handling_signals(_raise)
