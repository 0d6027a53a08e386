"""Verified fixes (`debug.fix`, workflow/diagnostics/fixes.py): the top finding's first
config-level suggestion is applied, the checks rerun, and a `config_fix` finding says whether
that repaired the setup, or that the finding cannot be fixed by config."""

from tests.bugzoo.cases import synthetic
from tests.conftest import read_summary, run_stage
from workflow import debug, experiment
from workflow.diagnostics import fixes
from workflow.diagnostics.findings import Finding


def fix_config(**overrides):
    """A small synthetic setup with short debug budgets and debug.fix on."""
    config = synthetic(**overrides)()
    config.debug.overfit_steps = 400
    config.debug.train_steps = 200
    config.debug.fix = True
    # Every step runs, however busy the machine (tests/test_debug_budget.py covers the cuts).
    config.debug.overfit_seconds = config.debug.train_seconds = 1e9
    return config


def the_fix(summary) -> Finding:
    (found,) = [f for f in summary.findings if f.id == "config_fix"]
    return found


def test_a_learning_rate_finding_is_repaired_by_its_measured_rate(tmp_path):
    config = fix_config(**{"optimizer.learning_rate": 1e-8})
    summary = debug.run_debug(experiment.prepare(config), str(tmp_path))
    assert summary.findings[0].id == "lr_too_low"
    assert summary.status == "failed"  # the configured setup is still the broken one
    fix = the_fix(summary)
    assert fix.severity == "info" and fix.message.startswith("repaired by config")
    assert fix.evidence["overrides"] == {"optimizer.learning_rate": 3e-4}
    assert fix.evidence["finding_gone"] and fix.evidence["overfit_passed"]
    assert fix.evidence["rerun_clean"] and fix.evidence["repaired"]
    assert fix.suggestions == ["rerun with --config.optimizer.learning_rate=0.0003"]
    assert summary.metrics["fix_seconds"] > 0
    assert read_summary(tmp_path)["findings"][-1]["id"] == "config_fix"


def test_a_code_level_bug_cannot_be_fixed_by_config(tmp_path):
    result = run_stage(
        "debug",
        "--config=configs/synthetic.py:tabular",
        "--config.model.name=tests.check_bugs:SoftmaxMLP",
        "--config.progress=False",
        "--config.debug.overfit_steps=200",
        "--config.debug.train_steps=100",
        "--config.debug.fix=True",
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 1, result.stderr  # an error finding: the CLI exits 1
    summary = read_summary(tmp_path)
    assert summary["findings"][0]["id"] == "softmax_before_loss"
    assert summary["findings"][0]["suggestions"] and "softmax_before_loss" in result.stdout
    (fix,) = [f for f in summary["findings"] if f["id"] == "config_fix"]
    assert fix["severity"] == "info" and not fix["evidence"]["repaired"]
    assert "`softmax_before_loss` cannot be fixed by config" in fix["message"]
    assert "fixed in the code" in fix["message"]
    assert "config_fix" in result.stdout


def test_without_debug_fix_nothing_is_applied(tmp_path):
    config = fix_config(**{"optimizer.learning_rate": 1e-8})
    config.debug.fix = False
    summary = debug.run_debug(experiment.prepare(config), str(tmp_path))
    assert not any(f.id == "config_fix" for f in summary.findings)
    assert "fix_seconds" not in summary.metrics


def test_the_fix_is_the_first_suggestion_whose_flags_change_the_config():
    config = fix_config()  # l2 = 0, normalize on
    finding = Finding(
        "loss_plateau",
        "error",
        "plateau",
        suggestions=[
            "reduce the regularization (--config.l2=0.0 turns the L2 penalty off)",  # no change
            "set --config.nonexistent.key=3",  # not a key of the config
            "raise the learning rate, e.g. to 0.03 (--config.optimizer.learning_rate=0.03), or",
        ],
    )
    fix = fixes.config_fix(finding, config)
    assert fix.overrides == {"optimizer.learning_rate": 0.03}
    assert fix.flags() == "--config.optimizer.learning_rate=0.03"
    fixed = fixes.fixed_config(config, fix)
    assert fixed.optimizer.learning_rate == 0.03 and config.optimizer.learning_rate != 0.03
    # A kind that is not fixable by config has no fix, whatever its text says.
    code = Finding("softmax_before_loss", "error", "x", suggestions=["--config.l2=1.0"])
    assert fixes.config_fix(code, config) is None
    normalize = Finding(
        "inputs_not_normalized",
        "warning",
        "x",
        suggestions=["set --config.dataset.normalize=False (per-channel mean/std)"],
    )
    assert fixes.config_fix(normalize, config).overrides == {"dataset.normalize": False}


def test_a_fix_that_leaves_the_finding_is_a_warning():
    fix = fixes.ConfigFix("lr_too_high", "lower it", {"optimizer.learning_rate": 0.1})
    still = Finding("lr_too_high", "warning", "still too high")
    rerun = fixes.Rerun([still], overfit_passed=True, short_run_steps=300)
    verdict = fixes.verified_finding(fix, rerun)
    assert verdict.severity == "warning" and verdict.message.startswith("not repaired by config")
    assert "`lr_too_high` is still there" in verdict.message
    assert not verdict.evidence["repaired"] and not verdict.evidence["finding_gone"]
    assert fixes.top_finding([Finding("time_budget_cut", "info", "x")]) is None
