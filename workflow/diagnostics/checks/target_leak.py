"""The target among the inputs: one input feature that alone gives the label or the target
(`target_in_inputs`).

A column that is the target, or is computed from it (a label column left in the table, a score
derived from the outcome, an id assigned by class), lets the model read the answer: the val and
test errors read far too low, and nothing learned holds on inputs where that column is not
filled in. Each feature is tried alone on a seeded sample of the training split:

* classification: the feature's values as a lookup table (each value -> its most frequent
  label), learned on one half of the sample and scored on the other half, which it did not see;
  only features with few distinct values are tried (a lookup that can generalize), and it fires
  when the table is right on at least `LEAK_ACCURACY` of the held-out half and removes nearly all
  the error that predicting the majority class leaves;
* regression: the feature's correlation with a target, at least `LEAK_CORRELATION` in size.

Real features this predictive are rare enough that the finding is a warning: a user whose
problem is truly that easy reads it and moves on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow.diagnostics.checks import training_table
from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding

SAMPLE_ROWS = 4000  # training rows read at most (a seeded sample beyond)
MIN_ROWS = 100  # fewer training rows: too few to tell a lookup from chance
MAX_FEATURES = 4096  # inputs with more features (large images) are not tried
# A lookup table: at most this many distinct values per class, so each value is seen often
# enough in one half to be scored on the other.
MAX_VALUES_PER_CLASS = 10
LEAK_ACCURACY = 0.99
# ... and the held-out error at most this share of the majority-class predictor's.
MAX_ERROR_SHARE = 0.1
LEAK_CORRELATION = 0.999


def _sample(dataset: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """(features (n, F), targets) of a seeded sample of the training split, or None when the
    split is lazy (images decoded on demand), too small, or has too many features."""
    rows = training_table.sample_rows(dataset, SAMPLE_ROWS, seed)
    if rows is None or len(dataset.x_train) < MIN_ROWS:
        return None
    x = training_table.features(dataset, rows)
    if x.shape[1] > MAX_FEATURES:
        return None
    return x, np.asarray(dataset.y_train)[rows]


def _lookup_accuracy(values: np.ndarray, labels: np.ndarray, half: int) -> float:
    """Held-out accuracy of `values` -> majority label, the table learned on the first `half`."""
    fit_v, fit_y, test_v, test_y = values[:half], labels[:half], values[half:], labels[half:]
    table_values, inverse = np.unique(fit_v, return_inverse=True)
    counts = np.zeros((len(table_values), int(labels.max()) + 1))
    np.add.at(counts, (inverse, fit_y), 1)
    majority = counts.argmax(axis=1)
    at = np.clip(np.searchsorted(table_values, test_v), 0, len(table_values) - 1)
    known = table_values[at] == test_v
    return float(np.mean(known & (majority[at] == test_y)))


def classification_leaks(x: np.ndarray, y: np.ndarray, num_classes: int) -> list[dict]:
    """The features whose values alone give the label on the held-out half."""
    y = y.astype(np.int64)
    half = len(y) // 2
    majority_error = 1.0 - np.bincount(y[half:]).max() / len(y[half:])
    distinct = 1 + (np.diff(np.sort(x[:half], axis=0), axis=0) != 0).sum(axis=0)
    leaks = []
    for j in np.flatnonzero((distinct >= 2) & (distinct <= MAX_VALUES_PER_CLASS * num_classes)):
        accuracy = _lookup_accuracy(x[:, j], y, half)
        if accuracy >= LEAK_ACCURACY and 1.0 - accuracy <= MAX_ERROR_SHARE * majority_error:
            leaks.append({"feature": int(j), "accuracy": accuracy, "values": int(distinct[j])})
    return leaks


def regression_leaks(x: np.ndarray, y: np.ndarray) -> list[dict]:
    """The features correlated with a target at LEAK_CORRELATION or more in size."""
    targets = y.reshape(len(y), -1).astype(np.float64)
    xc, yc = x - x.mean(axis=0), targets - targets.mean(axis=0)
    scale = np.outer(np.sqrt((xc**2).sum(axis=0)), np.sqrt((yc**2).sum(axis=0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(scale > 0, xc.T @ yc / scale, 0.0)  # (features, targets)
    leaks = []
    for j, t in zip(*np.nonzero(np.abs(corr) >= LEAK_CORRELATION), strict=True):
        leaks.append({"feature": int(j), "target": int(t), "correlation": float(corr[j, t])})
    return leaks


def check_target_leak(setup: Any) -> list[Finding]:
    """`target_in_inputs` when one input feature alone gives the label or the target."""
    dataset, task = setup.dataset, setup.task.kind.name
    sample = _sample(dataset)
    if sample is None:
        return []
    x, y = sample

    def name(feature: int) -> str:
        return training_table.feature_name(dataset, feature)

    if task == "regression":
        leaks = regression_leaks(x, y)
        how = [f"{name(d['feature'])} (r = {d['correlation']:.4f})" for d in leaks]
        what = "correlates with the target almost perfectly"
    else:
        leaks = classification_leaks(x, y, dataset.num_classes)
        how = [
            f"{name(d['feature'])} ({d['accuracy']:.1%} of held-out examples, "
            f"{d['values']} distinct values)"
            for d in leaks
        ]
        what = "gives the label on its own"
    if not leaks:
        return []
    shown = ", ".join(how[:3]) + (f" and {len(how) - 3} more" if len(how) > 3 else "")
    return [
        Finding(
            id="target_in_inputs",
            severity="warning",
            message=(
                f"input feature {shown} {what}: the target, or something computed from it, is "
                "among the inputs, so the model can read the answer instead of learning it"
            ),
            evidence={"features": leaks, "rows_sampled": len(y)},
            suggestions=[
                "drop that column from the inputs (the label column, or one derived from the "
                "outcome) and run again",
                "check how the feature is made: would it be known when the model is used?",
            ],
        )
    ]


CHECKS = (
    Check(
        "target_leak",
        order=28,
        run=lambda setup, batch: check_target_leak(setup),
        tasks=("classification", "regression"),
    ),
)
