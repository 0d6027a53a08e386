"""The troubleshooting workflow's stage scripts and the library they share."""

import importlib.util
import os
import sys


def shadowed_models_line() -> str | None:
    """The line naming a `models` package other than the model zoo installed beside this one
    (a project's own `models/` in the current directory comes first on sys.path), or None."""
    ours = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
    if not os.path.isdir(ours):
        return None  # not installed side by side: nothing to compare with
    try:
        spec = importlib.util.find_spec("models")
    except (ImportError, ValueError):
        spec = None
    paths = (spec.submodule_search_locations or []) if spec else []
    locations = [os.path.realpath(p) for p in paths]
    if os.path.realpath(ours) in locations:
        return None
    found = locations[0] if locations else (spec.origin if spec else None)
    return (
        f"the package 'models' resolves to {found}, not the workflow's model zoo ({ours}): a "
        "package of that name in the current directory or on PYTHONPATH shadows it; run from "
        "another directory or rename yours"
    )


def _check_models() -> None:
    """Refuse a shadowed model zoo in one line: exit 2 from a stage's command line (located by
    `python -m`, or the dnn-troubleshoot command), an ImportError anywhere else."""
    line = shadowed_models_line()
    if line is None:
        return
    command_line = sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0]) == "dnn-troubleshoot"
    if command_line:
        sys.stderr.write(f"error: {line}\n")
        raise SystemExit(2)
    raise ImportError(line)


_check_models()
