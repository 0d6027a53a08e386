"""Counterfactual confirmation: a finding that blames the learning rate stands only when changing
the rate as it suggests measurably helps on the real data; unconfirmed, it is info."""

import math

import numpy as np
import pytest

from tests.conftest import small_config
from workflow import experiment
from workflow.diagnostics import counterfactual
from workflow.diagnostics.counterfactual import LrTrial, confirm_lr_findings, confirmed
from workflow.diagnostics.findings import Finding
from workflow.diagnostics.overfit import OverfitResult, slow_overfit_finding


def trial(lr, final, reached, diverged=False):
    return LrTrial(lr, lr / 1e-3, final, diverged, reached)


def test_a_change_that_reaches_the_base_level_4x_sooner_and_ends_lower_confirms():
    base = trial(1e-3, 2.0, 300)
    assert confirmed([base, trial(1e-2, 1.0, 60)], 300)  # 5x sooner, 50% lower
    assert not confirmed([base, trial(1e-2, 1.5, 100)], 300)  # only 3x sooner
    assert not confirmed([base, trial(1e-2, 1.95, 20)], 300)  # sooner, but ends within 10%
    assert not confirmed([base, trial(1e-2, 2.5, None)], 300)  # never reaches it
    assert not confirmed([base, trial(1e-2, math.inf, 10, diverged=True)], 300)
    # A configured rate that diverges is refuted by any changed rate that does not.
    assert confirmed([trial(1e-3, math.inf, None, True), trial(1e-4, 2.2, 10)], 300)


def test_the_raised_rates_reach_the_usual_range():
    assert counterfactual.candidate_rates(1e-3, "raise") == pytest.approx([1e-2, 1e-1])
    assert counterfactual.candidate_rates(1e-8, "raise") == pytest.approx([1e-7, 1e-6, 3e-4])
    assert counterfactual.candidate_rates(1.0, "lower") == pytest.approx([0.1, 0.01])


def blamed(finding_id: str) -> Finding:
    return Finding(id=finding_id, severity="warning", message="the curve says so")


def confirm(finding_id: str, learning_rate: float, steps: int = 100) -> Finding:
    config = small_config("tabular")
    config.optimizer.learning_rate = learning_rate
    [finding] = confirm_lr_findings(experiment.prepare(config), [blamed(finding_id)], steps)
    return finding


def test_lr_too_low_is_confirmed_when_a_higher_rate_trains_far_faster():
    finding = confirm("lr_too_low", 1e-5)
    assert finding.severity == "warning"
    assert "confirmed: with lr" in finding.message and "sooner" in finding.message
    measured = finding.evidence["counterfactual"]
    assert measured["confirmed"] and measured["speedup"] >= counterfactual.MIN_SPEEDUP
    rates = [t["learning_rate"] for t in measured["trials"]]
    assert rates == pytest.approx([1e-5, 1e-4, 1e-3])


def test_lr_too_low_is_refuted_to_info_on_a_well_set_rate():
    # Adam 3e-2 on this task: higher rates do not train it 4x faster.
    finding = confirm("lr_too_low", 3e-2)
    assert finding.severity == "info"
    assert "not confirmed" in finding.message
    assert not finding.evidence["counterfactual"]["confirmed"]


def test_lr_too_high_is_confirmed_at_lr_10_and_refuted_at_a_small_rate():
    high = confirm("lr_too_high", 10.0)
    assert high.severity == "warning" and high.evidence["counterfactual"]["confirmed"]
    assert "confirmed: with lr" in high.message
    low = confirm("lr_too_high", 1e-3)
    assert low.severity == "info" and "not confirmed" in low.message


def test_findings_that_blame_no_knob_or_are_info_run_no_trials(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("no trials expected")

    monkeypatch.setattr(counterfactual, "run_lr_trials", fail)
    quiet = [blamed("loss_plateau"), Finding(id="lr_too_low", severity="info", message="m")]
    assert confirm_lr_findings(None, quiet, 100) == quiet


def overfit(initial, final, steps, passed):
    return OverfitResult(passed, steps, initial, final, 1.0 if passed else 0.9, np.zeros(1), [])


def test_a_slow_overfit_that_still_learns_is_info_and_one_that_crawls_is_a_warning():
    config = small_config("tabular")
    fast = overfit(2.3, 0.1, 200, True)
    # The batch loss fell to 10% of its start: learning, only not within the budget.
    learning = slow_overfit_finding(overfit(2.3, 0.23, 1000, False), fast, 3e-4, config)
    assert learning.severity == "info" and "it is learning" in learning.message
    crawling = slow_overfit_finding(overfit(2.3, 0.9, 1000, False), fast, 3e-4, config)
    assert crawling.severity == "warning"
