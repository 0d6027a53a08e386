"""train_labels_noisy for a regression whose training targets lost their inputs: the test
targets follow their inputs linearly, a fit on the training targets does not predict them."""

import os
import types

import numpy as np
from sklearn import datasets

from tests.conftest import ROOT
from workflow import data
from workflow.config_lib import load_config_file
from workflow.diagnostics.checks.target_link import check_target_link


def _split(y_train=None, y_test=None):
    x, y = datasets.load_diabetes(return_X_y=True)
    return types.SimpleNamespace(
        x_train=x[:360],
        y_train=y[:360] if y_train is None else y_train,
        x_test=x[360:],
        y_test=y[360:] if y_test is None else y_test,
    )


def test_training_targets_shuffled_apart_from_their_inputs_are_found():
    y = datasets.load_diabetes(return_X_y=True)[1]
    [finding] = check_target_link(_split(y_train=np.random.default_rng(0).permutation(y[:360])))
    assert finding.id == "train_labels_noisy" and finding.severity == "warning"
    assert finding.evidence["r2_within_test"] > 0.3 and finding.evidence["r2_train_to_test"] < 0.15
    assert "do not go with their inputs" in finding.message


def test_clean_or_signal_free_targets_stay_quiet():
    assert check_target_link(_split()) == []  # diabetes as it comes
    # Every target shuffled, test too: no signal anywhere to compare with.
    y = datasets.load_diabetes(return_X_y=True)[1]
    rng = np.random.default_rng(0)
    assert check_target_link(_split(rng.permutation(y[:360]), rng.permutation(y[360:]))) == []
    # The workflow's own synthetic regression (configs/tasks.py:regression).
    config = load_config_file(os.path.join(ROOT, "configs/tasks.py"), "regression")
    synthetic_split = data.load_dataset(config.dataset, seed=0, task="regression")
    assert check_target_link(synthetic_split) == []
