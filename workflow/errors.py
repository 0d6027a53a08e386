"""Errors that mean the user's input is bad: the stages turn them into exit code 2."""

import contextlib
import inspect
import os
import traceback
from collections.abc import Iterator
from typing import Any


class UsageError(ValueError):
    """Bad input (unknown name, invalid value, missing data): one line naming it and the valid."""


class UserCodeError(UsageError):
    """The user's own code (a model, a loss, a dataset loader, a config file) raised: one line
    naming it and its own message; `where` is the line of the user's file that raised, and the
    traceback is its __cause__ (the stages print it with --verbose)."""

    def __init__(self, message: str, where: str | None = None):
        super().__init__(message)
        self.message, self.where = message, where

    def line(self, *notes: str) -> str:
        """The message with where it raised and `notes` in parentheses."""
        extra = "; ".join(n for n in (self.where, *notes) if n)
        return f"{self.message} ({extra})" if extra else self.message

    def __str__(self) -> str:
        return self.line()


@contextlib.contextmanager
def as_usage_error(*errors: type[Exception]) -> Iterator[None]:
    """Re-raise `errors` as UsageError with the same one-line message: where the workflow hands
    user input to a library with its own bad-input error (models.ModelOptionError)."""
    try:
        yield
    except errors as e:
        raise UsageError(str(e)) from e


@contextlib.contextmanager
def user_code(what: str, obj: Any = None) -> Iterator[None]:
    """Run the user's code `what` (e.g. "loss 'pkg.mod:fn'"): anything it raises, SystemExit
    included, becomes a UserCodeError naming it and the line of `obj`'s file that raised.

    UsageError passes through (the workflow's own checks inside), and so do KeyboardInterrupt
    and XLA's out-of-memory error (the memory guard reports that one).
    """
    try:
        yield
    except (UsageError, KeyboardInterrupt):
        raise
    except BaseException as e:
        if "RESOURCE_EXHAUSTED" in str(e):
            raise
        raise UserCodeError(f"{what} raised {one_line(e)}", _where(e, obj)) from e


def import_user_object(path: str, what: str, valid: str) -> Any:
    """The callable that `path` ("module:name") names, for the user's `what` (e.g. "loss"):
    a UsageError naming it and `valid` when it does not import or is not callable, a
    UserCodeError when its module raises as it is imported."""
    import importlib

    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UsageError(f"{what} {path!r} is unknown; valid: {valid}")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"cannot load {what} {path!r} ({e}); valid: {valid}") from None
    except Exception as e:  # the module's own code raising as it is imported
        raise UserCodeError(f"{what} {path!r}: importing it raised {one_line(e)}") from e
    if not callable(found):
        raise UsageError(f"{what} {path!r} is not callable; valid: {valid}")
    return found


def one_line(error: BaseException) -> str:
    """`Type: first line of the message` of an exception."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def _where(error: BaseException, obj: Any) -> str | None:
    """'file.py:line': the innermost frame of `error` in the file that defines `obj`."""
    try:
        source = os.path.realpath(inspect.getsourcefile(obj) or "")
    except TypeError:  # a builtin, or no object: no file of the user's to point at
        return None
    trace = traceback.extract_tb(error.__traceback__)
    frames = [f for f in trace if os.path.realpath(f.filename) == source]
    if not frames:
        return None
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}"
