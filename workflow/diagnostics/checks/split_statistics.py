"""How the loader made its splits: each split normalized with its own statistics, and splits cut
from data sorted by class (`split_normalized_separately`, `split_from_sorted_data`).

Both read the arrays as the workflow received them; nothing runs. A test split normalized with
the training statistics has feature means and spreads that miss 0 and 1 by its sampling noise
(about 1/sqrt(n)); normalized with its own, it hits them to float rounding, which a split of
a few hundred examples never does by chance. A training split in the order of its labels has
a handful of label runs where a shuffled one has about n (1 - sum p_k^2): the loader never
shuffled, and splits cut from that order hold different classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding

# A split standardized by its own statistics: every feature's mean and spread within this
# fraction of their sampling noise under the training statistics (1/sqrt(n) for the mean,
# 1/sqrt(2n) for the spread). Float32 standardization lands within ~1e-6 of 0 and 1, the noise
# of 200 examples is 0.07: a mean and a spread both within a thousandth of their noise happen
# by chance about once in a million for one feature, and never for several.
EXACT_FRACTION = 1e-3
# Sorted: the training labels form at most this share of the runs a shuffled order would.
SORTED_RUNS_SHARE = 0.05


def _statistics(x: np.ndarray, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Means and standard deviations per channel (last axis) or per feature (every value of an
    example), those with spread only."""
    x = np.asarray(x, np.float64)
    flat = x.reshape(-1, x.shape[-1]) if per_channel else x.reshape(len(x), -1)
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    varying = std > 1e-6
    return mean[varying], std[varying]


def standardized_exactly(x: np.ndarray) -> dict | None:
    """Its deviations from mean 0 and spread 1 when `x` is standardized (per feature or per
    channel) to float rounding, far closer than its sampling noise allows; None otherwise."""
    n = len(x)
    if n < 2 or np.ndim(x) < 2 or not np.issubdtype(np.asarray(x).dtype, np.floating):
        return None
    for per_channel in (False, True):
        mean, std = _statistics(x, per_channel)
        if not len(mean):
            continue
        mean_off, std_off = float(np.abs(mean).max()), float(np.abs(std - 1.0).max())
        if mean_off <= EXACT_FRACTION / np.sqrt(n) and std_off <= EXACT_FRACTION / np.sqrt(2 * n):
            return {
                "examples": n,
                "features": len(mean),
                "per": "channel" if per_channel else "feature",
                "max_abs_mean": mean_off,
                "max_std_off": std_off,
            }
    return None


def as_loaded(x: np.ndarray, normalization: dict | None) -> np.ndarray:
    """`x` as the loader returned it: the workflow's normalization (train statistics) undone."""
    if normalization is None:
        return np.asarray(x)
    mean = np.asarray(normalization["mean"], np.float64)
    std = np.asarray(normalization["std"], np.float64)
    return np.asarray(x, np.float64) * std + mean


def label_runs(y: np.ndarray) -> tuple[int, float]:
    """(runs of equal labels in order, the runs a shuffled order would have on average)."""
    y = np.asarray(y).ravel()
    runs = 1 + int(np.count_nonzero(y[1:] != y[:-1])) if len(y) else 0
    p = np.bincount(y) / len(y) if len(y) else np.zeros(1)
    return runs, 1.0 + (len(y) - 1) * (1.0 - float(np.sum(p**2)))


def check_split_statistics(dataset: Any) -> list[Finding]:
    """`split_normalized_separately` and `split_from_sorted_data` from the loader's arrays."""
    findings = []
    if (dataset.info or {}).get("vocabulary") is None and len(dataset.x_test):
        test = standardized_exactly(as_loaded(dataset.x_test, dataset.normalization))
        if test is not None:
            findings.append(_normalized_finding(test))
    if getattr(dataset.task, "name", "classification") == "classification":
        findings += _sorted_findings(dataset)
    return findings


def _normalized_finding(test: dict) -> Finding:
    noise = 1.0 / np.sqrt(test["examples"])
    return Finding(
        id="split_normalized_separately",
        severity="warning",
        message=(
            f"the test split came from the loader standardized exactly (its {test['features']} "
            f"{test['per']}s' means "
            f"within {test['max_abs_mean']:.1g} of 0, spreads within {test['max_std_off']:.1g} "
            f"of 1, where the training statistics would leave ~{noise:.2f}): it was normalized "
            "with its own statistics, not the training split's"
        ),
        evidence={"test": test, "sampling_noise_of_mean": noise},
        suggestions=[
            "compute the mean and std on the training split only and apply them to every split "
            "(scaler.fit(x_train), then transform each split; never fit_transform the test split)",
            "or leave normalization to the workflow (--config.dataset.normalize=True), which "
            "uses the training statistics for every split",
        ],
    )


def _sorted_findings(dataset: Any) -> list[Finding]:
    y_train = np.asarray(dataset.y_train)
    if len(y_train) < 2 * int(dataset.num_classes):
        return []
    runs, expected = label_runs(y_train)
    if runs > SORTED_RUNS_SHARE * expected:
        return []
    train = set(np.unique(y_train).tolist())
    differ = {}
    for split in ("val", "test"):
        held_out = set(np.unique(dataset.split(split)[1]).tolist())
        if len(held_out) and held_out != train:
            differ[split] = {
                "classes_not_in_train": sorted(held_out - train),
                "train_classes_missing": sorted(train - held_out),
            }
    evidence = {"label_runs": runs, "shuffled_runs_expected": round(expected, 1)}
    if not differ:
        return [
            Finding(
                id="split_from_sorted_data",
                severity="info",
                message=(
                    f"the training examples come sorted by class ({runs} label runs, a shuffled "
                    f"order would have ~{expected:.0f}); the workflow shuffles its batches and "
                    "every split holds the same classes, so training is not affected"
                ),
                evidence=evidence,
                suggestions=["shuffle once in the loader before any split is cut"],
            )
        ]
    return [
        Finding(
            id="split_from_sorted_data",
            severity="warning",
            message=(
                f"the training examples come sorted by class ({runs} label runs, a shuffled "
                f"order would have ~{expected:.0f}) and the splits hold different classes ("
                + "; ".join(
                    f"{split} lacks train's classes {d['train_classes_missing']} and has "
                    f"{d['classes_not_in_train']} that train lacks"
                    for split, d in differ.items()
                )
                + "): the splits were cut from data sorted by class, never shuffled"
            ),
            evidence={**evidence, "classes_differ": differ},
            suggestions=[
                "shuffle (with a seed) before cutting the splits, or split stratified by class "
                "(sklearn.model_selection.train_test_split(..., stratify=y))",
            ],
        )
    ]


CHECKS = (
    Check(
        "split_statistics",
        order=27,
        run=lambda setup, batch: check_split_statistics(setup.dataset),
    ),
)
