"""The on-disk cache of generated datasets and vocabularies (cache_dir())."""

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np

from workflow.files import write_atomically

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


def write_cache(path: Path, arrays: dict[str, np.ndarray], key_src: str) -> None:
    try:
        write_atomically(path, "wb", lambda f: np.savez(f, **arrays, args_json=np.array(key_src)))
    except OSError as e:
        # A read-only cache only costs regeneration time next run; say so rather than fail.
        warnings.warn(f"could not write dataset cache {path}: {e}", stacklevel=3)
