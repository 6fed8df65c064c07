"""Errors a user can cause and fix.

The CLI prints a `GrefelError` as one line and exits with code 2; any other
exception is a bug and keeps its traceback.
"""


class GrefelError(Exception):
    """A user-facing error: bad input, bad configuration, missing file."""


class DataError(GrefelError):
    """A dataset file, row or field is not what the format expects."""


class BadRowsError(DataError):
    """Bad rows or images in a dataset, which the skip-bad option would skip. Printed by a command with
    that option in the command's own spelling (`for_option`); as a Python exception, in the API's."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def for_option(self, option: str) -> str:
        return f"{self.message} (pass {option} to skip bad rows)"

    def __str__(self) -> str:
        return self.for_option("skip_bad=True in the DataSource")


class ConfigError(GrefelError):
    """A configuration key, value or preset is invalid."""


class WeightsError(GrefelError):
    """A weight or checkpoint file cannot be loaded safely or does not fit the model."""
