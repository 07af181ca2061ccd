"""The error type every user-facing failure is turned into: one clear line, non-zero exit."""


class OnebitError(Exception):
    """A failure to report to the user as ``onebit CMD: error: <message>`` with ``exit_code``."""

    exit_code = 1


class DataError(OnebitError):
    """Dataset missing, unreadable or corrupt."""


class ConfigError(OnebitError):
    """An impossible or unknown configuration."""


class TrainingDiverged(OnebitError):
    """The loss became NaN or infinite."""

    exit_code = 3
