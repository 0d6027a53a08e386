"""The on-disk cache of generated datasets and vocabularies (cache_dir())."""

import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

CACHE_ENV = "DNN_TROUBLESHOOTING_CACHE"


# ----------------------------------------------------------------------------- mnist1d


def cache_dir() -> Path:
    """Where generated arrays are cached: $DNN_TROUBLESHOOTING_CACHE or ~/.cache/..."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dnn-troubleshooting"


def read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable or partial: regenerate and overwrite


def write_atomically(path: Path, mode: str, write: Callable[[Any], None]) -> None:
    """write(file) into a temporary file beside `path`, then rename it to `path`.

    Concurrent runs sharing the cache never read a half-written file; OSError propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_cache(path: Path, arrays: dict[str, np.ndarray], key_src: str) -> None:
    try:
        write_atomically(path, "wb", lambda f: np.savez(f, **arrays, args_json=np.array(key_src)))
    except OSError as e:
        # A read-only cache only costs regeneration time next run; say so rather than fail.
        warnings.warn(f"could not write dataset cache {path}: {e}", stacklevel=3)
