"""The debug stage on clean and broken setups: the right finding on top, quiet when clean."""

import pytest

from tests.bugzoo.cases import synthetic
from tests.conftest import read_summary, run_stage, small_config
from workflow import debug, experiment


def debug_config(model: str | None = None, loss: str | None = None, dataset: str | None = None):
    """A small synthetic setup with short debug budgets; broken pieces by import path."""
    config = synthetic(model_name=model, loss=loss, dataset=dataset, num_steps=200)()
    config.debug.overfit_steps = 400
    config.debug.train_steps = 200
    return config


def run_debug(config, workdir):
    return debug.run_debug(experiment.prepare(config), str(workdir))


def test_clean_setup_passes_every_check(tmp_path):
    summary = run_debug(debug_config(), tmp_path)
    serious = [f for f in summary.findings if f.severity in ("error", "warning")]
    assert serious == [], serious
    assert summary.status == "ok" and summary.metrics["overfit_passed"]
    report = (tmp_path / "report.md").read_text()
    assert "| overfits one batch | passed |" in report
    assert (tmp_path / "plots" / "overfit_batch.png").exists()
    assert "## Model" in report and (tmp_path / "model_summary.txt").exists()
    assert [layer["path"] for layer in summary.model_summary] == ["", "hidden/0", "out"]


@pytest.mark.parametrize(
    "broken, expected",
    [
        ({"model": "tests.check_bugs:SoftmaxMLP"}, "softmax_before_loss"),
        ({"model": "tests.check_bugs:StopGradientMLP"}, "no_gradient"),
        ({"model": "tests.check_bugs:DeadReluMLP"}, "dead_units"),
        ({"loss": "tests.curve_bugs:negated_cross_entropy"}, "loss_increasing"),
        ({"dataset": "tests.curve_bugs:random_labels"}, "labels_corrupted"),
    ],
)
def test_broken_setup_gets_the_right_top_finding(tmp_path, broken, expected):
    summary = run_debug(debug_config(**broken), tmp_path)
    ids = [f.id for f in summary.findings]
    assert ids and ids[0] == expected, ids
    assert summary.status == "failed"


# The default run proves the same without debug.fix: test_debug_fix.py's code-level bug.
@pytest.mark.slow
def test_cli_exits_1_and_names_the_fix(tmp_path):
    result = run_stage(
        "debug",
        "--config=configs/synthetic.py:tabular",
        "--config.model.name=tests.check_bugs:SoftmaxMLP",
        "--config.progress=False",
        "--config.debug.overfit_steps=200",
        "--config.debug.train_steps=200",
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 1, result.stderr
    assert "softmax_before_loss" in result.stdout
    summary = read_summary(tmp_path)
    assert summary["findings"][0]["id"] == "softmax_before_loss"
    assert summary["findings"][0]["suggestions"]


def test_a_learning_rate_too_low_to_memorize_a_batch_is_a_warning_not_an_error(tmp_path):
    # At 2e-4 the loss falls but the batch is not memorized in 150 steps; at 10x it is.
    config = small_config("tabular")
    config.optimizer.learning_rate = 2e-4
    config.debug.overfit_steps = 150
    config.debug.train_steps = 60
    summary = debug.run_debug(experiment.prepare(config), str(tmp_path / "slow"))
    assert summary.status == "ok"
    ids = [(f.id, f.severity) for f in summary.findings]
    assert ("lr_too_low", "warning") in ids and "cannot_overfit_batch" not in dict(ids)
    assert summary.metrics["overfit_learning_rate"] == pytest.approx(2e-3)
    # At 1e-4 the loss falls by less than half: no retry, the error stands.
    config.optimizer.learning_rate = 1e-4
    config.debug.overfit_steps = 200
    summary = debug.run_debug(experiment.prepare(config), str(tmp_path / "slower"))
    assert summary.has_finding("cannot_overfit_batch")
