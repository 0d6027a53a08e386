"""config.task beyond single-label classification: regression and multi-label, from the task
abstraction's numbers to each stage end to end (debug → evaluate → tune on small budgets)."""

import json
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.conftest import load_config, shrink
from workflow import api, config_lib, data, debug, experiment
from workflow.data import synthetic
from workflow.diagnostics import bias_variance
from workflow.diagnostics.checks.outputs import squashed_regression_finding
from workflow.engine import losses, tasks
from workflow.errors import UsageError


def small(setup: str, **overrides) -> ml_collections.ConfigDict:
    """configs/tasks.py:<setup> at a few seconds' size."""
    config = shrink(load_config("configs/tasks.py", setup))
    config.debug.overfit_steps = 400
    config.debug.train_steps = 100
    config.evaluate.train_sizes = ()
    config_lib.apply_overrides(config, overrides)
    return config


# ----------------------------------------------------------------------------- the abstraction


def test_regression_metrics_are_in_the_targets_units():
    """RMSE, MAE and R² from standardized sums equal numpy's on the original values."""
    rng = np.random.default_rng(0)
    y = rng.normal(50.0, 20.0, (40, 2))
    pred = y + rng.normal(0.0, 5.0, y.shape)
    kind = tasks.Regression(mean=tuple(y.mean(0)), std=tuple(y.std(0)))
    ys, ps = (y - y.mean(0)) / y.std(0), (pred - y.mean(0)) / y.std(0)
    sums = kind.batch_sums(jnp.asarray(ps), jnp.asarray(ys), jnp.ones(40))
    got = kind.summarize(sums, 40)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)), rel=1e-4)
    assert got["mae"] == pytest.approx(np.mean(np.abs(pred - y)), rel=1e-4)
    r2 = 1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)
    assert got["r2"] == pytest.approx(r2.mean(), rel=1e-4)
    assert got["error"] == got["rmse"] and got["accuracy"] == pytest.approx(1 - got["rmse"])


def test_multilabel_metrics_and_macro_f1():
    """Per-label error over every label of every example; F1 averaged over labels."""
    y = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]], np.float32)
    logits = np.array([[3, -1, 2], [-2, 1, 1], [1, 1, -1], [-1, -1, -1]], np.float32)
    kind = tasks.MultiLabel()
    got = kind.summarize(kind.batch_sums(jnp.asarray(logits), jnp.asarray(y), jnp.ones(4)), 4)
    assert got["error"] == pytest.approx(2 / 12)
    # label 0: tp 2 fp 0 fn 0 -> 1; label 1: tp 1 fp 1 fn 1 -> 0.5; label 2: tp 2 -> 1.
    assert got["macro_f1"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_initial_loss_references_are_the_distributions_loss():
    """Predicting the mean gives MSE 1 on standardized targets; the base rates give their
    binary entropy; the class prior gives the labels' entropy."""
    y = np.random.default_rng(1).normal(size=(500, 1)).astype(np.float32)
    y = (y - y.mean()) / y.std()
    mse = tasks.initial_loss_reference(
        tasks.Regression(), losses.get_loss("mse", "regression"), y, 1
    )
    assert mse == pytest.approx(1.0, rel=1e-4)
    multi = np.array([[1, 0]] * 3 + [[0, 0]], np.float32)  # base rates 0.75 and 0
    bce = losses.get_loss("auto", "multilabel")
    expected = (-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + 0.0) / 2
    assert tasks.initial_loss_reference(tasks.MultiLabel(), bce, multi, 2) == pytest.approx(
        expected, abs=1e-4
    )
    labels = np.array([0, 0, 1, 1])
    ce = losses.get_loss("auto")
    assert tasks.initial_loss_reference(tasks.Classification(), ce, labels, 2) == pytest.approx(
        math.log(2), rel=1e-5
    )


def test_losses_belong_to_their_task():
    """'auto' is the task's loss; another task's loss is refused naming the valid ones."""
    assert losses.get_loss("auto", "regression") is tasks.mse
    assert losses.get_loss("huber", "regression") is tasks.huber
    with pytest.raises(UsageError, match="loss 'mse' is not a classification loss; valid"):
        losses.get_loss("mse", "classification")
    with pytest.raises(UsageError, match="invalid value task='ranking'; valid: classification"):
        config_lib.validate_config(small("regression", task="ranking"))


def test_regression_error_noise_and_units_in_the_decomposition():
    """RMSE gaps are held to RMSE's noise (RMSE/sqrt(2n)) and read in target units."""
    kind = tasks.Regression()
    errors = bias_variance.Errors(50.0, 55.0, 56.0, 400, 50, 100, kind=kind)
    d = bias_variance.decompose(errors, 40.0, None, bias_variance.Tolerances())
    assert d.variance.noise_floor == pytest.approx(2 * math.sqrt(55**2 / 100 + 50**2 / 800))
    assert d.bias.label == "Train − Goal = 10" and "%" not in bias_variance.decomposition_line(d)


# ----------------------------------------------------------------------------- data


def test_csv_float_and_multi_column_targets(tmp_path):
    """task=regression reads a float column (standardized, stats kept); task=multilabel reads
    several 0/1 columns; classification refuses several label columns."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    target = 100 + 10 * x[:, 0]
    rows = [
        f"{a:.4f},{b:.4f},{c:.4f},{t:.4f},{int(a > 0)},{int(b > 0)}"
        for (a, b, c), t in zip(x, target, strict=True)
    ]
    path = tmp_path / "t.csv"
    path.write_text("a,b,c,y,p,q\n" + "\n".join(rows))
    cfg = data.default_config()
    cfg.name = str(path)
    cfg.kwargs = ml_collections.ConfigDict({"label_column": "y"})
    reg = data.load_dataset(cfg, seed=0, task="regression")
    assert reg.y_train.shape[1] == 1 and abs(float(reg.y_train.mean())) < 0.2
    assert reg.task.mean[0] == pytest.approx(
        np.mean(reg.task.to_target_units(reg.y_train)), rel=1e-5
    )
    assert reg.input_shape == (5,)  # p, q stay features here
    cfg.kwargs = ml_collections.ConfigDict({"label_column": "p,q"})
    multi = data.load_dataset(cfg, seed=0, task="multilabel")
    assert multi.y_train.shape[1] == 2 and set(np.unique(multi.y_train)) <= {0.0, 1.0}
    assert multi.summary()["splits"]["train"]["label_counts"]
    with pytest.raises(UsageError, match="names 2 columns, but task=classification has one label"):
        data.load_dataset(cfg, seed=0)
    with pytest.raises(UsageError, match="the labels are not classes.*task=regression"):
        cfg.kwargs = ml_collections.ConfigDict({"label_column": "y"})
        data.load_dataset(cfg, seed=0)


def test_bad_targets_are_refused_in_one_line(tmp_path):
    """Non-finite regression targets, multi-label targets not 0/1, and a constant target."""
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)

    def load(y, task):
        path = tmp_path / f"{task}.npz"
        np.savez(path, x=x, y=y)
        cfg = data.default_config()
        cfg.name = str(path)
        return data.load_dataset(cfg, seed=0, task=task)

    y = x[:, 0].copy()
    y[3] = np.nan
    with pytest.raises(UsageError, match=r"non-finite targets \(NaN/inf\) in 1 examples"):
        load(y, "regression")
    with pytest.raises(UsageError, match="targets that are not 0 or 1 .*e.g. 2"):
        load(np.full((50, 2), 2.0), "multilabel")
    with pytest.raises(UsageError, match="regression target 0 has the same value 3 in every"):
        load(np.full(50, 3.0), "regression")
    assert load(x[:, :2], "regression").task.name == "regression"


def test_synthetic_regression_knows_its_irreducible_error():
    """The regression kind's irreducible error is target_noise; a kind that does not fit the
    task is refused."""
    raw = synthetic.make_synthetic(
        {"kind": "regression", "target_noise": 0.5}, seed=0, task="regression"
    )
    assert raw["irreducible_error"] == 0.5 and raw["y_train"].dtype == np.float32
    with pytest.raises(UsageError, match="kind='tabular' does not fit task='regression'"):
        synthetic.make_synthetic({"kind": "tabular"}, seed=0, task="regression")
    with pytest.raises(
        UsageError, match="unknown synthetic option.*label_noise.*kind='regression'"
    ):
        synthetic.make_synthetic(
            {"kind": "regression", "label_noise": 0.1}, seed=0, task="regression"
        )


# ----------------------------------------------------------------------------- checks


def test_squashed_regression_head_fires_and_stays_quiet():
    """Outputs held inside [-1, 1] while targets lie beyond: fires; outputs that reach the
    targets: quiet."""
    targets = np.linspace(-2.5, 2.5, 64)[:, None]
    squashed = np.tanh(targets)
    finding = squashed_regression_finding(squashed, targets, "mse")
    assert finding is not None and finding.id == "softmax_before_loss"
    assert "tanh" in finding.message and finding.severity == "error"
    assert squashed_regression_finding(targets * 0.98, targets, "mse") is None


def test_debug_regression_checklist_in_its_terms(tmp_path):
    """The clean regression setup: no warning, every row in regression's words (the labels row
    is the held-out comparison of training and test targets); the initial loss measured
    against predicting the mean."""
    summary = debug.run_debug(experiment.prepare(small("regression")), str(tmp_path))
    assert [f.id for f in summary.findings if f.severity != "info"] == []
    report = (tmp_path / "report.md").read_text()
    assert "| training targets fit like unseen test targets | passed |" in report
    assert "not applicable" not in report
    assert "| initial loss near that of predicting the mean | passed |" in report
    assert summary.metrics["overfit_passed"]
    assert summary.metrics["short_run_val_error"] == pytest.approx(
        1 - summary.metrics["short_run_val_accuracy"]
    )


def test_held_out_checks_in_regression_and_multilabel_terms():
    """Training targets fit clearly worse than unseen test targets fire `train_labels_noisy`,
    test clearly worse than val `test_split_differs`; the same spread, heavy tails included,
    stays quiet."""
    from workflow.diagnostics.checks import held_out_error_findings

    rng = np.random.default_rng(0)
    reg = tasks.Regression(mean=(100.0,), std=(20.0,))

    def squared(scale, n):  # per-example squared errors of residuals with this spread
        return rng.normal(0.0, scale, n) ** 2

    noisy = held_out_error_findings(reg, squared(30, 800), squared(10, 200), squared(10, 300))
    assert [f.id for f in noisy] == ["train_labels_noisy"]
    assert "RMSE" in noisy[0].message and noisy[0].evidence["z"] > 3
    differs = held_out_error_findings(reg, squared(8, 800), squared(10, 200), squared(25, 300))
    assert [f.id for f in differs] == ["test_split_differs"]
    assert held_out_error_findings(reg, squared(8, 800), squared(10, 200), squared(10, 300)) == []
    heavy = [rng.standard_t(2, n) ** 2 for n in (800, 200, 300)]  # one law, heavy tails
    assert held_out_error_findings(reg, *heavy) == []
    # A small val split beside a test split with a few large residuals: the same law (the
    # regression_lr_1e-8 repair's rerun, 60 val examples), quiet.
    tail = np.random.default_rng(1)
    val, test = tail.normal(0, 10, 60) ** 2, tail.normal(0, 10, 200) ** 2
    test[:10] = 90.0**2  # ten large residuals: the mean of squares moves, the ranks barely
    gap = np.mean(test) - np.mean(val)
    assert gap / np.sqrt(np.var(test) / 200 + np.var(val) / 60) > 3  # the means alone: "differs"
    assert held_out_error_findings(reg, squared(10, 800), val, test) == []

    multi = tasks.MultiLabel()
    wrong = [rng.random((n, 3)) < p for n, p in ((800, 0.30), (200, 0.05), (300, 0.05))]
    found = held_out_error_findings(multi, *(w.mean(-1) for w in wrong))
    assert [f.id for f in found] == ["train_labels_noisy"]
    assert "per-label error" in found[0].message
    same = [rng.random((n, 3)) < 0.05 for n in (800, 200, 300)]
    assert held_out_error_findings(multi, *(w.mean(-1) for w in same)) == []


def test_debug_finds_noisy_regression_targets(tmp_path):
    """A third of the training targets shuffled apart from their inputs: the debug stage says
    the training targets disagree with their inputs (the clean setup above stays quiet)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 8)).astype(np.float32)
    y = (x @ rng.normal(size=8) + 0.1 * rng.normal(size=1200)).astype(np.float32)
    y_train = y[:900].copy()
    moved = rng.choice(900, 300, replace=False)
    y_train[moved] = y_train[rng.permutation(moved)]
    data = {"x_train": x[:900], "y_train": y_train, "x_test": x[900:], "y_test": y[900:]}
    result = api.debug(None, data, config=small("regression"), workdir=str(tmp_path))
    noisy = [f for f in result.findings if f.id == "train_labels_noisy"]
    assert noisy and noisy[0].severity == "warning", [f.id for f in result.findings]
    assert noisy[0].evidence["train_error"] > 1.5 * noisy[0].evidence["test_error"]


# ----------------------------------------------------------------------------- end to end


def test_regression_debug_evaluate_tune_through_the_api(tmp_path):
    """task=regression through the Python API: debug passes, evaluate reports RMSE/MAE/R² and a
    bias-variance table in RMSE with residuals, tune searches and reports RMSE."""
    config = small("regression")
    common = {"config": config, "task": "regression"}
    checked = api.debug(workdir=str(tmp_path / "debug"), **common)
    assert checked.status == "ok"
    evaluated = api.evaluate(workdir=str(tmp_path / "evaluate"), **common, num_steps=200)
    m = evaluated.metrics
    assert {"test_rmse", "test_mae", "test_r2", "test_error"} <= set(m)
    assert "test_accuracy" not in m and m["test_error"] == m["test_rmse"]
    assert m["test_r2"] > 0.3 and m["irreducible_error"] == 0.3
    rows = evaluated.summary["bias_variance"]["rows"]
    assert rows[0][0] == "Irreducible error" and rows[0][1] == "0.3"
    analysis = evaluated.summary["error_analysis"]
    assert analysis["task"] == "regression"
    worst = analysis["splits"]["val"]["worst_examples"]
    assert worst[0]["absolute_error"] >= worst[-1]["absolute_error"]
    assert (tmp_path / "evaluate" / "plots" / "residuals.png").exists()
    tuned = api.tune(
        workdir=str(tmp_path / "tune"),
        **common,
        **{
            "search.num_trials": 4,
            "search.rounds": 1,
            "search.range_test.enabled": False,
            "search.retrain_best": False,
        },
    )
    assert len(tuned.summary["trials"]) == 4
    assert 0 < tuned.metrics["best_trial_val_error"] < 2
    # The report reads in the task's terms: each trial's val RMSE (never "acc = 1 - RMSE"),
    # the initial loss against predicting the mean (not the labels' entropy).
    report = (tmp_path / "tune" / "report.md").read_text()
    assert "acc = " not in report and "best val_rmse" in report
    for trial in tuned.summary["trials"]:
        assert f"rmse = {1 - trial['val_accuracy']:.3f}  lr : " in report
    assert "predicting the training targets' mean" in report and "ln C" not in report


# Slow: the regression path through the API proves a task end to end by default; multi-label's
# debug and error analysis have their own default tests (the zoo's clean_multilabel_mlp).
@pytest.mark.slow
def test_multilabel_debug_evaluate_tune_on_digits(tmp_path):
    """task=multilabel on digits with three yes/no labels: debug passes, evaluate reports the
    per-label error, macro F1 and the worst labels, tune searches."""
    config = small("multilabel")
    checked = api.debug(config=config, workdir=str(tmp_path / "debug"))
    assert checked.status == "ok", [f.id for f in checked.findings]
    evaluated = api.evaluate(config=config, workdir=str(tmp_path / "evaluate"), num_steps=200)
    m = evaluated.metrics
    assert m["test_error"] == pytest.approx(1 - m["test_accuracy"]) and m["test_error"] < 0.3
    assert 0.5 < m["test_macro_f1"] <= 1
    analysis = evaluated.summary["error_analysis"]
    assert analysis["label_names"] == ["even", "greater_than_4", "prime"]
    val = analysis["splits"]["val"]
    assert val["label_errors"][val["worst_labels"][0]] == max(val["label_errors"])
    assert "| label | train positives |" in (tmp_path / "evaluate" / "report.md").read_text()
    tuned = api.tune(
        config=config,
        workdir=str(tmp_path / "tune"),
        **{
            "search.num_trials": 4,
            "search.rounds": 1,
            "search.range_test.enabled": False,
            "search.retrain_best": False,
        },
    )
    assert len(tuned.summary["trials"]) == 4


@pytest.mark.slow
def test_diabetes_regression_end_to_end(tmp_path):
    """scikit-learn's diabetes set: evaluate reports RMSE in the target's units (25..346)."""
    evaluated = api.evaluate(
        config=small("diabetes"), workdir=str(tmp_path), num_steps=300, batch_size=32
    )
    m = evaluated.metrics
    assert 40 < m["test_rmse"] < 90 and m["test_r2"] > 0.2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dataset"]["task"]["name"] == "regression"
    assert 140 < summary["dataset"]["task"]["target_mean"][0] < 165


@pytest.mark.parametrize("setup", ["regression", "multilabel"])
def test_task_initial_loss_check_fires_on_an_exploding_init_and_stays_quiet(setup):
    """initial_loss_off in the task's terms: weights x100 put the step-0 loss far above that of
    predicting the mean / the base rates; the default init stays within the accepted band."""
    from workflow.diagnostics import checks

    clean = experiment.prepare(small(setup))
    batch = checks.sample_batch(clean.dataset, 64, 0)
    quiet = checks.check_output_and_loss(clean.task, clean.state, batch, clean.dataset.num_classes)
    assert [f.id for f in quiet] == []
    broken = experiment.prepare(small(setup, **{"model.name": "tests.check_bugs:ScaledInitMLP"}))
    found = checks.check_output_and_loss(
        broken.task, broken.state, batch, clean.dataset.num_classes
    )
    off = next(f for f in found if f.id == "initial_loss_off")
    assert off.evidence["initial_loss"] > off.evidence["accepted"][1]
    assert off.evidence["expected"] == pytest.approx(
        1.0 if setup == "regression" else off.evidence["expected"], rel=0.2
    )


@pytest.mark.slow
def test_arrays_in_memory_with_task_regression_through_the_api(tmp_path):
    """data as a dict of arrays with float targets, task=regression: the in-memory path reads
    them as targets (a test split carved, not stratified) and debug runs in regression's terms."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    result = api.debug(
        data={"x": x.astype(np.float32), "y": y},
        workdir=str(tmp_path),
        task="regression",
        **{"debug.overfit_steps": 100, "debug.train_steps": 40, "progress": False},
    )
    assert result.summary["dataset"]["task"]["name"] == "regression"
    assert result.summary["dataset"]["splits"]["test"]["size"] == round(0.2 * len(y))
    assert result.summary["config"]["loss"] == "auto" and result.metrics["short_run_val_error"] > 0


def test_the_searchs_stop_at_the_goal_reads_in_the_tasks_terms():
    """tune's "stopped at the goal" sentence: a regression's RMSE in target units, a rate as %."""
    from workflow.tune.report import stop_text

    stopped = {"round": 0, "slot": 3, "val_error": 3.21, "goal_val_error": 3.5}
    stopped["skipped_trials"] = 5
    text = stop_text(stopped, {"task": "regression"})
    assert "reached val RMSE 3.21, at or below 3.5 (the goal" in text and "%" not in text
    rate = stop_text({**stopped, "val_error": 0.04, "goal_val_error": 0.05}, {})
    assert "reached val error 4.00%, at or below 5.00%" in rate
    assert text.endswith("skipped 5 trials (the rest of its round)")
    # A trial at the goal at its round's end skips only later rounds: nothing of its own.
    config = {"search": {"refine_trials": 16}}
    later = stop_text({**stopped, "skipped_trials": 16, "skipped_rounds": 1}, config)
    assert later.endswith("skipped 16 trials (1 later round)")
    both = stop_text({**stopped, "skipped_trials": 19, "skipped_rounds": 1}, config)
    assert both.endswith("skipped 19 trials (the rest of its round and 1 later round)")
