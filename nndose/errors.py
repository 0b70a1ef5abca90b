"""The one exception type that reaches a user as a one-line message."""
from __future__ import annotations

from pathlib import Path


class NndoseError(Exception):
    """A problem with the user's input or environment; the CLI prints it on one line and exits 2."""


class FileProblem(NndoseError):
    """A file that is missing, unreadable or unusable: `path` and `reason` kept apart, so that a caller
    can name the file its own way (e.g. relative to its case) without parsing the message."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):   # crosses process boundaries (worker pools) intact
        return type(self), (self.path, self.reason)


class DiskFull(NndoseError):
    """A write ran out of space: never a problem of one input, so batch commands stop on it."""
