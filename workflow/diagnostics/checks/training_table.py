"""The training split read as a table, for the checks that judge its columns one by one
(`target_leak`, `target_link`, `extreme_values`): a seeded sample of its rows, each example
flattened to a row of float64 features, and a feature's name as the user knows it."""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow.data import lazy


def sample_rows(dataset: Any, count: int, seed: int = 0) -> np.ndarray | None:
    """Up to `count` training row indices, seeded and shuffled (not sorted: a half of them must
    not follow an order the data came in, by class), or None for a lazy split (images decoded
    on demand) or an empty one."""
    if lazy.is_lazy(dataset.x_train) or not len(dataset.x_train):
        return None
    return np.random.default_rng(seed).permutation(len(dataset.x_train))[:count]


def features(dataset: Any, rows: np.ndarray) -> np.ndarray:
    """The training examples at `rows`, each flattened: (rows, features) float64."""
    return np.asarray(dataset.x_train[rows], np.float64).reshape(len(rows), -1)


def feature_name(dataset: Any, feature: int) -> str:
    """A feature as the user knows it: its column name where the loader kept names."""
    names = (getattr(dataset, "info", None) or {}).get("feature_names") or []
    return f"'{names[feature]}'" if feature < len(names) else f"#{feature}"
