"""The `topoat` command: a thin layer of argparse over the library.

parser.py holds the commands and their options, commands.py what each prints around the library call that
does its work; here is the program itself: its exit statuses and its answer to signals."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import Interrupted, TopoatError
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The `topoat` command. With `argv` (tests, scripts) it returns the exit status and gives the caller's
    signal handlers back. Without, it is the program itself (the console script, `python -m topoat`): it
    answers SIGINT and SIGTERM with one line from its first moment to its last, and ends the process."""
    from ..signals import exit_on_signals, restore

    # first of all, before torch loads (seconds): a signal while starting is one line too
    previous = exit_on_signals("while topoat was starting", "nothing was written")
    if argv is not None:
        try:
            return _run(argv)
        finally:
            restore(previous)
    status = _run(None)
    exit_on_signals("after the command had ended", "its outputs are complete" if status in (0, 1) else "")
    _end_process(status)


def _end_process(status: int) -> NoReturn:
    """Exit without the interpreter's teardown of torch's modules: seconds in which Python runs no signal
    handler, so a SIGTERM killed the finished command without a word. What topoat writes is on disk by now
    (atomically); the atexit callbacks (torch's compile workers) still run."""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more can reach it
            stream.flush()
    os._exit(status)


def _run(argv: Sequence[str] | None) -> int:
    from ..signals import raise_on_signals, stage

    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise TopoatError("topoat: give a command: train, study, eval, analyze or report (see --help)")
        # every stage answers SIGINT/SIGTERM with one line (the training loop saves a checkpoint first)
        with raise_on_signals(), stage(f"in topoat {args.command}"):
            return args.func(args)
    except TopoatError as e:
        print(f"topoat: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `topoat configs | head`: the reader has gone, which is no error of ours
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a tool killed by the signal reports
    except OSError as e:  # a path the system refuses (too long, a loop, no permission) where no check named it
        from ..files import describe_os_error

        print(f"topoat: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"topoat: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("topoat: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of the dead pipe raises nothing."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
