"""Files written whole or not at all, and JSON as the run directory holds it.

Every file the workflow writes (the run directory's, the checkpoints' checksums, the dataset
cache) goes through `write_atomically`: a temporary file beside the target, flushed to disk,
then renamed over it. A reader, a concurrent run or a run killed mid-write never sees half a file.
The append-only records (metrics.jsonl, TensorBoard events) go through `append_bytes`: one write
per record, so a crash at any byte leaves at most a torn last record, which their readers skip.
"""

import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any

import numpy as np


def write_atomically(path: str | os.PathLike, mode: str, write: Callable[[IO], None]) -> None:
    """write(file) into a temporary file beside `path`, flushed to disk, then renamed to `path`.

    The temporary file has a name of its own, so two processes writing one path never mix their
    bytes; OSError propagates (cli.storage_error_line words it for the user).
    """
    folder = os.path.dirname(os.fspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path), suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise naming(e, path) from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str) -> None:
    if os.path.exists(tmp):
        os.unlink(tmp)


def naming(error: OSError, path: str | os.PathLike) -> OSError:
    """`error` with `path` as its filename when it names none (a failed write() names no file,
    and the user's one line must say which file could not be written)."""
    if error.filename is None and error.errno is not None:
        return OSError(error.errno, error.strerror or os.strerror(error.errno), os.fspath(path))
    return error


def append_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Append `data` to `path` (created if missing) in one write: a process killed meanwhile
    leaves at most a torn last record, which the readers of append-only files skip; OSError
    names the path."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # a write may take fewer bytes than given
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as e:
        raise naming(e, path) from None


def write_text(path: str | os.PathLike, text: str) -> None:
    """A text file, written atomically."""
    write_atomically(path, "w", lambda f: f.write(text))


def to_jsonable(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to strings, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def finite_or_none(value: float) -> float | None:
    """A float for JSON, with NaN/inf as None (null)."""
    value = float(value)
    return value if math.isfinite(value) else None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """A JSON file (indented, numpy values and NaN made JSON-safe), written atomically."""
    write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's contents."""
    with open(path) as f:
        return json.load(f)
