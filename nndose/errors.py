"""The one exception type that reaches a user as a one-line message."""


class NndoseError(Exception):
    """A problem with the user's input or environment; the CLI prints it on one line and exits 2."""
