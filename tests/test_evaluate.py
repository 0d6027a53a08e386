"""The evaluate stage: bias-variance verdicts on hand-made numbers, and the stage end to end."""

import json
import math
import os

import pytest

from tests.conftest import SMALL_CONFIG_FLAGS, read_summary, run_stage, small_config
from workflow import config_lib, evaluate, experiment
from workflow.diagnostics import bias_variance as bv
from workflow.diagnostics.findings import ERROR_ANALYSIS, VERDICT, Finding, declared_ids
from workflow.errors import UsageError

BIG = 10**7  # sets so large that sampling noise never decides a gap


def decompose(train, val, test, goal, irreducible=None, n=(BIG, BIG, BIG), **tolerances):
    """The decomposition of hand-made error rates."""
    errors = bv.Errors(train, val, test, *n)
    return bv.decompose(errors, goal, irreducible, bv.Tolerances(**tolerances))


def verdict(d, facts=None, trend=None) -> dict[str, Finding]:
    """The verdict findings by id."""
    return {f.id: f for f in bv.verdict_findings(d, facts or bv.RunFacts(), trend)}


def test_the_workflow_example_calls_every_gap_in_the_workflows_table():
    d = decompose(0.20, 0.27, 0.28, goal=0.01)
    assert bv.table_rows(d) == [
        ["Goal performance", "1%", "Test − Goal = 27%: goal not met"],
        ["Train error", "20%", "Train − Goal = 19%: underfit"],
        ["Validation error", "27%", "Val − Train = 7%: overfit"],
        ["Test error", "28%", "Test − Val = 1%: val overfit"],
    ]
    found = verdict(d)
    assert list(found) == ["underfit", "overfit", "val_overfit"]
    assert all(f.severity == "warning" for f in found.values())
    overfit = found["overfit"].evidence
    assert overfit["gap"] == pytest.approx(0.07) and overfit["tolerance"] == 0.01
    assert overfit["val_error"] == 0.27 and overfit["train_error"] == 0.20
    m = d.metrics()
    # test error = goal + bias + variance + val overfit
    assert m["goal_error"] + m["bias"] + m["variance"] + m["val_overfit"] == pytest.approx(0.28)
    assert bv.decomposition_line(d) == (
        "Test error 28% = goal 1% + bias 19% + variance 7% + val overfit 1%"
    )


def test_suggestions_follow_the_workflows_order():
    facts = bv.RunFacts(model="mlp", num_params=5110, num_steps=3000, learning_rate=3e-4)
    found = verdict(decompose(0.20, 0.27, 0.28, goal=0.01), facts)
    expected = {
        "underfit": ["bigger", "regularization", "architecture", "learning rate", "longer"],
        "overfit": ["more training data", "normalization", "augmentation", "regularization"]
        + ["stop early", "model size"],
        "val_overfit": ["too small", "selected on too often", "bigger val set"],
    }
    for fid, keywords in expected.items():
        suggestions = found[fid].suggestions
        assert len(suggestions) == len(keywords)
        for keyword, suggestion in zip(keywords, suggestions, strict=True):
            assert keyword in suggestion, (fid, keyword, suggestion)
    assert "5,110 parameters" in found["underfit"].suggestions[0]
    assert "now 0.0003" in found["underfit"].suggestions[3]


def test_goal_met_stands_alone_and_every_gap_is_ok():
    d = decompose(0.030, 0.035, 0.040, goal=0.05)
    found = verdict(d)
    assert list(found) == ["goal_met"] and found["goal_met"].severity == "info"
    assert "meets the goal 5%" in found["goal_met"].message
    analyses = [row[2] for row in bv.table_rows(d)]
    assert analyses[0] == "Test − Goal = −1%: goal met"
    assert all(a.endswith("ok (tolerance 1%)") for a in analyses[1:])


@pytest.mark.parametrize(
    "train, val, test, quiet",
    [
        (0.059, 0.12, 0.12, "underfit"),  # train 0.9 points above the goal: within 1%
        (0.10, 0.109, 0.12, "overfit"),
        (0.10, 0.12, 0.129, "val_overfit"),
    ],
)
def test_a_gap_within_its_tolerance_stays_quiet(train, val, test, quiet):
    found = verdict(decompose(train, val, test, goal=0.05))
    assert quiet not in found
    assert found and "goal_met" not in found


def test_a_one_point_gap_on_400_val_examples_is_sampling_noise():
    n = (3600, 400, 1000)
    d = decompose(0.20, 0.21, 0.21, goal=0.10, n=n, overfit=0.005)
    floor = 2 * math.sqrt(0.21 * 0.79 / 400 + 0.20 * 0.80 / 3600)
    assert d.variance.tolerance == pytest.approx(floor) and floor > 0.04
    assert "overfit" not in verdict(d)
    assert bv.table_rows(d)[2][2] == f"Val − Train = 1%: ok (tolerance {bv.pct(floor)})"
    # The same gap on huge sets is real, and the tolerance used goes into the evidence.
    found = verdict(decompose(0.20, 0.21, 0.21, goal=0.10, overfit=0.005))
    assert found["overfit"].evidence["tolerance"] == 0.005
    # noise_z=0 turns the floor off.
    off = decompose(0.20, 0.21, 0.21, goal=0.10, n=n, overfit=0.005, noise_z=0.0)
    assert "overfit" in verdict(off) and off.variance.noise_floor == 0.0


def test_a_goal_below_the_irreducible_error_is_unreachable():
    n = (5000, 5000, 5000)  # 0.2 points above the irreducible error is sampling noise here
    at_floor = decompose(0.051, 0.052, 0.052, goal=0.01, irreducible=0.05, n=n)
    assert not at_floor.goal_reachable
    rows = bv.table_rows(at_floor)
    assert rows[0] == ["Irreducible error", "5%", "Goal − Irreducible = −4%: goal unreachable"]
    assert rows[2][2].startswith("Train − Irreducible = 0.1%: ok")
    found = verdict(at_floor)
    assert list(found) == ["goal_met"] and "unreachable" in found["goal_met"].message
    assert found["goal_met"].evidence["goal_reachable"] is False
    underfit = verdict(decompose(0.15, 0.16, 0.16, goal=0.01, irreducible=0.05))["underfit"]
    assert "unreachable" in underfit.message and underfit.evidence["gap"] == pytest.approx(0.10)
    reachable = decompose(0.06, 0.06, 0.06, goal=0.055, irreducible=0.045)
    assert bv.table_rows(reachable)[0][2] == "Goal − Irreducible = 1%: reachable"


def test_a_missed_goal_with_every_gap_within_tolerance_calls_the_largest():
    d = decompose(0.057, 0.066, 0.074, goal=0.05)  # gaps 0.7, 0.9, 0.8 points: none past 1%
    found = verdict(d)
    assert list(found) == ["overfit"]
    assert found["overfit"].evidence["reason"].startswith("largest share")
    assert "overfit (largest share of the missed goal)" in bv.table_rows(d)[2][2]


def size_points(*val_errors, n=(250, 500, 1000)):
    return [bv.SizePoint(s / 1000, s, 0.05, v) for s, v in zip(n, val_errors, strict=True)]


def test_the_train_size_curve_tells_add_data_from_flat():
    tol = bv.Tolerances()
    falling = bv.train_size_trend(size_points(0.40, 0.30, 0.20), n_val=1000, tol=tol)
    flat = bv.train_size_trend(size_points(0.40, 0.21, 0.20), n_val=1000, tol=tol)
    assert falling.trend == "falling" and "add data" in falling.text()
    assert flat.trend == "flat" and "regularize" in flat.text()
    assert falling.drop_per_doubling == pytest.approx(0.10)
    assert bv.train_size_trend(size_points(0.3, n=(1000,)), n_val=1000, tol=tol) is None
    d = decompose(0.05, 0.20, 0.20, goal=0.05)
    facts = bv.RunFacts(available_train=4000)
    with_data = verdict(d, facts, falling)["overfit"]
    assert with_data.suggestions[0].startswith("add more training data")
    assert with_data.evidence["train_size_trend"] == "falling" and "add data" in with_data.message
    assert verdict(d, facts, flat)["overfit"].suggestions[-1].startswith("add more training data")


def test_next_commands_follow_the_verdict(tmp_path):
    workdir = str(tmp_path / "evaluate")

    def commands(*ids, available=None, trend=None):
        findings = [Finding(i, "warning", "") for i in ids]
        facts = bv.RunFacts(available_train=available, val_fraction=0.1)
        return evaluate.next_commands(findings, workdir, 1000, facts, trend)

    assert commands("goal_met") == []
    underfit = commands("underfit")
    assert ["workflow.improve" in underfit[0], "workflow.tune" in underfit[1]] == [True, True]
    overfit = commands("overfit", available=4000)
    assert "--config.dataset.train_size=2000" in overfit[0] and "workflow.evaluate" in overfit[0]
    assert overfit[0].endswith(f"--workdir={tmp_path / 'evaluate_train_size_2000'}")
    flat = bv.train_size_trend(size_points(0.40, 0.21, 0.20), n_val=1000, tol=bv.Tolerances())
    assert "train_size" in commands("overfit", available=4000, trend=flat)[-1]
    assert all("train_size" not in c for c in commands("overfit", available=1000))
    val_only = commands("val_overfit")
    assert not any("workflow.tune" in c for c in val_only)
    assert "--config.dataset.val_fraction=0.2" in val_only[-1]


@pytest.mark.parametrize(
    "key, value",
    [
        ("evaluate.overfit_tolerance", -0.01),
        ("evaluate.noise_z", float("nan")),
        ("evaluate.train_sizes", (0.5, 1.5)),
        ("evaluate.train_sizes", (0.0,)),
        ("evaluate.train_size_steps", 0),
    ],
)
def test_invalid_evaluate_values_are_refused(key, value):
    config = small_config(**{key: value})
    with pytest.raises(UsageError, match=key):
        config_lib.validate_config(config)


def test_a_train_size_below_one_batch_fails_before_anything_is_written(tmp_path):
    setup = experiment.prepare(small_config(**{"evaluate.train_sizes": (0.01,)}))
    with pytest.raises(UsageError, match="evaluate.train_sizes fraction 0.01"):
        evaluate.run_evaluate(setup, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_evaluating_a_start_simple_run_trains_nothing_and_keeps_its_findings(tmp_path):
    workdir = str(tmp_path)
    setup = experiment.prepare(small_config())
    first = experiment.train_and_report(setup, workdir, "start_simple", "debug")
    # A curve finding of the original run, as start_simple writes one.
    plateau = Finding("loss_plateau", "warning", "the loss plateaus", {"step": 40}, ["raise lr"])
    first.findings.append(plateau)
    (tmp_path / "summary.json").write_text(json.dumps(first.to_json()))
    records = (tmp_path / "metrics.jsonl").read_text()
    checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))

    # Other tolerances are no different training config: the run is evaluated, not refused.
    config = small_config(**{"evaluate.underfit_tolerance": 0.02})
    summary = evaluate.run_evaluate(experiment.prepare(config), workdir)
    m = summary.metrics
    assert summary.stage == "evaluate" and summary.status == "ok"
    assert m["steps"] == 60 and m["trained_steps"] == 0
    assert m["wall_seconds"] == first.metrics["wall_seconds"]  # the training run's timing
    assert m["test_accuracy"] == pytest.approx(first.metrics["test_accuracy"])
    assert (tmp_path / "metrics.jsonl").read_text() == records
    assert sorted(os.listdir(tmp_path / "checkpoints")) == checkpoints
    ids = [f.id for f in summary.findings]
    assert "loss_plateau" in ids and len(set(ids) & set(declared_ids(VERDICT))) >= 1
    assert summary.config["evaluate"]["underfit_tolerance"] == 0.02
    assert json.loads((tmp_path / "summary.json").read_text())["stage"] == "evaluate"

    changed = small_config(**{"optimizer.learning_rate": 0.01})
    with pytest.raises(UsageError, match="different config"):
        evaluate.run_evaluate(experiment.prepare(changed), workdir)


SMALL_FLAGS = SMALL_CONFIG_FLAGS


def test_the_stage_trains_decomposes_and_reports_end_to_end(tmp_path):
    workdir = tmp_path / "evaluate"
    result = run_stage(
        "evaluate", *SMALL_FLAGS, "--config.evaluate.train_sizes=(0.5,)", f"--workdir={workdir}"
    )
    assert result.returncode == 0, result.stderr
    summary = read_summary(workdir)
    assert summary["stage"] == "evaluate" and summary["status"] == "ok"
    m = summary["metrics"]
    for key in ("train_error", "val_error", "test_error", "goal_error", "irreducible_error"):
        assert 0 <= m[key] <= 1, key
    assert m["trained_steps"] == m["steps"] == 60
    assert m["goal_error"] + m["bias"] + m["variance"] + m["val_overfit"] == pytest.approx(
        m["test_error"]
    )
    ids = {f["id"] for f in summary["findings"]} & set(declared_ids(VERDICT))
    assert ids and (ids == {"goal_met"}) == (summary["next"] == [])
    if ids != {"goal_met"}:
        assert "workflow.improve" in summary["next"][0] or "train_size" in summary["next"][0]
    assert [p["train_size"] for p in summary["train_size"]["points"]] == [270, 540]
    report = (workdir / "report.md").read_text()
    assert "| Error source | Value | Analysis |" in report and "| Train error |" in report
    assert "![error curves](plots/error_curves.png)" in report
    assert "![train size](plots/train_size.png)" in report
    for plot in ("learning_curves.png", "error_curves.png", "train_size.png"):
        assert (workdir / "plots" / plot).stat().st_size > 1000, plot
    # Error analysis on clean data (uniform label noise): tables and plots, no finding.
    assert set(summary["error_analysis"]["splits"]) == {"train", "val"}
    assert "## Error analysis" in report and "![confusion matrix](plots/confusion_matrix.png)" in (
        report
    )
    assert not {f["id"] for f in summary["findings"]} & set(declared_ids(ERROR_ANALYSIS))
    assert "Train error" in result.stdout and "Irreducible error" in result.stdout


def test_bad_evaluate_input_exits_2_with_one_line_and_nothing_written(tmp_path):
    workdir = tmp_path / "run"
    result = run_stage(
        "evaluate", *SMALL_FLAGS, "--config.evaluate.train_sizes=(0.5,2.0)", f"--workdir={workdir}"
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "evaluate.train_sizes" in lines[0] and "(0, 1]" in lines[0]
    assert not workdir.exists()
