"""The one exception type that means "the user gave us something we cannot use"."""


class TopoatError(Exception):
    """A user error: bad config, bad path, corrupt file, wrong checkpoint.

    The CLI prints its message as one line and exits with status 2; library users can catch it.
    """
