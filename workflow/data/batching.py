"""Example order: stratified prefixes for the splits, and the batches of every step as
pure functions of (seed, step), so a resumed run draws what the uninterrupted one did."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from workflow.data.synthetic import rng_for
from workflow.errors import UsageError


def stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of indices whose every prefix holds the classes in proportion to y; a
    plain random permutation for targets that are not class indices (regression, multi-label)."""
    perm = rng.permutation(len(y))
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        return perm
    ys = y[perm]
    order = np.argsort(ys, kind="stable")
    counts = np.bincount(ys)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), np.int64)
    rank[order] = np.arange(len(y)) - starts[ys[order]]
    # Fractional position inside its class; ties (same position) keep the random order.
    position = (rank + 0.5) / counts[ys]
    return perm[np.argsort(position, kind="stable")]


# ----------------------------------------------------------------------------- batch order


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = rng_for(seed, epoch, 0xBA7C).permutation(num_examples)
    perm.flags.writeable = False  # cached and shared between calls
    return perm


def batch_indices(
    num_examples: int, batch_size: int, seed: int, step: int, num_steps: int
) -> np.ndarray:
    """Example indices (num_steps, batch_size) for steps [step, step + num_steps); pure."""
    _check_index_args(num_examples, batch_size, seed, step, num_steps)
    if batch_size > num_examples:
        raise UsageError(
            f"batch_size={batch_size} exceeds the {num_examples} training examples; "
            f"use batch_size <= {num_examples}"
        )
    return _epoch_rows(
        num_examples,
        batch_size,
        step,
        num_steps,
        lambda epoch: _epoch_permutation(int(num_examples), int(seed), epoch),
    )


def block_batch_indices(
    block_size: int, num_blocks: int, batch_size: int, seed: int, step: int, num_steps: int
) -> np.ndarray:
    """Per-host data's indices (num_steps, batch_size) for steps [step, step + num_steps): the
    columns of block d (batch_size / num_blocks of them, one device's part of each batch) index
    into that block's own `block_size` examples, which it visits in epoch permutations of its
    own, a function of (seed, epoch, d) alone; pure."""
    _check_index_args(block_size, batch_size, seed, step, num_steps)
    if num_blocks < 1 or batch_size % num_blocks:
        raise UsageError(
            f"batch_size={batch_size} must be a multiple of the {num_blocks} device blocks"
        )
    part = batch_size // num_blocks
    if part > block_size:
        raise UsageError(
            f"batch_size={batch_size} asks {part} examples per device of blocks that hold "
            f"{block_size} (per-host data: the training set split over {num_blocks} devices); "
            f"use batch_size <= {block_size * num_blocks}"
        )
    return np.concatenate(
        [
            _epoch_rows(
                block_size,
                part,
                step,
                num_steps,
                lambda epoch, d=d: _block_permutation(int(block_size), int(seed), epoch, d),
            )
            for d in range(num_blocks)
        ],
        axis=1,
    )


@functools.lru_cache(maxsize=64)
def _block_permutation(block_size: int, seed: int, epoch: int, block: int) -> np.ndarray:
    perm = rng_for(seed, epoch, 0xB10C, block).permutation(block_size)
    perm.flags.writeable = False  # cached and shared between calls
    return perm


def _check_index_args(
    num_examples: int, batch_size: int, seed: int, step: int, num_steps: int
) -> None:
    for label, value, low in (
        ("seed", seed, None),
        ("num_examples", num_examples, 1),
        ("batch_size", batch_size, 1),
        ("step", step, 0),
        ("num_steps", num_steps, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise UsageError(f"{label}={value!r} must be an integer")
        if low is not None and value < low:
            raise UsageError(f"{label}={value!r} must be an integer >= {low}")


def _epoch_rows(
    num_examples: int,
    batch_size: int,
    step: int,
    num_steps: int,
    permutation: Callable[[int], np.ndarray],
) -> np.ndarray:
    """Rows of `batch_size` indices for steps [step, step + num_steps), each epoch one
    `permutation(epoch)` of range(num_examples) cut into full batches (the remainder dropped)."""
    steps_per_epoch = num_examples // batch_size  # drop remainder: every batch is full
    out = np.empty((num_steps, batch_size), np.int64)
    done = 0
    while done < num_steps:
        epoch, offset = divmod(step + done, steps_per_epoch)
        take = min(num_steps - done, steps_per_epoch - offset)
        perm = permutation(int(epoch))
        chunk = perm[offset * batch_size : (offset + take) * batch_size]
        out[done : done + take] = chunk.reshape(take, batch_size)
        done += take
    return out
