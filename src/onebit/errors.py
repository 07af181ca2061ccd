"""The one error family of onebit: every expected failure is an :class:`OnebitError`.

The command line catches ``OnebitError`` and prints ``onebit CMD: error: <message>`` (one line) and exits
with ``exit_code``. Each module raises the subclass that names its input; all are defined here so that
callers (the CLI, the sweep runner) can catch the family, or one member, without importing heavy modules. :func:`warn` prints the one-line warning for what goes on regardless.
"""

import sys


class OnebitError(Exception):
    """A failure to report to the user as ``onebit CMD: error: <message>`` with ``exit_code``."""

    exit_code = 1


class DataError(OnebitError):
    """Dataset missing, unreadable or corrupt."""


class ConfigError(OnebitError):
    """An impossible, unknown or wrongly typed configuration value or option."""


class TrainingDiverged(OnebitError):
    """The loss became NaN or infinite."""

    exit_code = 3


class RunDirError(OnebitError):
    """A run directory is unusable: unreadable files, an unwritable folder, or a run that is not this one."""


class RunLockedError(RunDirError):
    """Another process holds the run directory's lock."""


class CheckpointError(OnebitError):
    """A checkpoint file is missing, corrupt, or not a onebit checkpoint."""


class PackedModelError(OnebitError):
    """A packed model file is missing, truncated, corrupt, of another version, or inconsistent."""


class StoreError(OnebitError):
    """The results store is unreadable, corrupt or from an unknown schema."""


class ReferenceImportError(OnebitError):
    """A reference-implementation model file cannot be converted."""


class RuntimeMismatchError(OnebitError):
    """Generated C sources or a compiled C runtime do not belong to the model they are used with."""


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: ``<file>: <reason>`` (e.g. ``runs/x/metrics.jsonl: No space left on device``)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(map(str, names))}: {reason}" if names else reason


def warn(message: str) -> None:
    """One warning line on stderr (the run goes on)."""
    print(f"onebit: warning: {message}", file=sys.stderr, flush=True)
