"""Errors that mean the user's input is bad: the stages turn them into exit code 2."""


class UsageError(ValueError):
    """Bad input (unknown name, invalid value, missing data): one line naming it and the valid."""
