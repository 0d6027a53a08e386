"""Labels out of range or carrying no signal: `labels_out_of_range`, `labels_corrupted`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding

# --- labels. Total-variation distance between the train and val/test class distributions. For
# n examples of C classes the sampling noise of the TV distance is about 0.4 * sqrt(C / n), at
# most ~0.18 for n >= 5 C; 0.4 is far outside it yet is reached by any split holding a class
# mix unrelated to train's (e.g. test labels of a different encoding, or a sorted subset).
LABEL_TV_MAX = 0.4
LABEL_TV_MIN_EXAMPLES = 50  # and at least LABEL_TV_MIN_PER_CLASS * C examples in the split
LABEL_TV_MIN_PER_CLASS = 5
# The debug stage's memorization test: a memorized training set (accuracy >= 0.99) whose model
# scores at chance (1/C) plus at most half a chance level (capped at 10 points) on val.
MEMORIZED_ACCURACY = 0.99
CHANCE_MARGIN_FACTOR = 0.5
CHANCE_MARGIN_CAP = 0.1
# ... and the short run's training loss fell by at least this share (the trials' "improved"):
# fitting its training labels while val stays at chance is what labels without signal do.
MIN_LOSS_DROP = 0.1


# ----------------------------------------------------------------------------- labels


def label_summary(dataset: Any) -> dict[str, Any]:
    """Class counts per split and the train imbalance ratio (largest / smallest count)."""
    c = int(dataset.num_classes)
    counts = {}
    for split in ("train", "val", "test"):
        y = np.asarray(dataset.split(split)[1])
        inside = y[(y >= 0) & (y < c)].astype(np.int64)
        counts[split] = [int(v) for v in np.bincount(inside, minlength=c)]
    train = np.asarray(counts["train"])
    present = train[train > 0]
    imbalance = float(present.max() / present.min()) if present.size else math.nan
    return {"class_counts": counts, "train_imbalance": round(imbalance, 3)}


def check_labels(dataset: Any) -> list[Finding]:
    """`labels_out_of_range`, and `labels_corrupted` for label problems visible without training."""
    findings = []
    c = int(dataset.num_classes)
    outside = _labels_outside(dataset, c)
    if outside:
        findings.append(
            Finding(
                id="labels_out_of_range",
                severity="error",
                message=f"labels outside [0, {c}) in "
                + ", ".join(f"{s} ({e['count']})" for s, e in outside.items()),
                evidence={"num_classes": c, "splits": outside},
                suggestions=[
                    "map labels to class indices 0..C-1 in the loader (e.g. 1-based -> y - 1)",
                    "check num_classes matches the data",
                ],
            )
        )

    summary = label_summary(dataset)
    counts = {s: np.asarray(v, np.float64) for s, v in summary["class_counts"].items()}
    present = np.flatnonzero(counts["train"])
    if len(present) == 1:
        findings.append(
            Finding(
                id="labels_corrupted",
                severity="error",
                message=f"every training label is class {int(present[0])}: the labels carry no "
                "signal to learn",
                evidence={"num_classes": c, **summary},
                suggestions=[
                    "check the loader reads the label column/field, not a constant or an index",
                    "check the labels are not zeroed or overwritten in preprocessing",
                ],
            )
        )
        return findings

    shifted = _shifted_splits(counts, c)
    if shifted:
        findings.append(
            Finding(
                id="labels_corrupted",
                severity="warning",
                message="the class distribution differs wildly between train and "
                + ", ".join(f"{s} (total variation {tv:.2f})" for s, tv in shifted.items()),
                evidence={
                    "total_variation": shifted,
                    "threshold": LABEL_TV_MAX,
                    **summary,
                },
                suggestions=[
                    "check every split is labeled with the same class encoding",
                    "check the splits are drawn from the same distribution (not a sorted or "
                    "filtered subset)",
                ],
            )
        )
    return findings


def _labels_outside(dataset: Any, c: int) -> dict[str, dict]:
    """Per split with labels outside [0, c): how many, and the first ten such values."""
    outside = {}
    for split in ("train", "val", "test"):
        y = np.asarray(dataset.split(split)[1])
        bad = (y < 0) | (y >= c)
        if bad.any():
            outside[split] = {
                "count": int(bad.sum()),
                "values": [v.item() for v in np.unique(y[bad])[:10]],
            }
    return outside


def _shifted_splits(counts: dict[str, np.ndarray], c: int) -> dict[str, float]:
    """The val/test splits whose class distribution is more than LABEL_TV_MAX (total
    variation) from train's, among those with enough examples to tell."""
    p_train = counts["train"] / max(1.0, counts["train"].sum())
    shifted = {}
    for split in ("val", "test"):
        n = counts[split].sum()
        if n < max(LABEL_TV_MIN_EXAMPLES, LABEL_TV_MIN_PER_CLASS * c):
            continue
        tv = 0.5 * float(np.abs(counts[split] / n - p_train).sum())
        if tv > LABEL_TV_MAX:
            shifted[split] = round(tv, 4)
    return shifted


def labels_signal_finding(
    train_batch_accuracy: float,
    val_accuracy: float,
    num_classes: int,
    short_run_loss_drop: float = 1.0,
) -> list[Finding]:
    """`labels_corrupted` when training data is memorized but val accuracy stays at chance
    while the short run's training loss fell (`short_run_loss_drop`: 1 - last / first window):
    a model that learned nothing yet in the short run (a slow start) says nothing about the
    labels by scoring at chance."""
    chance = 1.0 / num_classes
    limit = chance + min(CHANCE_MARGIN_FACTOR * chance, CHANCE_MARGIN_CAP)
    if train_batch_accuracy < MEMORIZED_ACCURACY or val_accuracy >= limit:
        return []
    if short_run_loss_drop < MIN_LOSS_DROP:
        return []
    return [
        Finding(
            id="labels_corrupted",
            severity="error",
            message=f"the model memorizes its training data (accuracy {train_batch_accuracy:.3f}) "
            f"but scores {val_accuracy:.3f} on val, chance level for {num_classes} classes: the "
            "labels carry no signal the inputs predict",
            evidence={
                "train_accuracy": train_batch_accuracy,
                "val_accuracy": val_accuracy,
                "chance": chance,
                "val_accuracy_limit": limit,
                "memorized_threshold": MEMORIZED_ACCURACY,
            },
            suggestions=[
                "check labels stay aligned with their inputs when shuffling or splitting",
                "check train and val inputs get the same preprocessing",
                "look at a few examples with their labels",
            ],
        )
    ]


# Training labels noisier than the test labels: a model fit on the training split agrees with
# its labels at least as well as with unseen test labels from the same distribution (it was fit to
# them), so test accuracy above train accuracy (both in eval mode, after the short run) by at
# least NOISY_MIN_GAP and NOISY_Z standard errors of the difference means the training labels
# disagree with what the inputs predict more often than the test labels do. The training
# accuracy is read on a seeded sample of at most NOISY_TRAIN_SAMPLE examples.
NOISY_MIN_GAP = 0.03
NOISY_Z = 3.0
NOISY_TRAIN_SAMPLE = 2000
# The test split differs: val and test are both unseen, so their accuracies agree up to sampling
# noise unless the test split was made or processed differently; a gap of 5 points and NOISY_Z
# standard errors is called.
SPLIT_MIN_GAP = 0.05


def training_label_sample(y_train: np.ndarray, seed: int) -> np.ndarray:
    """Indices of the training examples whose labels the noise check reads (sorted)."""
    n = len(y_train)
    if n <= NOISY_TRAIN_SAMPLE:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, NOISY_TRAIN_SAMPLE, replace=False))


def train_labels_noise_finding(
    train_accuracy: float, n_train: int, test_accuracy: float, n_test: int, num_classes: int
) -> list[Finding]:
    """`train_labels_noisy` when the model agrees with unseen test labels clearly more often
    than with the training labels; the share of wrong training labels estimated."""
    gap = test_accuracy - train_accuracy
    se = math.sqrt(
        train_accuracy * (1 - train_accuracy) / max(n_train, 1)
        + test_accuracy * (1 - test_accuracy) / max(n_test, 1)
    )
    if gap < NOISY_MIN_GAP or gap < NOISY_Z * max(se, 1e-12):
        return []
    # A wrong label agrees with the prediction only by chance, 1/(C-1) of the model's errors:
    # train = test * (1 - w) + (1 - test) * w / (C - 1), solved for the wrong share w.
    denominator = test_accuracy - (1 - test_accuracy) / max(num_classes - 1, 1)
    wrong = gap / denominator if denominator > 0 else None
    estimate = f"about {wrong:.0%} of them look wrong" if wrong is not None else "many look wrong"
    return [
        Finding(
            id="train_labels_noisy",
            severity="warning",
            message=(
                f"after the short run the model agrees with {test_accuracy:.1%} of the test labels "
                f"it never saw but only {train_accuracy:.1%} of the training labels it was fit to: "
                f"the training labels disagree with their inputs more often; {estimate}"
            ),
            evidence={
                "train_accuracy": train_accuracy,
                "train_examples": n_train,
                "test_accuracy": test_accuracy,
                "test_examples": n_test,
                "gap": gap,
                "z": gap / se if se > 0 else None,
                "estimated_wrong_share": wrong,
            },
            suggestions=[
                "check the preprocessing of the training labels: a random or shifted label map, "
                "labels reordered apart from their inputs, augmentation that changes the class",
                "look at the training examples the model confidently disagrees with",
                "if the noise is real, consider a noise-robust loss or relabeling",
            ],
        )
    ]


def test_split_finding(
    val_accuracy: float, n_val: int, test_accuracy: float, n_test: int
) -> list[Finding]:
    """`test_split_differs` when the model scores clearly worse on test than on val: both are
    unseen, so only a difference in how the test split was made or processed explains it."""
    gap = val_accuracy - test_accuracy
    se = math.sqrt(
        val_accuracy * (1 - val_accuracy) / max(n_val, 1)
        + test_accuracy * (1 - test_accuracy) / max(n_test, 1)
    )
    if gap < SPLIT_MIN_GAP or gap < NOISY_Z * max(se, 1e-12):
        return []
    return [
        Finding(
            id="test_split_differs",
            severity="warning",
            message=(
                f"after the short run the model scores {val_accuracy:.1%} on val but "
                f"{test_accuracy:.1%} on test, though it saw neither: the test split differs "
                "from the training data in how it was made or processed"
            ),
            evidence={
                "val_accuracy": val_accuracy,
                "val_examples": n_val,
                "test_accuracy": test_accuracy,
                "test_examples": n_test,
                "gap": gap,
                "z": gap / se if se > 0 else None,
            },
            suggestions=[
                "apply the same preprocessing to every split: axis order (H, W vs W, H), "
                "normalization statistics (the training split's), resizing, dtype",
                "check the test labels use the training labels' class map",
            ],
        )
    ]


# Regression and multi-label read the same two comparisons from each example's error
# (TaskKind.example_errors: squared error in target units, or the share of labels wrong): two
# splits' mean errors compared by a z-test on their empirical spread, so heavy-tailed residuals
# widen the noise rather than raise the finding. A rate must differ by the gaps above, a mean
# squared error by ERROR_MIN_RATIO (an RMSE about 1.2 times the other) and, as a few large
# residuals can move a mean of squares on a small split (a 60-example val split), by the ranks
# too: a one-sided Mann-Whitney test at the same NOISY_Z, which a few outliers do not sway.
ERROR_MIN_RATIO = 1.5


def _ranks_above(worse: np.ndarray, better: np.ndarray) -> bool:
    """Whether `worse`'s errors rank above `better`'s at NOISY_Z (one-sided Mann-Whitney)."""
    from scipy import stats

    if min(len(worse), len(better)) < 2:
        return False
    p = stats.mannwhitneyu(worse, better, alternative="greater").pvalue
    return bool(p <= stats.norm.sf(NOISY_Z))


def _clearly_above(worse: np.ndarray, better: np.ndarray, min_gap: float, is_rate: bool):
    """(gap, z) when `worse`'s mean error lies clearly above `better`'s, else None."""
    a, b = float(np.mean(worse)), float(np.mean(better))
    se = math.sqrt(
        np.var(worse, ddof=1) / len(worse) + np.var(better, ddof=1) / len(better)
        if min(len(worse), len(better)) > 1
        else 0.0
    )
    enough = a - b >= min_gap if is_rate else a >= ERROR_MIN_RATIO * b and a > 0
    if not enough or a - b < NOISY_Z * max(se, 1e-12):
        return None
    if not is_rate and not _ranks_above(worse, better):
        return None
    return a - b, (a - b) / se if se > 0 else None


def _error_text(kind: Any, errors: np.ndarray) -> str:
    """A split's error as a person reads it: an RMSE in target units, or a rate."""
    mean = float(np.mean(errors))
    if kind.error_is_rate:
        return f"{kind.error_name} {mean:.1%}"
    return f"{kind.error_name} {math.sqrt(mean):.4g}"


def held_out_error_findings(
    kind: Any, train: np.ndarray, val: np.ndarray, test: np.ndarray
) -> list[Finding]:
    """`train_labels_noisy` and `test_split_differs` for a task other than classification,
    from the short run's per-example errors (`kind.example_errors`) on a training sample, val
    and test: training targets fit worse than unseen test targets, or test worse than val."""
    found = []
    rate = kind.error_is_rate
    noisy = _clearly_above(train, test, NOISY_MIN_GAP, rate) if len(test) else None
    if noisy is not None:
        found.append(
            Finding(
                id="train_labels_noisy",
                severity="warning",
                message=(
                    f"after the short run the model's {_error_text(kind, test)} on the test "
                    f"targets it never saw is clearly below its {_error_text(kind, train)} on "
                    "the training targets it was fit to: the training targets disagree with "
                    "their inputs more often"
                ),
                evidence={
                    "train_error": float(np.mean(train)),
                    "train_examples": len(train),
                    "test_error": float(np.mean(test)),
                    "test_examples": len(test),
                    "gap": noisy[0],
                    "z": noisy[1],
                },
                suggestions=[
                    "check the preprocessing of the training targets: targets reordered apart "
                    "from their inputs, a unit or scale applied to part of them, a shifted map",
                    "look at the training examples with the largest errors",
                    "if the noise is real, consider a robust loss (huber) or cleaning",
                ],
            )
        )
    differs = _clearly_above(test, val, SPLIT_MIN_GAP, rate) if len(val) and len(test) else None
    if differs is not None:
        found.append(
            Finding(
                id="test_split_differs",
                severity="warning",
                message=(
                    f"after the short run the model's {_error_text(kind, val)} on val is "
                    f"clearly below its {_error_text(kind, test)} on test, though it saw "
                    "neither: the test split differs from the training data in how it was "
                    "made or processed"
                ),
                evidence={
                    "val_error": float(np.mean(val)),
                    "val_examples": len(val),
                    "test_error": float(np.mean(test)),
                    "test_examples": len(test),
                    "gap": differs[0],
                    "z": differs[1],
                },
                suggestions=[
                    "apply the same preprocessing to every split: feature order, scaling "
                    "(the training split's statistics), units of the targets, dtype",
                ],
            )
        )
    return found


# Class labels only: a regression's or multi-label task's targets are checked finite (and 0/1)
# as they load (data/validation.py); the checklist names that row in their terms.
CHECKS = (
    Check(
        "labels",
        order=30,
        run=lambda setup, batch: check_labels(setup.dataset),
        tasks=("classification",),
    ),
)
