"""target_in_inputs: one input feature that alone gives the label or the target."""

import types

import numpy as np
import pytest
from sklearn import datasets

from tests.conftest import SKLEARN_SETS
from workflow.diagnostics.checks.target_leak import check_target_leak


def _setup(x, y, task="classification", names=None):
    """Just what the check reads: the training split, its classes and task, the names."""
    dataset = types.SimpleNamespace(
        x_train=np.asarray(x, np.float32),
        y_train=np.asarray(y),
        num_classes=int(np.max(y)) + 1 if task == "classification" else 1,
        info={"feature_names": names} if names else {},
    )
    kind = types.SimpleNamespace(name=task)
    return types.SimpleNamespace(dataset=dataset, task=types.SimpleNamespace(kind=kind))


def _standardized(x):
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)


def test_a_label_column_left_among_a_tables_features_is_named():
    x, y = datasets.load_wine(return_X_y=True)
    names = [*datasets.load_wine().feature_names, "cultivar"]
    leaked = _standardized(np.concatenate([x, y[:, None]], axis=1))  # as the workflow feeds it
    [finding] = check_target_leak(_setup(leaked, y, names=names))
    assert finding.id == "target_in_inputs" and finding.severity == "warning"
    assert "'cultivar'" in finding.message and "gives the label on its own" in finding.message
    [feature] = finding.evidence["features"]
    assert feature["feature"] == 13 and feature["accuracy"] == 1.0 and feature["values"] == 3


def test_a_regression_target_rescaled_into_the_inputs_is_found():
    x, y = datasets.load_diabetes(return_X_y=True)
    leaked = np.concatenate([x, 3.0 * y[:, None] + 1.0], axis=1)
    [finding] = check_target_leak(_setup(leaked, y, task="regression"))
    assert finding.evidence["features"][0]["feature"] == 10
    assert "correlates with the target almost perfectly" in finding.message


@pytest.mark.parametrize("load, task", SKLEARN_SETS)
def test_real_datasets_features_stay_quiet(load, task):
    x, y = load(return_X_y=True)
    assert check_target_leak(_setup(_standardized(x), y, task=task)) == []


def test_a_strong_but_imperfect_feature_stays_quiet():
    # The label with 5% of it replaced at random: predictive, not the answer itself.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    noisy = np.where(rng.random(2000) < 0.05, rng.integers(0, 4, 2000), y)
    x = np.concatenate([rng.normal(size=(2000, 5)), noisy[:, None]], axis=1)
    assert check_target_leak(_setup(x, y)) == []
    # ... and the same column without the noise fires.
    x[:, -1] = y
    assert check_target_leak(_setup(x, y))[0].evidence["features"][0]["feature"] == 5
