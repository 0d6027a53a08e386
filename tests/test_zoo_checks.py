"""Detectors of issue 16's further zoo kinds: each fires on its fault and stays quiet on the
correct setup beside it (the bugs only JAX has: keys reused or shared, gathers past their table;
splits normalized or cut wrongly; dropout and BatchNorm settings; a model too small)."""

import ml_collections
import numpy as np
import pytest

from tests.conftest import small_config
from workflow import data, experiment
from workflow.diagnostics.checks import probes, tracing
from workflow.diagnostics.checks.capacity import model_too_small_finding
from workflow.diagnostics.checks.indices import check_indices
from workflow.diagnostics.checks.layers import check_layers
from workflow.diagnostics.checks.randomness import check_randomness
from workflow.diagnostics.checks.split_statistics import (
    check_split_statistics,
    label_runs,
    standardized_exactly,
)

MODELS = "tests.bugzoo.models"


def prepared(model: str | None = None, dataset: str | None = None, loss: str | None = None, **kw):
    """experiment.prepare of small_config with the zoo's pieces plugged in."""
    config = small_config("tabular", **kw)
    if model:
        config.model = ml_collections.ConfigDict({"name": f"{MODELS}:{model}"})
    if dataset:
        config.dataset.name = f"tests.bugzoo.pieces:{dataset}"
        config.dataset.kwargs = ml_collections.ConfigDict()
    if loss:
        config.loss = f"tests.bugzoo.pieces:{loss}"
    return experiment.prepare(config)


def ids(findings):
    return [f.id for f in findings]


def batch_of(setup):
    return probes.sample_batch(setup.dataset, 32, 0)


# ----------------------------------------------------------------------------- PRNG keys


@pytest.mark.parametrize(
    "model,expected",
    [
        ("FixedKeyDropoutMLP", ["prng_key_reused"]),
        ("SharedKeyDropoutMLP", ["prng_key_shared"]),
        pytest.param("TwinRngsDropoutMLP", ["prng_key_shared"], marks=pytest.mark.slow),
        ("SplitKeyDropoutMLP", []),
    ],
)
def test_keys_reused_across_steps_or_shared_between_layers_are_found(model, expected):
    setup = prepared(model)
    found = check_randomness(setup.task, setup.state, batch_of(setup)["x"])
    assert ids(found) == expected
    if expected:
        evidence = found[0].evidence
        assert evidence.get("reused_draws", 2) == 2  # both dropout layers' draws
        assert evidence.get("same_key_groups", [[[32, 64], [32, 64]]]) == [[[32, 64], [32, 64]]]


@pytest.mark.slow  # SplitKeyDropoutMLP above proves the quiet side by default
def test_nnx_dropout_and_models_without_randomness_keep_their_keys_apart():
    for model in ("tests.check_bugs:DropoutBatchNormMLP", "tests.bugzoo.models:UserMLP"):
        config = small_config("tabular")
        config.model = ml_collections.ConfigDict({"name": model})
        setup = experiment.prepare(config)
        assert check_randomness(setup.task, setup.state, batch_of(setup)["x"]) == [], model


def test_tracing_collects_draws_inside_jitted_calls_with_their_keys():
    import jax

    def two_masks(key, x):
        a, b = jax.random.split(key)
        return jax.random.bernoulli(a, 0.5, x.shape) * jax.random.bernoulli(b, 0.5, x.shape)

    def pick(eqn, values):
        return eqn.params["shape"], (jax.random.key_data(values[0]),)

    args = (jax.random.key(0), np.ones(3))
    drawn = tracing.collect(two_masks, args, ("random_bits",), pick)
    keys = [np.asarray(key).tobytes() for _, (key,) in drawn]
    assert [shape for shape, _ in drawn] == [(3,), (3,)] and keys[0] != keys[1]
    assert tracing.collect(lambda x: x * 2, (np.ones(3),), ("random_bits",), pick) == []


# ----------------------------------------------------------------------------- gathers


def test_token_ids_past_an_embedding_table_are_found_clamped_or_filled():
    for model, reads in (
        ("ClampedTableTokenClassifier", "the last row (clamped)"),
        ("SmallEmbedTokenClassifier", "NaN (filled)"),
    ):
        setup = prepared(model, "token_topics")
        [finding] = check_indices(setup.task, setup.state, batch_of(setup))
        assert finding.id == "index_out_of_range" and finding.severity == "error"
        [gather] = finding.evidence["gathers"]
        assert gather["largest"] == 201 and gather["out_of_range_reads"] == reads, model
        assert gather["rows"] == (128 if "Clamped" in model else 100)


def test_a_class_weight_table_short_of_the_classes_is_found_and_a_correct_one_is_not():
    setup = prepared(loss="class_weighted_cross_entropy")
    batch = batch_of(setup)
    [finding] = check_indices(setup.task, setup.state, batch)
    [gather] = finding.evidence["gathers"]
    assert gather["table_shape"] == [9] and gather["outside"] == int(np.sum(batch["y"] == 9))
    # The embedding sized to the vocabulary and the built-in loss's gather are in range.
    setup = prepared("TokenBagClassifier", "token_topics")
    assert check_indices(setup.task, setup.state, batch_of(setup)) == []


# ----------------------------------------------------------------------------- splits


def loaded(loader: str, normalize: bool = True):
    config = small_config("tabular")
    config.dataset.name = f"tests.bugzoo.pieces:{loader}"
    config.dataset.kwargs = ml_collections.ConfigDict()
    config.dataset.normalize = normalize
    return data.load_dataset(config.dataset, seed=0)


@pytest.mark.parametrize(
    "loader,normalize,expected",
    [
        ("normalized_per_split", True, ["split_normalized_separately"]),
        ("normalized_with_test_statistics", False, ["split_normalized_separately"]),
        ("normalized_with_train_statistics", False, []),
        ("normalized_with_train_statistics", True, []),
    ],
)
def test_a_test_split_normalized_with_its_own_statistics_is_found(loader, normalize, expected):
    found = check_split_statistics(loaded(loader, normalize))
    assert ids(found) == expected
    if expected:
        assert found[0].severity == "warning"
        assert found[0].evidence["test"]["max_abs_mean"] < 1e-5


def test_sampling_noise_is_not_taken_for_an_exact_standardization():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20))
    assert standardized_exactly(x) is None
    exact = (x - x.mean(0)) / x.std(0)
    assert standardized_exactly(exact)["per"] == "feature"
    images = rng.normal(size=(50, 8, 8, 3))
    per_channel = (images - images.mean((0, 1, 2))) / images.std((0, 1, 2))
    assert standardized_exactly(per_channel)["per"] == "channel"


def test_splits_cut_from_sorted_data_warn_and_a_sorted_loader_alone_is_info():
    [finding] = check_split_statistics(loaded("sorted_then_split"))
    assert finding.id == "split_from_sorted_data" and finding.severity == "warning"
    assert finding.evidence["classes_differ"]["test"]["classes_not_in_train"] == [8, 9]
    [info] = check_split_statistics(loaded("sorted_by_class"))
    assert info.id == "split_from_sorted_data" and info.severity == "info"
    assert check_split_statistics(loaded("normalized_with_train_statistics", False)) == []


def test_label_runs_of_a_shuffled_order_match_their_expectation():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 5000)
    runs, expected = label_runs(y)
    assert abs(runs - expected) < 0.05 * expected
    assert label_runs(np.sort(y))[0] == 10


# ----------------------------------------------------------------------------- layers


# The default run proves both firing through their counterfactual confirmation
# (tests/test_counterfactual.py: the same HighDropoutMLP, BatchNorm at batch size 2).
@pytest.mark.slow
def test_dropout_above_half_and_batchnorm_on_tiny_batches_are_found():
    found = check_layers(prepared("HighDropoutMLP"))
    assert ids(found) == ["dropout_too_high"]
    assert found[0].evidence["layers"] == [{"layer": "dropout", "type": "Dropout", "rate": 0.9}]
    config = small_config("tabular", batch_size=2)
    config.model = ml_collections.ConfigDict({"name": "tests.check_bugs:DropoutBatchNormMLP"})
    found = check_layers(experiment.prepare(config))
    assert ids(found) == ["batchnorm_small_batch"]
    assert found[0].evidence["batch_size"] == 2
    assert "--config.batch_size=32" in found[0].suggestions[0]


def test_dropout_and_batchnorm_used_as_the_docs_use_them_are_quiet():
    config = small_config("tabular", batch_size=8)
    config.model = ml_collections.ConfigDict({"name": "tests.check_bugs:DropoutBatchNormMLP"})
    assert check_layers(experiment.prepare(config)) == []
    assert check_layers(prepared("UserMLP", batch_size=2)) == []  # no BatchNorm: any batch


# ----------------------------------------------------------------------------- capacity


def test_a_model_with_fewer_parameters_than_a_batch_has_outputs_is_too_small():
    tiny = prepared("TinyMLP").state.params
    [finding] = model_too_small_finding(tiny, 32, 10, overfit_passed=False)
    assert finding.id == "model_too_small"
    assert finding.evidence["parameters"] == 20 * 2 + 2 + 2 * 2 + 2 + 2 * 10 + 10
    assert finding.evidence["batch_output_values"] == 320
    assert "linear1/kernel, is 2 wide" in finding.message
    # Memorized anyway, or large enough: no finding (a large model that fails has a bug).
    assert model_too_small_finding(tiny, 32, 10, overfit_passed=True) == []
    user = prepared("UserMLP").state.params
    assert model_too_small_finding(user, 32, 10, overfit_passed=False) == []


# ----------------------------------------------------------------------------- optimizer


def test_gradients_accumulated_and_never_reset_are_found_and_sound_optimizers_are_not():
    import dataclasses

    import optax

    from tests.bugzoo.pieces import accumulate_never_reset
    from workflow.diagnostics.checks.optimizer_memory import check_optimizer_memory

    setup = prepared("UserMLP")

    def found(tx):
        task = dataclasses.replace(setup.task, tx=tx)
        return check_optimizer_memory(task, setup.state)

    for inner in (optax.sgd(1e-2), optax.adam(1e-3)):
        [finding] = found(accumulate_never_reset(inner))
        assert finding.id == "gradients_never_reset"
        assert finding.evidence["persistence"] > 0.99
    for sound in (
        setup.task.tx,  # the configured Adam
        optax.sgd(1e-2, momentum=0.99),
        optax.adamw(1e-3, weight_decay=1e-2),
        optax.MultiSteps(optax.sgd(1e-2), 4).gradient_transformation(),
    ):
        assert found(sound) == []
