"""The debug stage's time budgets (workflow/diagnostics/budget.py): a run the budget stops says
so in a `time_budget_cut` finding, and an overfit run stopped while learning is no error.

The budgets are seconds of training steps; these tests set them far below one call's steps
(the cut is then certain after the first call) or leave the defaults far above a small
config's steps, so no test depends on the machine's speed.
"""

import math

import pytest

from tests.bugzoo.cases import synthetic
from workflow import config_lib, debug, experiment
from workflow.diagnostics import budget
from workflow.diagnostics.findings import Finding
from workflow.engine.loop_form import LoopChoice
from workflow.errors import UsageError

NO_TIME = 1e-9  # seconds: less than any step takes


def debug_config(**overrides):
    """A small synthetic setup with short debug budgets."""
    config = synthetic(**overrides)()
    config.debug.overfit_steps = 400
    config.debug.train_steps = 120
    return config


def run_debug(config, workdir):
    return debug.run_debug(experiment.prepare(config), str(workdir))


def findings_of(summary) -> dict:
    return {f.id: f for f in summary.findings}


def test_the_budget_charges_the_first_call_at_the_measured_step_time():
    clock = budget.StepBudget(1.0)
    assert clock.fits(10**6) and clock.steps_left() == math.inf  # nothing measured yet
    # (Times in powers of two: the step counts below are exact.)
    measured = LoopChoice("step", "measured", None, 1 / 64, 3.0)
    clock.charge(10, wall_seconds=5.0, choice=measured)  # compiling and measuring: not charged
    assert clock.spent == 10 / 64 and clock.steps_left() == 54
    assert clock.fits(54) and not clock.fits(55)
    clock.charge(10, wall_seconds=10 / 32)  # later calls at their own time
    assert clock.spent == 30 / 64 and clock.steps_left() == 17
    # Without a measured time the first call is charged whole (an over-estimate: cuts sooner).
    unmeasured = budget.StepBudget(1.0)
    unmeasured.charge(10, wall_seconds=0.9, choice=LoopChoice("scan", "config"))
    assert unmeasured.steps_left() == 1
    assert budget.StepBudget(None).fits(10**9)


def test_a_short_run_within_its_budget_is_not_cut(tmp_path):
    summary = run_debug(debug_config(), tmp_path)
    assert summary.metrics["short_run_steps"] == 120
    assert "time_budget_cut" not in findings_of(summary)
    assert "120 steps." in (tmp_path / "report.md").read_text()


def test_the_short_run_stops_at_its_budget_and_says_so(tmp_path):
    config = debug_config()
    config.debug.train_seconds = NO_TIME
    summary = run_debug(config, tmp_path)
    call = debug.short_run_call_steps(config)
    assert call == 10
    assert summary.metrics["short_run_steps"] == call  # the first call, then the budget is spent
    assert summary.status == "ok"
    cut = findings_of(summary)["time_budget_cut"]
    assert cut.severity == "info"
    assert f"the short run stopped at {call} of 120 steps" in cut.message
    assert "debug.train_seconds" in cut.message and "shorter run" in cut.message
    (run,) = cut.evidence["runs"]
    assert run["run"] == "short run" and run["steps"] == call and run["planned_steps"] == 120
    assert "raise debug.train_seconds" in cut.suggestions[0]
    report = (tmp_path / "report.md").read_text()
    assert f"{call} of 120 steps: stopped at its time budget (`debug.train_seconds`" in report
    # The curve of the steps it ran is what the report plots and metrics.jsonl holds.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2 and '"val_loss"' in lines[-1]


def test_an_overfit_run_stopped_while_learning_is_no_error(tmp_path):
    # At lr 1e-3 the batch loss falls from 2.39 to 0.35 in the first 50 steps, not memorized.
    config = debug_config(**{"optimizer.learning_rate": 1e-3})
    config.debug.overfit_seconds = NO_TIME
    summary = run_debug(config, tmp_path)
    found = findings_of(summary)
    assert summary.status == "ok" and "cannot_overfit_batch" not in found
    assert not summary.metrics["overfit_passed"] and summary.metrics["overfit_steps"] == 50
    cut = found["time_budget_cut"]
    assert "the overfit run stopped at 50 of 400 steps" in cut.message
    assert "still falling" in cut.message and "says nothing against the model" in cut.message
    assert cut.evidence["runs"][0]["config_key"] == "debug.overfit_seconds"


def test_an_overfit_run_stopped_without_learning_still_cannot_overfit(tmp_path):
    config = debug_config(**{"optimizer.learning_rate": 1e-8})
    config.debug.overfit_seconds = NO_TIME
    summary = run_debug(config, tmp_path)
    found = findings_of(summary)
    assert found["cannot_overfit_batch"].severity == "error"
    assert "did not fall below 50% of its start" in found["time_budget_cut"].message


@pytest.mark.parametrize("key", ["overfit_seconds", "train_seconds"])
@pytest.mark.parametrize("value", [0.0, -1.0])
def test_a_budget_must_be_a_positive_number(key, value):
    config = debug_config()
    config.debug[key] = value
    with pytest.raises(UsageError, match=f"debug.{key}"):
        config_lib.validate_config(config)


def test_slow_start_warnings_on_a_cut_short_run_are_info():
    # The clean synthetic sequence config's LSTM, its short run cut by a busy machine, read as
    # lr_too_low (confirmed: x10 is faster over so few steps) before this rule.
    cut = budget.BudgetCut("short run", "debug.train_seconds", 8.0, 50, 300, 0.1, "fewer steps")
    findings = [
        Finding("lr_too_low", "warning", "the loss falls steadily"),
        Finding("loss_plateau", "warning", "plateaus since the first 10 steps"),
        Finding("loss_plateau", "error", "never leaves its initial level"),
        Finding("nan_or_inf", "error", "NaN at step 3"),
    ]
    judged = budget.judged_on_cut_run(findings, cut, learning_rate=3e-4)
    assert [(f.id, f.severity) for f in judged] == [
        ("lr_too_low", "info"),
        ("loss_plateau", "info"),
        ("loss_plateau", "error"),
        ("nan_or_inf", "error"),
    ]
    assert "judged on 50 of 300 steps (debug.train_seconds cut the run)" in judged[0].message
    # Not cut: unchanged. A rate below the usual range is too low however long the run.
    assert budget.judged_on_cut_run(findings, None, 3e-4) == findings
    assert budget.judged_on_cut_run(findings[:1], cut, 1e-8) == findings[:1]
