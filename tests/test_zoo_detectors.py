"""Detectors added for the zoo's user-written faults: each fires on its fault, stays quiet on a
correct setup and on the look-alikes that are not the fault."""

import math

import numpy as np
import pytest

from workflow.diagnostics.checks.outputs import bounded_loss_floor, bounded_outputs_finding

CE = "softmax_cross_entropy"


def saturated(low: float, high: float, n: int = 32, c: int = 10) -> np.ndarray:
    """Outputs after memorizing a batch through a bounded head: the true class at the top."""
    out = np.full((n, c), low + 1e-4)
    out[np.arange(n), np.arange(n) % c] = high - 1e-4
    return out


def test_the_loss_floor_of_bounded_outputs():
    assert bounded_loss_floor(0.0, 1.0, 10) == pytest.approx(math.log(math.e + 9) - 1)
    assert bounded_loss_floor(0.0, 1.0, 10) == pytest.approx(1.4612, abs=1e-4)
    assert bounded_loss_floor(-1.0, 1.0, 10) == pytest.approx(math.log(math.e + 9 / math.e) - 1)


@pytest.mark.parametrize("head,low,high", [("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0)])
def test_a_sigmoid_or_tanh_head_is_probabilities_into_a_logits_loss(head, low, high):
    floor = bounded_loss_floor(low, high, 10)
    finding = bounded_outputs_finding(saturated(low, high), floor * 1.001, 10, CE, True)
    assert finding.id == "softmax_before_loss" and finding.severity == "error"
    assert f"a {head} head" in finding.message
    assert finding.evidence["loss_floor"] == pytest.approx(floor)
    # Under a loss of the user's own: a warning, as for a softmax head.
    assert bounded_outputs_finding(saturated(low, high), floor, 10, "mine", False).severity == (
        "warning"
    )


def test_logits_and_unmoved_outputs_are_not_a_bounded_head():
    rng = np.random.default_rng(0)
    # Unbounded logits after memorizing: far outside [-1, 1].
    logits = saturated(-8.0, 8.0)
    assert bounded_outputs_finding(logits, 0.01, 10, CE, True) is None
    # Small logits of a model that barely moved (a tiny learning rate): inside [-1, 1] but not
    # saturated, and the loss near ln C, above the floor.
    small = rng.normal(0.0, 0.3, (32, 10)).clip(-0.99, 0.99)
    assert bounded_outputs_finding(small, 2.3, 10, CE, True) is None
    # Saturated but the loss far above the floor: not what a bounded head gives.
    assert bounded_outputs_finding(saturated(0.0, 1.0), 3.0, 10, CE, True) is None
    assert bounded_outputs_finding(None, 1.46, 10, CE, True) is None


def test_training_labels_that_disagree_more_than_test_labels_are_noisy():
    from workflow.diagnostics.checks import train_labels_noise_finding

    # 30% of 10 classes randomized: 73% agreement on train against 91% on test.
    [finding] = train_labels_noise_finding(0.654, 540, 0.915, 200, 10)
    assert finding.id == "train_labels_noisy" and finding.severity == "warning"
    assert finding.evidence["estimated_wrong_share"] == pytest.approx(0.29, abs=0.01)
    assert "about 29% of them look wrong" in finding.message


def test_a_model_that_fits_its_training_labels_best_raises_no_label_noise():
    from workflow.diagnostics.checks import train_labels_noise_finding

    assert train_labels_noise_finding(0.95, 540, 0.90, 200, 10) == []  # the usual gap
    assert train_labels_noise_finding(0.90, 540, 0.92, 200, 10) == []  # within 3 points
    # 5 points better on test, but 100 test examples leave it within noise (z < 3).
    assert train_labels_noise_finding(0.80, 540, 0.85, 100, 10) == []


def split_data(x_train, x_test, x_val=None):
    import types

    x_val = x_train[:0] if x_val is None else x_val
    return types.SimpleNamespace(x_train=x_train, x_val=x_val, x_test=x_test)


def test_test_examples_inside_the_training_data_are_a_leak():
    from workflow.diagnostics.checks.splits import check_splits

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(600, 8)), rng.normal(size=(200, 8))
    [leak] = check_splits(split_data(np.concatenate([train, test[:20]]), test))
    assert leak.id == "test_leaked_into_train" and leak.severity == "error"
    assert leak.evidence["test_examples_in_train"] == 20
    # In the val split the workflow carved from the loader's training data: a leak too.
    [leak] = check_splits(split_data(train, test, x_val=test[:5]))
    assert leak.evidence["test_examples_in_train"] == 5
    assert check_splits(split_data(train, test)) == []
    # One natural copy is no leak (at least 1% and 2 examples).
    assert check_splits(split_data(np.concatenate([train, test[:1]]), test)) == []


def test_training_rows_repeated_are_duplicates_but_a_few_copies_are_not():
    from workflow.diagnostics.checks.splits import check_splits

    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(600, 8)), rng.normal(size=(200, 8))
    [dup] = check_splits(split_data(np.concatenate([train, train, train]), test))
    assert dup.id == "duplicate_examples" and dup.severity == "warning"
    assert dup.evidence == {"repeated_rows": 1200, "rows": 1800, "distinct_rows": 600}
    assert check_splits(split_data(np.concatenate([train, train[:30]]), test)) == []  # 5%
    assert "every training input is the same" not in dup.message
    # Every input the same (a loader that zeroed them): said as such.
    [dup] = check_splits(split_data(np.zeros((600, 8)), test))
    assert dup.evidence["distinct_rows"] == 1 and "every training input is the same" in dup.message


def prepared(model_name: str):
    import ml_collections

    from tests.conftest import small_config
    from workflow import experiment

    config = small_config("tabular")
    config.model = ml_collections.ConfigDict({"name": model_name})
    return experiment.prepare(config)


def test_a_stack_of_linear_layers_is_found_and_a_relu_mlp_is_not():
    from workflow.diagnostics.checks import probes
    from workflow.diagnostics.checks.linearity import check_linearity

    # A dead ReLU net and a saturated sigmoid stack are near-constant, so trivially affine:
    # their own findings (dead_units, vanishing_gradients) speak, not this one.
    for model, expected in (
        ("tests.bugzoo.models:DeepLinearMLP", ["model_is_linear"]),
        ("tests.bugzoo.models:UserMLP", []),
        ("tests.check_bugs:DeadReluMLP", []),
        ("tests.check_bugs:DeepSigmoidMLP", []),
    ):
        setup = prepared(model)
        batch = probes.sample_batch(setup.dataset, 64, 0)
        found = check_linearity(setup.task, setup.state, batch["x"])
        assert [f.id for f in found] == expected, model


def test_a_relu_on_the_logits_is_outputs_that_are_not_logits():
    from workflow.diagnostics.checks.outputs import _output_kind, _softmax_before_loss_finding

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 10))
    assert _output_kind(logits) is None
    assert _output_kind(np.maximum(logits, 0.0)) == "relu-clipped"
    finding = _softmax_before_loss_finding(np.maximum(logits, 0.0), CE, True)
    assert finding.id == "softmax_before_loss" and finding.severity == "error"
    assert "relu" in finding.message
    # Non-negative outputs without exact zeros (softplus, exp) are not a relu, and all-zero
    # outputs are a dead network, which dead_units reports.
    assert _output_kind(np.exp(logits)) is None
    assert _output_kind(np.zeros((64, 10))) is None


def test_a_test_split_scored_far_below_val_differs_and_sampling_noise_does_not():
    from workflow.diagnostics.checks import test_split_finding

    [finding] = test_split_finding(0.90, 60, 0.40, 200)
    assert finding.id == "test_split_differs" and finding.severity == "warning"
    assert finding.evidence["gap"] == pytest.approx(0.5)
    assert test_split_finding(0.90, 60, 0.88, 200) == []  # within noise
    assert test_split_finding(0.85, 60, 0.90, 200) == []  # test better: not this finding
    assert test_split_finding(0.70, 60, 0.60, 200) == []  # 10 points, but z < 3 on 60 examples


def test_a_model_that_rejects_the_input_shape_is_one_line_naming_model_shape_and_layer():
    import ml_collections

    from tests.conftest import load_config
    from workflow import experiment
    from workflow.errors import UsageError

    config = load_config("configs/digits.py")
    config.progress = False
    config.model = ml_collections.ConfigDict({"name": "tests.bugzoo.models:FlaxMnistCNN"})
    with pytest.raises(UsageError) as raised:
        experiment.prepare(config)
    line = str(raised.value)
    assert "\n" not in line
    assert "model 'tests.bugzoo.models:FlaxMnistCNN' on inputs of shape (8, 8, 1)" in line
    assert "dot_general" in line and "(256,) and (3136,)" in line
