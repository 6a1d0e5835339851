"""The exception types the CLI turns into one line: a user error (exit 2) and a signal (exit 128 + signum)."""

import signal


class TopoatError(Exception):
    """A user error: bad config, bad path, corrupt file, wrong checkpoint.

    The CLI prints its message as one line and exits with status 2; library users can catch it.
    """


class TrainingDiverged(TopoatError):
    """The loss became non-finite or exceeded optim.max_loss: a study records the run as failed and goes on."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a command at a known stage (`when`); `hint` says how to continue.

    The CLI prints its message as one line and exits with 128 + the signal number (130, 143)."""

    def __init__(self, signum: int, when: str = "", hint: str = ""):
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(f"interrupted by {name}" + (f" {when}" if when else "") + (f"; {hint}" if hint else ""))
        self.signum = int(signum)
