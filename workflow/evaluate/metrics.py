"""The classification metrics evaluate adds beside loss and accuracy (config.evaluate.metrics).

    top<k>_accuracy  the true class among the k most probable (`top5_accuracy`), k < classes
    macro_f1         F1 of each class, averaged with equal weight: a rare class counts as much
                     as a common one, which accuracy hides
    auc              area under the ROC curve of the positive class's probability (two classes)

Each is computed on every split, on all its examples, from the model's probabilities in eval
mode, by scikit-learn; summary.json's metrics get `{split}_{name}`.
"""

import re

import numpy as np

from workflow.errors import UsageError

NAMES = ("top<k>_accuracy", "macro_f1", "auc")
_TOP_K = re.compile(r"top(\d+)_accuracy")


def check_metrics(names: tuple[str, ...], num_classes: int) -> tuple[str, ...]:
    """`names` if each is a metric of NAMES that applies to `num_classes` classes; UsageError
    naming the first that does not and what is valid."""
    for name in names:
        top = _TOP_K.fullmatch(name)
        if top:
            k = int(top.group(1))
            if not 1 <= k < num_classes:
                raise UsageError(
                    f"evaluate.metrics: {name!r} needs 1 <= k < the number of classes "
                    f"({num_classes})"
                )
        elif name == "auc":
            if num_classes != 2:
                raise UsageError(
                    f"evaluate.metrics: 'auc' is for two classes; this data has {num_classes} "
                    "(use macro_f1 or top<k>_accuracy)"
                )
        elif name != "macro_f1":
            raise UsageError(
                f"evaluate.metrics: unknown metric {name!r}; valid: {', '.join(NAMES)}"
            )
    return tuple(names)


def compute(name: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One metric of `labels` (N,) against class `probabilities` (N, C)."""
    from sklearn import metrics

    classes = np.arange(probabilities.shape[1])
    top = _TOP_K.fullmatch(name)
    if top:
        return float(
            metrics.top_k_accuracy_score(labels, probabilities, k=int(top.group(1)), labels=classes)
        )
    if name == "macro_f1":
        predicted = probabilities.argmax(axis=-1)
        return float(
            metrics.f1_score(labels, predicted, average="macro", labels=classes, zero_division=0)
        )
    if len(np.unique(labels)) < 2:  # one class only: the ROC curve is undefined
        return float("nan")
    return float(metrics.roc_auc_score(labels, probabilities[:, 1]))


def split_metrics(
    names: tuple[str, ...], splits: dict[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, float]:
    """{`{split}_{name}`: value} for each split's (labels, probabilities)."""
    return {
        f"{split}_{name}": compute(name, labels, probabilities)
        for split, (labels, probabilities) in splits.items()
        if len(labels)
        for name in names
    }
