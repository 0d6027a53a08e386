"""Real, offline example data for the tasks beyond single-label classification (config.task),
as dataset loaders (`--config.dataset.name=workflow.data.examples:diabetes`); configs/tasks.py
uses them.

* `diabetes`: scikit-learn's diabetes regression set (442 patients, 10 features, a disease
  progression score one year later, 25..346); a fixed 20% test split.
* `digits_multilabel`: scikit-learn's 8x8 digits with three yes/no labels per image built from the
  digit: "is even", "is greater than 4", "is prime"; the digits set's fixed test split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow.data.sources import digits_arrays
from workflow.data.synthetic import rng_for

# The fixed test split of the diabetes set: the same patients whatever the run seed.
DIABETES_TEST_FRACTION = 0.2
DIABETES_SPLIT_SEED = 0
# The multi-label digits' labels, each a yes/no question about the digit.
DIGIT_LABELS = {
    "even": lambda d: d % 2 == 0,
    "greater_than_4": lambda d: d > 4,
    "prime": lambda d: np.isin(d, (2, 3, 5, 7)),
}


def diabetes() -> dict[str, Any]:
    """scikit-learn's diabetes regression set (bundled with it: no download), raw loader dict."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    order = rng_for(DIABETES_SPLIT_SEED, 11).permutation(len(y))
    n_test = int(round(DIABETES_TEST_FRACTION * len(y)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return {
        "x_train": x[train].astype(np.float32),
        "y_train": y[train].astype(np.float32),
        "x_test": x[test].astype(np.float32),
        "y_test": y[test].astype(np.float32),
        "kind": "tabular",
        "info": {
            "source": "sklearn.datasets.load_diabetes (target: disease progression after a year)",
            "test_split": f"fixed {DIABETES_TEST_FRACTION:.0%} (seed {DIABETES_SPLIT_SEED})",
        },
    }


def digits_multilabel() -> dict[str, Any]:
    """The 8x8 digits with multi-hot targets (DIGIT_LABELS), raw loader dict."""
    raw = digits_arrays()
    out = {k: raw[k] for k in ("x_train", "x_test", "kind")}
    for split in ("train", "test"):
        digit = np.asarray(raw[f"y_{split}"])
        out[f"y_{split}"] = np.stack([ask(digit) for ask in DIGIT_LABELS.values()], axis=1).astype(
            np.float32
        )
    out["info"] = {
        **raw["info"],
        "source": "sklearn.datasets.load_digits with labels " + ", ".join(DIGIT_LABELS),
        "label_names": list(DIGIT_LABELS),
    }
    return out
