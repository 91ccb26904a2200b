"""User-facing errors: each names the file, the line or field, and what was expected."""

from __future__ import annotations

from pathlib import Path


class KaloraError(Exception):
    """Base class for errors caused by user input (exit status 2 on the command line)."""


class InputError(KaloraError):
    """A path, format or value given by the user is unusable."""


class DumpParseError(KaloraError):
    """A dump could not be parsed at a given line."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ConfigError(InputError):
    """A configuration value is invalid; the message names its location (``[embed -> num_epochs]``)."""


class ArtifactError(KaloraError):
    """An artifact is missing, stale or inconsistent with another artifact."""


class KGLockedError(KaloraError):
    """Another process is writing the same ``<root>/<name>``; the message names its pid, host and
    start time (``pipelines.locking``)."""


class StorageError(KaloraError):
    """Writing an artifact failed for a reason of the storage (disk full, I/O error); the message
    names the path and the free space. Nothing half-written was published."""
