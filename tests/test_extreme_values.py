"""extreme_values: a few values far beyond all the others in an input feature or a target."""

import types

import numpy as np
import pytest
from sklearn import datasets

from tests.conftest import SKLEARN_SETS
from workflow.diagnostics.checks.extreme_values import check_extreme_values


class _Regression:
    name = "regression"

    @staticmethod
    def to_target_units(y):
        return y


def _setup(x, y, task="classification", names=None):
    """Just what the check reads: the training split (not standardized), names, the task."""
    kind = _Regression() if task == "regression" else types.SimpleNamespace(name=task)
    dataset = types.SimpleNamespace(
        x_train=np.asarray(x, np.float32),
        y_train=np.asarray(y),
        info={"feature_names": names} if names else {},
        normalization=None,
        kind="tabular",
    )
    return types.SimpleNamespace(dataset=dataset, task=types.SimpleNamespace(kind=kind))


def test_a_missing_value_code_in_a_feature_is_named_with_its_value():
    x, y = datasets.load_breast_cancer(return_X_y=True)
    names = list(datasets.load_breast_cancer().feature_names)
    x = x.copy()
    x[::40, 3] = -999.0  # 'mean area' missing on 15 rows, coded -999
    [finding] = check_extreme_values(_setup(x, y, names=names))
    assert finding.id == "extreme_values" and finding.severity == "warning"
    assert "input feature 'mean area'" in finding.message and "-999" in finding.message
    assert finding.evidence["columns"]["input feature 'mean area'"]["count"] == 15


def test_regression_targets_in_mixed_units_are_found():
    x, y = datasets.load_diabetes(return_X_y=True)
    y = y.copy()
    y[:4] *= 1000.0  # four rows in thousandths
    [finding] = check_extreme_values(_setup(x, y, task="regression"))
    assert "the target" in finding.message
    assert finding.evidence["columns"]["the target"]["count"] == 4


@pytest.mark.parametrize("load, task", SKLEARN_SETS)
def test_real_datasets_stay_quiet(load, task):
    x, y = load(return_X_y=True)
    assert check_extreme_values(_setup(x, y, task=task)) == []


def test_heavy_tails_and_one_outlier_stay_quiet():
    rng = np.random.default_rng(0)
    heavy = np.stack(
        [
            rng.lognormal(0.0, 2.0, 5000),  # incomes-like
            rng.pareto(1.0, 5000),  # a power law
            rng.standard_cauchy(5000),
        ],
        axis=1,
    )
    assert check_extreme_values(_setup(heavy, rng.integers(0, 2, 5000))) == []
    one = rng.normal(size=(500, 3))
    one[7, 0] = 1e6  # a single wild value: not a code or a unit on several rows
    assert check_extreme_values(_setup(one, rng.integers(0, 2, 500))) == []
    # Code-like values inside the range of the others are data: -1 among -5..5, 99-year-olds.
    values = np.stack([rng.uniform(-5, 5, 2000), rng.integers(0, 101, 2000)], axis=1)
    values[:30, 0], values[:30, 1] = -1.0, 99.0
    assert check_extreme_values(_setup(values, rng.integers(0, 2, 2000))) == []


def test_an_image_sets_pixels_are_not_judged_column_by_column():
    # Codes and mixed units are a table's faults; an image set's pixels are left alone.
    x, y = datasets.load_breast_cancer(return_X_y=True)
    x = x.copy()
    x[::40, 3] = -999.0
    setup = _setup(x, y)
    assert check_extreme_values(setup)  # as a table: found
    setup.dataset.kind = "image"
    assert check_extreme_values(setup) == []
