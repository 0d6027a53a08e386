"""The examples themselves: test examples inside the training data, and training examples
repeated (`test_leaked_into_train`, `duplicate_examples`).

Examples are compared exactly, row by row, as the loader returned them after the workflow's
normalization (the same transform on every split, so equal rows stay equal). Exact copies are
what a concatenation bug, a split done twice or a leak make; near-duplicates are left alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow import data
from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding

# A leak: at least 1% of the test examples (and at least 2) also in the training data (train and
# val, which the workflow carves from the loader's training split). The built-in datasets have
# none (MNIST-1D, digits, the synthetic generators: tests/test_zoo_detectors.py).
LEAK_MIN_SHARE = 0.01
LEAK_MIN_COUNT = 2
# Repeated training examples: at least 10% of the training rows are copies of another row. A
# few natural exact duplicates (digits has a handful of identical 8x8 images) stay far below.
DUPLICATE_MIN_SHARE = 0.1
# Rows compared at most (a seeded sample beyond): hashing is linear, but the check runs before
# every debug run.
MAX_ROWS = 200_000


def _row_keys(x: np.ndarray) -> np.ndarray:
    """One hashable key per example: its bytes as a fixed-width void scalar."""
    rows = np.ascontiguousarray(np.asarray(x).reshape(len(x), -1))
    return rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))[:, 0]


def _sample(n: int, seed: int = 0) -> np.ndarray:
    """All row indices, or a seeded sample of MAX_ROWS of them."""
    if n <= MAX_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_ROWS, replace=False))


def check_splits(dataset: Any) -> list[Finding]:
    """`test_leaked_into_train` and `duplicate_examples` for exact copies of examples."""
    # A lazy training split (data.lazy): a sample of MAX_ROWS of its examples.
    x_train = data.bounded(dataset.x_train, MAX_ROWS)
    x_train = np.concatenate([np.asarray(x_train), np.asarray(dataset.x_val)])
    x_test = np.asarray(dataset.x_test)
    if not len(x_train) or x_train.shape[1:] != x_test.shape[1:]:
        return []
    train_keys = _row_keys(x_train[_sample(len(x_train))])
    findings = []
    if len(x_test):
        test_keys = _row_keys(x_test[_sample(len(x_test))])
        leaked = int(np.isin(test_keys, train_keys).sum())
        share = leaked / len(test_keys)
        if leaked >= LEAK_MIN_COUNT and share >= LEAK_MIN_SHARE:
            findings.append(_leak_finding(leaked, len(test_keys), share))
    unique = len(np.unique(train_keys))
    repeated = len(train_keys) - unique
    if repeated / len(train_keys) >= DUPLICATE_MIN_SHARE:
        findings.append(_duplicates_finding(repeated, len(train_keys), unique))
    return findings


def _leak_finding(leaked: int, n_test: int, share: float) -> Finding:
    return Finding(
        id="test_leaked_into_train",
        severity="error",
        message=(
            f"{leaked} of {n_test} test examples ({share:.0%}) are also in the training data: "
            "the test error will read too low"
        ),
        evidence={"test_examples_in_train": leaked, "test_examples": n_test, "share": share},
        suggestions=[
            "split once, before any concatenation or augmentation, and keep the test split apart",
            "deduplicate across splits (hash the examples) when the source has repeats",
        ],
    )


def _duplicates_finding(repeated: int, n: int, unique: int) -> Finding:
    # One distinct input: nothing to learn from, whatever the labels say (a loader that zeroed
    # or overwrote every example).
    constant = (
        ": every training input is the same, so the inputs carry nothing the model can learn "
        "from (a loader or preprocessing step that zeroed or overwrote them?)"
        if unique == 1
        else ""
    )
    return Finding(
        id="duplicate_examples",
        severity="warning",
        message=(
            f"{repeated} of {n} training examples ({repeated / n:.0%}) are exact copies of "
            f"another: only {unique} are distinct" + constant
        ),
        evidence={"repeated_rows": repeated, "rows": n, "distinct_rows": unique},
        suggestions=[
            "look for a split or concatenation applied twice in the loader",
            "deduplicate the training data (copies also leak into the val split carved from it)",
        ],
    )


CHECKS = (Check("splits", order=25, run=lambda setup, batch: check_splits(setup.dataset)),)
