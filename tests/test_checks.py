"""Pre-training checks: each fires on a deliberately broken piece and stays quiet on sound ones."""

import dataclasses
import math
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from tests.conftest import small_config
from workflow import data, engine, experiment
from workflow.debug import report as debug_report
from workflow.diagnostics import checks
from workflow.diagnostics import findings as registry
from workflow.diagnostics.checks import gradients, inputs, modes, plugins
from workflow.diagnostics.findings import Finding

BUGS = "tests.check_bugs"


@pytest.fixture(scope="module")
def build():
    """prepare() once per distinct (kind, model, loss, model kwargs) for the whole module."""
    cache = {}

    def make(kind="tabular", model="", loss=None, **model_kwargs):
        key = (kind, model, loss, tuple(sorted(model_kwargs.items())))
        if key not in cache:
            config = small_config(kind, "" if ":" in model else model)
            if ":" in model:
                config.model = ml_collections.ConfigDict({"name": model, **model_kwargs})
            if loss:
                config.loss = loss
            setup = experiment.prepare(config)
            cache[key] = (setup, checks.sample_batch(setup.dataset))
        return cache[key]

    return make


def bug(name):
    return f"{BUGS}:{name}"


def load(loader, kind="tabular", normalize=True):
    """A dataset from a broken loader, through the real pipeline (validate, split, normalize)."""
    config = small_config(kind)
    config.dataset.name = bug(loader)
    config.dataset.kwargs = ml_collections.ConfigDict()
    config.dataset.normalize = normalize
    return data.load_dataset(config.dataset, seed=0)


def ids(findings):
    return [(f.id, f.severity) for f in findings]


def only(findings, finding_id):
    matches = [f for f in findings if f.id == finding_id]
    assert len(matches) == 1, ids(findings)
    return matches[0]


# ----------------------------------------------------------------------------- quiet


@pytest.mark.parametrize(
    "kind,model",
    [("tabular", "mlp"), ("image", "lenet"), ("sequence", "lstm"), ("sequence", "tcn")],
)
def test_builtin_models_at_init_pass_every_check(build, kind, model):
    setup, batch = build(kind, model)
    assert checks.run_checks(setup, batch) == []


def test_dropout_and_batchnorm_used_correctly_pass(build):
    setup, batch = build(model=bug("DropoutBatchNormMLP"))
    assert checks.run_checks(setup, batch) == []
    # The mode checks did look at both layers.
    types = {layer["type"] for layer in modes.mode_layers(setup.task, setup.state)}
    assert types == {"Dropout", "BatchNorm"}


def test_checks_do_not_mutate_the_state(build):
    setup, batch = build(model=bug("DropoutBatchNormMLP"))
    before = [np.asarray(v).copy() for v in _leaves(setup.state)]
    checks.run_checks(setup, batch)
    after = [np.asarray(v) for v in _leaves(setup.state)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def _leaves(state):
    return [
        jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v
        for v in jax.tree.leaves((state.params, state.model_state))
    ]


def test_squared_error_loss_passes_the_loss_checks(build):
    setup, batch = build(loss="squared_error")
    assert checks.check_output_and_loss(setup.task, setup.state, batch, 10) == []


# ----------------------------------------------------------------------------- inputs


def test_raw_pixels_without_normalization_fire_inputs_not_normalized():
    finding = only(
        checks.check_inputs(load("pixel_images", "image", normalize=False)), "inputs_not_normalized"
    )
    assert finding.severity == "warning"
    train = finding.evidence["splits"]["train"]
    assert train["mean"] > 100 and train["std"] > inputs.INPUT_STD_RANGE[1]
    assert set(finding.evidence["splits"]) == {"train", "val", "test"}
    assert finding.evidence["normalized_by_pipeline"] is False
    assert "normalize=True" in finding.suggestions[0]


def test_the_pipelines_normalization_fixes_raw_pixels():
    assert checks.check_inputs(load("pixel_images", "image", normalize=True)) == []


def test_token_ids_are_not_taken_for_unnormalized_inputs():
    # Raw pixels fire (above); the same large integers as token ids of a vocabulary must not.
    ds = load("pixel_images", "image", normalize=False)
    info = {**ds.info, "vocabulary": {"size": 256}}
    assert checks.check_inputs(dataclasses.replace(ds, info=info)) == []


def test_one_shifted_feature_is_reported_per_channel(build):
    setup, _ = build()
    ds = setup.dataset
    x = ds.x_train.copy()
    x[:, 3] += 5.0
    finding = only(checks.check_inputs(dataclasses.replace(ds, x_train=x)), "inputs_not_normalized")
    train = finding.evidence["splits"]["train"]
    assert "overall" not in train  # the overall statistics still look fine
    assert train["channels_off"] == 1 and list(train["worst_channels"]) == [3]
    assert "1 of 20 channels off" in finding.message


# ----------------------------------------------------------------------------- dtypes


def test_float64_inputs_warn_and_float_labels_are_errors(build):
    ds = build()[0].dataset
    finding = only(
        checks.check_dtypes(dataclasses.replace(ds, x_train=ds.x_train.astype(np.float64))),
        "dtype_mismatch",
    )
    assert finding.severity == "warning" and "float64" in finding.evidence["dtypes"]["x_train"]
    finding = only(
        checks.check_dtypes(dataclasses.replace(ds, y_val=ds.y_val.astype(np.float32))),
        "dtype_mismatch",
    )
    assert finding.severity == "error" and "y_val" in finding.evidence["dtypes"]


@pytest.mark.parametrize(
    "loader,kind,normalize,arrays,phrase",
    [
        ("float64_timestamps", "tabular", True, ["x_train", "x_val", "x_test"], "is lost"),
        ("uint8_images", "image", False, ["x_train", "x_val", "x_test"], "uint8 in the loader"),
    ],
)
def test_dtypes_as_loaded_fire_dtype_mismatch_though_the_pipeline_casts(
    loader, kind, normalize, arrays, phrase
):
    """What the cast hides: float64 values whose variation float32 rounds away, integer
    pixels fed unscaled (no normalization)."""
    ds = load(loader, kind, normalize=normalize)
    # The pipeline fed the model float32 / int32: only the recorded loader dtypes tell.
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    finding = only(checks.check_dtypes(ds), "dtype_mismatch")
    assert finding.severity == "warning"
    assert sorted(finding.evidence["dtypes"]) == sorted(arrays)
    assert all(phrase in finding.evidence["dtypes"][a] for a in arrays)
    assert arrays[0] in finding.message
    if loader == "float64_timestamps":
        assert ds.info["float32_rounding"] > 0.5  # steps of 128 s against a 30 s spread
        assert finding.suggestions[0].startswith("center those features in float64")


@pytest.mark.parametrize(
    "loader,kind,arrays",
    [
        ("float64_inputs", "tabular", ["x_train", "x_val", "x_test"]),  # numpy's default
        ("float_labels", "tabular", ["y_train", "y_val", "y_test"]),  # whole numbers
    ],
)
def test_dtypes_the_cast_loses_nothing_of_are_info(loader, kind, arrays):
    """float64 inputs of ordinary range and float labels that are whole numbers: info only
    (the cast loses nothing); uint8 pixels normalized by the pipeline: nothing at all."""
    ds = load(loader, kind)
    finding = only(checks.check_dtypes(ds), "dtype_mismatch")
    assert finding.severity == "info" and sorted(finding.evidence["dtypes"]) == sorted(arrays)
    if loader == "float64_inputs":
        assert ds.info["float32_rounding"] < 1e-6
    assert checks.check_dtypes(load("uint8_images", "image", normalize=True)) == []


def test_clean_data_and_model_have_no_dtype_mismatch(build):
    setup, batch = build()
    assert setup.dataset.info["source_dtypes"]["x_train"] == "float32"
    assert checks.check_dtypes(setup.dataset, setup.task, setup.state, batch) == []


def abstract_task_and_state(config, input_shape, num_classes=10):
    """Task and state of `config`'s model built under eval_shape: dtypes and shapes, no init."""
    built = {}

    def create():
        model = engine.build_model(config, input_shape, num_classes)
        built["task"], state = engine.create_train_state(model, config)
        return state

    state = jax.eval_shape(create)
    return built["task"], state


def test_half_precision_parameters_silently_promoted_fire_dtype_mismatch(build):
    setup, batch = build()
    config = small_config("tabular")
    config.model = ml_collections.ConfigDict({"name": bug("HalfPrecisionLayerMLP")})
    task, state = abstract_task_and_state(config, setup.dataset.input_shape)
    finding = only(checks.check_dtypes(setup.dataset, task, state, batch), "dtype_mismatch")
    assert finding.severity == "warning"
    assert sorted(finding.evidence["dtypes"]) == ["params/hidden/0/bias", "params/hidden/0/kernel"]
    assert "promoted to float32" in finding.evidence["dtypes"]["params/hidden/0/kernel"]
    assert "config.dtype=bfloat16" in " ".join(finding.suggestions)


def test_integer_outputs_fire_dtype_mismatch(build):
    setup, batch = build()
    config = small_config("tabular")
    config.model = ml_collections.ConfigDict({"name": bug("IntegerOutputMLP")})
    task, state = abstract_task_and_state(config, setup.dataset.input_shape)
    finding = only(checks.check_dtypes(setup.dataset, task, state, batch), "dtype_mismatch")
    assert finding.severity == "error"
    assert finding.evidence["dtypes"] == {"outputs": "int32: outputs must be floating-point logits"}


@pytest.mark.filterwarnings("ignore:Explicitly requested dtype float64")  # the x64-off half
def test_float64_outputs_under_jax_enable_x64_fire_dtype_mismatch(build):
    setup, batch = build()
    config = small_config("tabular")
    config.model = ml_collections.ConfigDict({"name": bug("Float64ConstantMLP")})
    with jax.enable_x64(True):
        task, state = abstract_task_and_state(config, setup.dataset.input_shape)
        finding = only(checks.check_dtypes(setup.dataset, task, state, batch), "dtype_mismatch")
    assert sorted(finding.evidence["dtypes"]) == ["jax_enable_x64", "outputs"]
    assert finding.evidence["dtypes"]["outputs"].startswith("float64")
    assert any("jax_enable_x64" in s for s in finding.suggestions)
    # The same model with x64 off (the default) computes in float32: nothing to report.
    task, state = abstract_task_and_state(config, setup.dataset.input_shape)
    assert checks.check_dtypes(setup.dataset, task, state, batch) == []


def test_jax_enable_x64_fires_dtype_mismatch(build):
    ds = build()[0].dataset
    with jax.enable_x64(True):
        finding = only(checks.check_dtypes(ds), "dtype_mismatch")
    assert list(finding.evidence["dtypes"]) == ["jax_enable_x64"]
    assert finding.evidence["jax_enable_x64"] is True
    assert checks.check_dtypes(ds) == []  # off again outside the context


# ----------------------------------------------------------------------------- labels


def test_constant_labels_fire_labels_corrupted():
    finding = only(checks.check_labels(load("constant_labels")), "labels_corrupted")
    assert finding.severity == "error"
    assert finding.evidence["class_counts"]["train"][1:] == [0] * 9


def test_test_labels_in_another_encoding_fire_labels_corrupted():
    finding = only(checks.check_labels(load("shifted_test_labels")), "labels_corrupted")
    assert finding.severity == "warning"
    assert set(finding.evidence["total_variation"]) == {"test"}  # val is carved from train
    assert finding.evidence["total_variation"]["test"] == pytest.approx(0.8, abs=0.1)


def test_labels_out_of_range_stop_the_checks(build):
    setup, batch = build()
    y_test = setup.dataset.y_test.copy()
    y_test[:3] = 10
    bad = dataclasses.replace(setup, dataset=dataclasses.replace(setup.dataset, y_test=y_test))
    findings = checks.run_checks(bad, batch)
    assert ids(findings) == [("labels_out_of_range", "error")]
    assert findings[0].evidence["splits"] == {"test": {"count": 3, "values": [10]}}


def test_label_summary_reports_imbalance(build):
    summary = checks.label_summary(build()[0].dataset)
    assert len(summary["class_counts"]["train"]) == 10
    assert 1.0 <= summary["train_imbalance"] < 3.0


@pytest.mark.parametrize(
    "train_acc,val_acc,classes,fires",
    [
        (1.0, 0.11, 10, True),
        (0.995, 0.55, 2, True),
        (1.0, 0.16, 10, False),  # above chance + half a chance level
        (1.0, 0.9, 10, False),
        (0.9, 0.1, 10, False),  # not memorized: says nothing about the labels
    ],
)
def test_labels_signal_finding(train_acc, val_acc, classes, fires):
    findings = checks.labels_signal_finding(train_acc, val_acc, classes)
    assert ids(findings) == ([("labels_corrupted", "error")] if fires else [])


def test_a_short_run_that_learned_nothing_yet_says_nothing_about_the_labels():
    # A slow-starting model (a user's LSTM at Adam 3e-4): val at chance after a short run whose
    # loss barely moved is a slow start, not labels without signal.
    assert checks.labels_signal_finding(1.0, 0.06, 10, short_run_loss_drop=0.015) == []
    # Random labels: the short run fits its training labels (loss down 29%), val stays at chance.
    [finding] = checks.labels_signal_finding(1.0, 0.13, 10, short_run_loss_drop=0.29)
    assert finding.id == "labels_corrupted"


# ----------------------------------------------------------------------------- outputs, loss


def test_softmax_output_fires_softmax_before_loss(build):
    setup, batch = build(model=bug("SoftmaxMLP"))
    findings = checks.run_checks(setup, batch)
    assert ids(findings) == [("softmax_before_loss", "error")]
    assert findings[0].evidence["outputs"] == "probabilities"
    assert findings[0].evidence["row_sum_range"] == pytest.approx([1.0, 1.0], abs=1e-5)


def test_log_softmax_output_is_explained_before_the_initial_loss(build):
    setup, batch = build(model=bug("LogSoftmaxMLP"), bias=20.0)
    findings = checks.run_checks(setup, batch)
    assert ids(findings) == [("softmax_before_loss", "warning"), ("initial_loss_off", "warning")]
    assert findings[0].evidence["outputs"] == "log-probabilities"


@pytest.mark.parametrize(
    "loss,loss_shape",
    [("broadcasting_cross_entropy", [64, 64]), ("batch_mixing_cross_entropy", [64])],
)
def test_broadcasting_losses_fire_shape_mismatch(build, loss, loss_shape):
    setup, batch = build(loss=bug(loss))
    finding = only(
        checks.check_output_and_loss(setup.task, setup.state, batch, 10), "shape_mismatch"
    )
    assert finding.severity == "error"
    assert finding.evidence["loss_shape"] == loss_shape
    assert "(64,) (64, 1)" in finding.evidence["rank_promotion"]


def test_a_summed_loss_fires_shape_mismatch(build):
    setup, batch = build(loss=bug("summed_cross_entropy"))
    finding = only(
        checks.check_output_and_loss(setup.task, setup.state, batch, 10), "shape_mismatch"
    )
    assert finding.severity == "error" and finding.evidence["loss_shape"] == []


def test_a_loss_that_raises_is_reported_and_skips_the_gradient_checks(build):
    setup, batch = build(loss=bug("transposed_cross_entropy"))
    findings = checks.run_checks(setup, batch)
    assert ids(findings) == [("shape_mismatch", "error")]
    assert "fails on outputs (64, 10)" in findings[0].message


def test_intended_class_weight_broadcast_is_only_info(build):
    setup, batch = build(loss=bug("class_weighted_cross_entropy"))
    findings = checks.check_output_and_loss(setup.task, setup.state, batch, 10)
    assert ids(findings) == [("shape_mismatch", "info")]


@pytest.mark.parametrize(
    "model,kwargs", [("ScaledInitMLP", {"scale": 100.0}), ("HugeBiasMLP", {"bias": 20.0})]
)
def test_exploding_init_or_huge_bias_fire_initial_loss_off(build, model, kwargs):
    setup, batch = build(model=bug(model), **kwargs)
    finding = only(
        checks.check_output_and_loss(setup.task, setup.state, batch, 10), "initial_loss_off"
    )
    ev = finding.evidence
    assert finding.severity == "warning"
    assert ev["expected"] == pytest.approx(math.log(10))
    assert ev["initial_loss"] > ev["expected"] + ev["tolerance"]


def test_initial_loss_under_another_loss_is_info_only(build):
    setup, batch = build(model=bug("HugeBiasMLP"), loss="squared_error", bias=20.0)
    findings = checks.check_output_and_loss(setup.task, setup.state, batch, 10)
    assert ids(findings) == [("initial_loss_off", "info")]


# ----------------------------------------------------------------------------- batch, mode


@pytest.mark.parametrize("model", ["BatchAxisNormMLP", "PinnedBatchNormMLP"])
def test_normalizing_over_the_batch_fires_batch_dependence(build, model):
    setup, batch = build(model=bug(model))
    finding = only(
        checks.check_batch_dependence(setup.task, setup.state, batch["x"]), "batch_dependence"
    )
    assert finding.severity == "error"
    assert max(finding.evidence["relative_differences"].values()) > 10 * modes.BATCH_DEPENDENCE_RTOL


def test_dropout_ignoring_eval_mode_fires_train_eval_mode(build):
    setup, batch = build(model=bug("AlwaysDropoutMLP"))
    findings = checks.run_checks(setup, batch)
    assert ids(findings) == [("train_eval_mode", "error")]  # and not batch_dependence
    assert findings[0].evidence["eval_vs_eval_relative_difference"] > 0.01


def test_dropout_pinned_to_deterministic_fires_train_eval_mode(build):
    setup, batch = build(model=bug("PinnedDropoutMLP"))
    finding = only(
        checks.check_train_eval_mode(setup.task, setup.state, batch["x"]), "train_eval_mode"
    )
    assert finding.evidence["layers"] == [{"layer": "dropout", "type": "Dropout", "rate": 0.3}]
    assert finding.evidence["train_vs_eval_relative_difference"] == 0.0


def test_a_train_argument_of_call_is_named_in_train_eval_mode(build):
    """A mode chosen by a __call__ argument (Linen's `train`) is named with its fix; a model
    whose layers follow model.train()/model.eval() has no such argument to name."""
    setup, batch = build(model=bug("TrainFlagDropoutMLP"))
    finding = only(
        checks.check_train_eval_mode(setup.task, setup.state, batch["x"]), "train_eval_mode"
    )
    assert finding.evidence["mode_arguments"] == ["train=False"]
    assert "TrainFlagDropoutMLP.__call__ takes train=False" in finding.message
    assert finding.suggestions[0].startswith("drop train=False from TrainFlagDropoutMLP.__call__")
    pinned, _ = build(model=bug("PinnedDropoutMLP"))
    graphdef, state = pinned.task.eval_graphdef, pinned.state
    model = nnx.merge(graphdef, state.params, state.model_state)
    assert modes.mode_arguments(model) == []


# ----------------------------------------------------------------------------- gradients


def test_stop_gradient_fires_no_gradient(build):
    setup, batch = build(model=bug("StopGradientMLP"))
    findings = checks.check_gradients(setup.task, setup.state, batch)
    assert ids(findings) == [("no_gradient", "error")]
    assert findings[0].evidence["zero_gradient_params"] == ["hidden/0/bias", "hidden/0/kernel"]


def test_dead_relu_layer_fires_dead_units_not_no_gradient(build):
    setup, batch = build(model=bug("DeadReluMLP"))
    findings = checks.check_gradients(setup.task, setup.state, batch)
    assert ids(findings) == [("dead_units", "error")]
    ev = findings[0].evidence
    assert ev["layers"] == [{"param": "out/kernel", "dead": 100, "inputs": 100, "fraction": 1.0}]
    assert set(ev["zero_gradient_params"]) == {"hidden/0/bias", "hidden/0/kernel", "out/kernel"}


def test_mostly_dead_relu_layer_fires_dead_units_warning(build):
    setup, batch = build(model=bug("DeadReluMLP"), dead_fraction=0.75)
    findings = checks.check_gradients(setup.task, setup.state, batch)
    assert ids(findings) == [("dead_units", "warning")]
    assert findings[0].evidence["layers"][0]["fraction"] == pytest.approx(0.75, abs=0.02)


def test_x1000_init_fires_exploding_gradients(build):
    setup, batch = build(model=bug("ScaledInitMLP"), scale=1e3, hidden_sizes=(32, 32))
    finding = only(checks.check_gradients(setup.task, setup.state, batch), "exploding_gradients")
    assert finding.severity == "warning"
    assert finding.evidence["global_grad_norm"] > gradients.EXPLODING_GRAD_NORM


def test_deep_sigmoid_stack_fires_vanishing_gradients(build):
    setup, batch = build(model=bug("DeepSigmoidMLP"))
    finding = only(checks.check_gradients(setup.task, setup.state, batch), "vanishing_gradients")
    assert finding.severity == "warning"
    assert "hidden/0/kernel" in finding.evidence["vanishing_params"]
    assert "out/kernel" not in finding.evidence["vanishing_params"]


# ----------------------------------------------------------------------------- non-finite


def test_log_of_zero_is_located(build):
    setup, batch = build(model=bug("HugeBiasMLP"), loss=bug("naive_cross_entropy"), bias=200.0)
    finding = checks.locate_nonfinite(setup.task, setup.state, batch)
    assert finding.id == "nan_or_inf" and finding.severity == "error"
    ev = finding.evidence
    assert ev["quantity"] == "loss" and ev["primitive"] == "log"
    assert ev["source"]["function"] == "naive_cross_entropy"
    assert ev["source"]["file"].endswith("check_bugs.py") and "jnp.log" in ev["source"]["code"]
    # In the full run the located op comes first, the non-finite gradients after it.
    findings = checks.run_checks(setup, batch)
    assert ids(findings)[:2] == [("nan_or_inf", "error"), ("exploding_gradients", "error")]
    assert "out/kernel" in findings[1].evidence["nonfinite_params"]


def test_nan_gradient_with_a_finite_loss_is_located(build):
    setup, batch = build(loss=bug("sqrt_norm_loss"))
    finding = checks.locate_nonfinite(setup.task, setup.state, batch)
    assert finding.evidence["quantity"] == "gradient" and math.isfinite(finding.evidence["loss"])
    assert finding.evidence["source"]["function"] == "sqrt_norm_loss"


def test_finite_loss_and_gradients_locate_nothing(build):
    setup, batch = build()
    assert checks.locate_nonfinite(setup.task, setup.state, batch) is None


# ----------------------------------------------------------------------------- ordering


def test_unnormalized_inputs_come_first_among_their_symptoms():
    config = small_config("image", "mlp")
    config.dataset.name = bug("pixel_images")
    config.dataset.kwargs = ml_collections.ConfigDict()
    config.dataset.normalize = False
    setup = experiment.prepare(config)
    findings = checks.run_checks(setup, checks.sample_batch(setup.dataset))
    assert ids(findings)[0] == ("inputs_not_normalized", "warning")
    assert {"initial_loss_off", "exploding_gradients"} <= {f.id for f in findings[1:]}


# ----------------------------------------------------------------------------- plugins


def test_checks_run_in_their_declared_order():
    names = [c.name for c in checks.declared_checks()]
    assert names == [
        "inputs",
        "extreme_values",
        "dtypes",
        "splits",
        "split_statistics",
        "target_leak",
        "labels",
        "target_link",
        "outputs",
        "indices",
        "nonfinite",
        "batch_dependence",
        "linearity",
        "train_eval_mode",
        "layers",
        "randomness",
        "gradients",
        "optimizer_memory",
        "schedule",
    ]


EXTRA_CHECK = """
from workflow.diagnostics.checks.plugins import LOSS_RUNS, Check
from workflow.diagnostics.findings import Finding


def check_extra(setup, batch):
    return [Finding("extra_found", "warning", "the extra check fired", {"n": len(batch["y"])})]


CHECKS = (Check("extra", order=45, run=check_extra, needs=(LOSS_RUNS,)),)
"""


@pytest.fixture
def extra_check_module(tmp_path, monkeypatch):
    """A check module beside the package's own (as if dropped into checks/), removed after."""
    name = f"{checks.__name__}.zz_extra"
    (tmp_path / "zz_extra.py").write_text(EXTRA_CHECK)
    monkeypatch.setattr(checks, "__path__", [*checks.__path__, str(tmp_path)])
    yield name
    sys.modules.pop(name, None)
    if hasattr(checks, "zz_extra"):
        delattr(checks, "zz_extra")


def test_a_new_check_needs_only_its_module_and_its_registry_entry(
    build, extra_check_module, monkeypatch
):
    row = "the extra property holds"
    extra = registry.FindingKind(
        "extra_found",
        "warning",
        "an extra property failed",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=row,
    )
    at = registry.declared_ids().index("cannot_overfit_batch")
    monkeypatch.setattr(registry, "KINDS", (*registry.KINDS[:at], extra, *registry.KINDS[at:]))
    monkeypatch.setattr(registry, "CHECKLIST_ROWS", (*registry.CHECKLIST_ROWS, row))

    # Discovered by module name and run in its declared place (after the outputs check).
    names = [c.name for c in checks.declared_checks()]
    assert names.index("outputs") < names.index("extra") < names.index("nonfinite")
    setup, batch = build()
    (found,) = checks.run_checks(setup, batch)
    assert (found.id, found.severity, found.evidence) == ("extra_found", "warning", {"n": 64})
    # Ranked by its registry entry: a cause of the batch that cannot be overfit, promoted.
    stuck = Finding("cannot_overfit_batch", "error", "could not memorize one batch")
    ranked = registry.rank_findings([stuck, found])
    assert [(f.id, f.severity) for f in ranked] == [
        ("extra_found", "error"),
        ("cannot_overfit_batch", "error"),
    ]
    # Its row in the debug report's checklist.
    rows = debug_report.checklist_rows(ranked)
    assert rows[-1] == [row, "error: `extra_found`", "n=64"]
    assert rows[-3][:2] == ["overfits one batch", "error: `cannot_overfit_batch`"]


def test_a_check_whose_gate_is_closed_does_not_run(build, extra_check_module, monkeypatch):
    extra = registry.FindingKind("extra_found", "warning", "an extra property failed", "debug")
    monkeypatch.setattr(registry, "KINDS", (*registry.KINDS, extra))
    setup, batch = build(loss=bug("transposed_cross_entropy"))  # the loss raises: LOSS_RUNS closed
    assert ids(checks.run_checks(setup, batch)) == [("shape_mismatch", "error")]


def test_a_check_needing_an_unknown_gate_or_declared_twice_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"check 'x' needs \['labels'\]; valid: "):
        plugins.Check("x", order=1, run=lambda setup, batch: [], needs=("labels",))
    package = tmp_path / "zz_twice"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module in ("a", "b"):
        (package / f"{module}.py").write_text(
            "from workflow.diagnostics.checks.plugins import Check\n"
            "CHECKS = (Check('twice', order=1, run=lambda setup, batch: []),)\n"
        )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(ValueError, match=r"declared twice in zz_twice: \['twice'\]"):
            plugins.declared_checks([str(package)], "zz_twice")
    finally:
        for name in ("zz_twice", "zz_twice.a", "zz_twice.b"):
            sys.modules.pop(name, None)
