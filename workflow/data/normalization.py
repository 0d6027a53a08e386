"""Per-channel input statistics of the training split, and applying them to any split."""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow.errors import UsageError

STD_FLOOR = 1e-8


# ----------------------------------------------------------------------------- normalization


def compute_normalization(x_train: np.ndarray) -> dict[str, Any]:
    """Per-channel (last axis) mean and std of the training inputs."""
    axes = tuple(range(x_train.ndim - 1))
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = x_train.std(axis=axes, dtype=np.float64)
    return _normalization(mean, std)


def combined_normalization(x_shard: np.ndarray, x_rest: np.ndarray | None = None) -> dict:
    """compute_normalization of every process's `x_shard` and the `x_rest` rows they all hold
    (counted once), without moving the data: the two passes of mean and std over per-host
    float64 sums, added in process order, so every host gets the same statistics (collective).
    """
    from workflow.engine import distributed

    axes = tuple(range(x_shard.ndim - 1))
    parts = [x_shard] + ([x_rest] if x_rest is not None and x_rest.size else [])
    count = distributed.sum_over_processes(np.asarray(x_shard.size // x_shard.shape[-1]))
    count = count + sum(x.size // x.shape[-1] for x in parts[1:])
    total = distributed.sum_over_processes(x_shard.sum(axis=axes, dtype=np.float64))
    mean = (total + sum(x.sum(axis=axes, dtype=np.float64) for x in parts[1:])) / count

    def squares(x):
        return np.square(x.astype(np.float64) - mean).sum(axis=axes)

    spread = distributed.sum_over_processes(squares(x_shard))
    spread = spread + sum(squares(x) for x in parts[1:])
    return _normalization(mean, np.sqrt(spread / count))


def _normalization(mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    constant = std < STD_FLOOR
    # Dividing a constant channel by ~0 would blow up any other value seen at eval; leave it at 1.
    std = np.where(constant, 1.0, std)
    return {
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "axis": "per-channel",
        "constant_channels": [int(i) for i in np.flatnonzero(constant)],
    }


def apply_normalization(x: np.ndarray, normalization: dict | None) -> np.ndarray:
    """(x - mean) / std per channel with saved statistics; identity when normalization is None."""
    if normalization is None:
        return x
    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != mean.shape[0]:
        raise UsageError(
            f"inputs with shape {x.shape} have {x.shape[-1] if x.ndim else 0} channels but the "
            f"normalization statistics have {mean.shape[0]}"
        )
    return ((x.astype(np.float32, copy=False) - mean) / std).astype(np.float32, copy=False)
