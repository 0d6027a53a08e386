"""Training targets cut loose from their inputs (regression): `train_labels_noisy`.

A regression whose training targets were reordered apart from their inputs (a shuffle applied to
one array, a join on the wrong key, a target read from the wrong column) trains on no signal, and
a short run cannot tell that from a hard problem. The test targets can: a linear model (ridge
regression on the inputs standardized with the training split's statistics) is fit on the
training split and scored on the test split, and fit on one half of the test split and scored on
the other half (both ways). When the test targets are predictable from their own inputs but the
fit on the training targets predicts them clearly worse (paired per-example squared errors, at
least `LINK_Z` standard errors apart, and losing at least half of what the within-test fit
explains), the training targets do not go with their inputs the way the test targets do.

Clean data is quiet: the fit on the larger training split predicts the test targets at least as
well as a fit on half of them. A problem with no linear signal anywhere is quiet too (nothing to
compare); the short run's checks speak for it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from workflow.diagnostics.checks import training_table
from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding

SAMPLE_ROWS = 4000  # training rows fit at most (a seeded sample beyond)
MAX_FEATURES = 512  # wider inputs (images) are left alone: a linear probe says little there
MIN_TEST = 40  # fewer test examples: the halves are too small to fit
RIDGE = 1.0  # the penalty on standardized inputs, per example of the fit
MIN_WITHIN_R2 = 0.2  # the test targets' own linear signal must be clear
LINK_Z = 3.0


def _ridge(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights (with a bias last) of ridge regression of y on x."""
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    penalty = RIDGE * len(x) * np.eye(xb.shape[1])
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    return np.linalg.solve(xb.T @ xb + penalty, xb.T @ y)


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


def _squared_errors(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.mean((pred - y) ** 2, axis=-1)


def link_errors(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per test example squared errors of the ridge fit on the training split ("transfer"), of
    the fits on the other half of the test split ("within") and of the test mean ("mean")."""
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    xtr, xte = (x_train - mean) / std, (x_test - mean) / std
    transfer = _squared_errors(_predict(_ridge(xtr, y_train), xte), y_test)
    order = np.random.default_rng(seed).permutation(len(y_test))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    within = np.empty(len(y_test))
    for fit, score in (halves, halves[::-1]):
        within[score] = _squared_errors(
            _predict(_ridge(xte[fit], y_test[fit]), xte[score]), y_test[score]
        )
    return {"transfer": transfer, "within": within, "mean": _squared_errors(y_test.mean(0), y_test)}


def check_target_link(dataset: Any, seed: int = 0) -> list[Finding]:
    """`train_labels_noisy` when the test targets follow their inputs linearly but a fit on
    the training targets predicts them clearly worse."""
    n_test = len(dataset.y_test)
    rows = training_table.sample_rows(dataset, SAMPLE_ROWS, seed)
    if rows is None or n_test < MIN_TEST:
        return []
    x_train = training_table.features(dataset, rows)
    if x_train.shape[1] > MAX_FEATURES or len(rows) <= x_train.shape[1]:
        return []
    y_train = np.asarray(dataset.y_train, np.float64)[rows].reshape(len(rows), -1)
    x_test = np.asarray(dataset.x_test, np.float64).reshape(n_test, -1)
    y_test = np.asarray(dataset.y_test, np.float64).reshape(n_test, -1)
    errors = link_errors(x_train, y_train, x_test, y_test, seed)
    base = float(np.mean(errors["mean"]))
    if base <= 0:
        return []
    r2 = {k: 1.0 - float(np.mean(errors[k])) / base for k in ("transfer", "within")}
    gap = errors["transfer"] - errors["within"]
    z = float(np.mean(gap) / (np.std(gap, ddof=1) / math.sqrt(n_test) + 1e-12))
    if r2["within"] < MIN_WITHIN_R2 or r2["transfer"] > 0.5 * r2["within"] or z < LINK_Z:
        return []
    return [
        Finding(
            id="train_labels_noisy",
            severity="warning",
            message=(
                f"a linear model fit on half the test split predicts the other half's targets "
                f"(R² {r2['within']:.2f}), but one fit on the training targets predicts them "
                f"{'no better than their mean' if r2['transfer'] <= 0.05 else 'far worse'} "
                f"(R² {r2['transfer']:.2f}): the training targets do not go with their inputs "
                "the way the test targets do"
            ),
            evidence={
                "r2_within_test": r2["within"],
                "r2_train_to_test": r2["transfer"],
                "z": z,
                "test_examples": n_test,
                "train_rows_fit": len(rows),
            },
            suggestions=[
                "check that the training targets stay aligned with their inputs: a shuffle or "
                "sort applied to one array, a join on the wrong key, the wrong target column",
                "look at a few training rows beside their targets",
            ],
        )
    ]


CHECKS = (
    Check(
        "target_link",
        order=31,
        run=lambda setup, batch: check_target_link(setup.dataset),
        tasks=("regression",),
    ),
)
