"""Errors that mean the user's input is bad: the stages turn them into exit code 2."""

import contextlib
from collections.abc import Iterator


class UsageError(ValueError):
    """Bad input (unknown name, invalid value, missing data): one line naming it and the valid."""


@contextlib.contextmanager
def as_usage_error(*errors: type[Exception]) -> Iterator[None]:
    """Re-raise `errors` as UsageError with the same one-line message: where the workflow hands
    user input to a library with its own bad-input error (models.ModelOptionError)."""
    try:
        yield
    except errors as e:
        raise UsageError(str(e)) from e
