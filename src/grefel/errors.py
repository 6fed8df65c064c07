"""Errors a user can cause and fix.

The CLI prints a `GrefelError` as one line and exits with code 2; any other
exception is a bug and keeps its traceback.
"""


class GrefelError(Exception):
    """A user-facing error: bad input, bad configuration, missing file."""


class DataError(GrefelError):
    """A dataset file, row or field is not what the format expects."""


class ConfigError(GrefelError):
    """A configuration key, value or preset is invalid."""


class WeightsError(GrefelError):
    """A weight or checkpoint file cannot be loaded safely or does not fit the model."""
