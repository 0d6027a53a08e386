"""workflow.run: the whole workflow in one command, its story, its report, and resuming."""

import json
import os
import re
import shutil
import struct
import subprocess
import types

import pytest

from tests.conftest import read_summary, run_stage
from workflow.diagnostics.findings import Finding
from workflow.reporting.summary import Summary

SMALL = [
    "--config=configs/synthetic.py:tabular",
    "--config.dataset.kwargs.num_train=800",
    "--config.dataset.kwargs.num_test=400",
    "--config.num_steps=300",
    "--config.batch_size=32",
    "--config.eval_every=100",
    "--config.checkpoint_every=100",
    "--config.debug.train_steps=100",
    "--config.progress=False",
    "--config.search.num_trials=8",
    "--config.search.refine_trials=4",
    "--config.search.rounds=2",
    "--config.search.range_test.num_steps=60",
    "--config.search.range_test.repeats=1",
    "--config.improve.max_candidates=4",
]


def _run(workdir, *extra):
    result = run_stage("run", *SMALL, *extra, f"--workdir={workdir}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return read_summary(workdir), result


def _check_reports(workdir, summary):
    html = open(os.path.join(workdir, "report.html")).read()
    md = open(os.path.join(workdir, "report.md")).read()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    # Every plot is embedded, so the page stands alone.
    assert len(re.findall(r'src="data:image/png;base64,', html)) >= 3
    for heading in ("Result", "Final model", "How it got there", "Reproduce the final model"):
        assert re.search(f"<h2[^>]*>{heading}</h2>", html) and f"## {heading}" in md
    assert "<h2>Contents</h2>" in html  # a table of contents
    assert "<thead><tr><th></th>" not in html  # no empty header rows
    assert "| Error source | Value | Analysis |" in md
    assert summary["reproduce"] and summary["reproduce"][0].startswith("python -m workflow.")


# A script added to a copy of the page: after it loads, the page's own numbers a person would
# notice are written into the DOM, which headless Chromium then prints.
_LAYOUT_PROBE = (
    "<script>window.addEventListener('load',()=>{const d=document.documentElement,b=document.body;"
    "b.dataset.scrollWidth=d.scrollWidth;b.dataset.clientWidth=d.clientWidth;"
    "b.dataset.brokenImages=[...document.images].filter(i=>!i.naturalWidth).length;"
    "b.dataset.images=document.images.length;});</script>"
)
# Headless Chromium's narrowest window; the page must not scroll sideways there.
_WIDTHS = (500, 1280)


def _render_in_chromium(workdir: str, tmp_path) -> None:
    """The page as a person sees it at a narrow and a wide window: Debian's headless Chromium
    loads it; its tables and plots are there, every plot decodes, nothing makes the page scroll
    sideways, and each screenshot holds the page (an empty or broken one is a few KB of white)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    page = open(os.path.join(workdir, "report.html")).read()
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", _LAYOUT_PROBE + "</body>"))
    headless = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    for width in _WIDTHS:
        dom = subprocess.run(
            [*headless, "--virtual-time-budget=5000", f"--window-size={width},900", "--dump-dom"]
            + [f"file://{probed}"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        assert dom.count("<table>") >= 3 and ("Goal met" in dom or "Goal not met" in dom)
        numbers = dict(re.findall(r'data-([a-z-]+)="(\d+)"', dom))
        assert int(numbers["images"]) >= 3 and numbers["broken-images"] == "0"
        assert int(numbers["scroll-width"]) <= int(numbers["client-width"]), width
        shot = tmp_path / f"report-{width}.png"
        subprocess.run(
            [*headless, f"--screenshot={shot}", f"--window-size={width},2400"]
            + ["file://" + os.path.abspath(os.path.join(workdir, "report.html"))],
            capture_output=True,
            timeout=120,
        )
        assert shot.read_bytes()[16:24] == struct.pack(">II", width, 2400)  # PNG's IHDR size
        assert shot.stat().st_size > 50_000  # tables and plots, not an empty page


def test_run_stops_when_the_goal_is_met_and_resumes_without_redoing(tmp_path):
    workdir = str(tmp_path / "run")
    summary, result = _run(workdir)
    steps = [s["name"] for s in summary["steps"]]
    assert steps == ["1_start_simple", "2_debug", "3_evaluate"]  # the easy problem is solved
    assert summary["status"] == "ok" and summary["metrics"]["test_accuracy"] > 0.9
    assert any(f["id"] == "goal_met" for f in summary["findings"])
    story = [f for f in summary["findings"] if f["id"] == "workflow_step"]
    assert [f["evidence"]["stage"] for f in story] == ["start_simple", "debug", "evaluate"]
    _check_reports(workdir, summary)
    _render_in_chromium(workdir, tmp_path)
    assert "final test accuracy" in result.stdout
    # The same command again finds every step done and only rewrites the report.
    again, _ = _run(workdir)
    assert [s["name"] for s in again["steps"]] == steps
    assert again["metrics"]["test_accuracy"] == summary["metrics"]["test_accuracy"]


@pytest.mark.slow
def test_run_fixes_an_underfit_model_by_tuning(tmp_path):
    workdir = str(tmp_path / "run")
    # Eight hidden units memorize one batch (debug passes) but underfit the data (23% train error)
    # at lr 1e-3; the search's learning rate fixes it (the escalation branch is the test below).
    summary, _ = _run(
        workdir, "--config.model.hidden_sizes=(8,)", "--config.optimizer.learning_rate=1e-3"
    )
    stages = [s["stage"] for s in summary["steps"]]
    assert "tune" in stages
    first = json.load(open(os.path.join(workdir, "3_evaluate", "summary.json")))
    assert any(f["id"] == "underfit" for f in first["findings"])
    assert summary["metrics"]["val_accuracy"] > first["metrics"]["val_accuracy"] + 0.1
    assert summary["metrics"]["test_accuracy"] > first["metrics"]["test_accuracy"] + 0.1
    _check_reports(workdir, summary)


# The demos, shorter: a coarse search only, two candidates (underfit: a bigger LSTM and WaveNet;
# overfit: more data and LayerNorm).
SHORTER = ("--config.search.rounds=1", "--config.improve.max_candidates=2")


def _demo(workdir, branch, *extra):
    """workflow.run on the config's underfit / overfit demo, as its docstring gives it."""
    result = run_stage(
        "run",
        f"--config=configs/synthetic.py:{branch}",
        "--config.progress=False",
        *extra,
        f"--workdir={workdir}",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    start = json.load(open(os.path.join(workdir, "3_evaluate", "summary.json")))
    tuned = json.load(open(os.path.join(workdir, "5_evaluate", "summary.json")))
    improve = next(
        f
        for f in summary["findings"]
        if f["id"] == "workflow_step" and f["evidence"]["stage"] == "improve"
    )
    return summary, start, tuned, improve


def _verdicts(summary):
    return {f["id"] for f in summary["findings"]}


@pytest.mark.slow
def test_run_escalates_an_underfit_model_that_tuning_cannot_fix(tmp_path):
    workdir = str(tmp_path / "run")
    # The LSTM underfits the random-phase frequencies; the search's learning rate leaves it
    # underfit, and improve's next architecture (WaveNet) meets the goal.
    summary, start, tuned, improve = _demo(workdir, "underfit", *SHORTER)
    stages = [s["stage"] for s in summary["steps"]]
    assert stages == [
        "start_simple",
        "debug",
        "evaluate",
        "tune",
        "evaluate",
        "improve",
        "evaluate",
    ]
    assert "underfit" in _verdicts(start) and "underfit" in _verdicts(tuned)
    assert improve["evidence"]["chosen"] == "escalate to wavenet"
    assert improve["evidence"]["change"] == "model=wavenet"
    assert "escalate to wavenet" in improve["message"] and "underfit" in improve["message"]
    assert summary["config"]["model"]["name"] == "lstm"
    assert summary["final"]["step"] == "7_evaluate"
    assert summary["final"]["model"]["name"] == "wavenet"
    assert "goal_met" in _verdicts(summary)
    start_acc, final_acc = start["metrics"]["test_accuracy"], summary["metrics"]["test_accuracy"]
    assert final_acc > tuned["metrics"]["test_accuracy"] + 0.1 and final_acc > start_acc + 0.3
    report = open(os.path.join(workdir, "report.md")).read()
    assert "escalate to wavenet" in report
    _check_reports(workdir, summary)


@pytest.mark.slow
def test_run_fixes_an_overfit_model_with_data_or_regularization(tmp_path):
    workdir = str(tmp_path / "run")
    # 50 examples of 200 noisy dimensions: the MLP memorizes them (0% train error) and overfits.
    summary, start, tuned, improve = _demo(workdir, "overfit", *SHORTER)
    assert "overfit" in _verdicts(start)
    assert start["metrics"]["train_accuracy"] == 1.0
    # The search (lr and L2) helps but leaves it overfit; improve adds data, a variance remedy.
    assert "overfit" in _verdicts(tuned)
    assert tuned["metrics"]["test_accuracy"] > start["metrics"]["test_accuracy"]
    assert improve["evidence"]["verdict"] == "overfit"
    assert improve["evidence"]["chosen"] == "more data"
    assert improve["evidence"]["change"] == "train_size 50 → 100"
    assert summary["final"]["step"] == "7_evaluate"
    assert summary["config"]["dataset"]["train_size"] == 50
    final_config = json.load(open(os.path.join(workdir, "7_evaluate", "config.json")))
    assert final_config["dataset"]["train_size"] == 100 and final_config["l2"] > 0
    start_acc, final_acc = start["metrics"]["test_accuracy"], summary["metrics"]["test_accuracy"]
    assert final_acc > start_acc + 0.1
    assert summary["metrics"]["val_accuracy"] > tuned["metrics"]["val_accuracy"]
    report = open(os.path.join(workdir, "report.md")).read()
    assert "more data" in report and "train_size 50 → 100" in report
    _check_reports(workdir, summary)


def test_the_search_is_sized_the_same_whether_or_not_it_stops_at_the_goal():
    from workflow import config_lib
    from workflow import run as run_lib

    config = config_lib.load_config_file("configs/mnist1d.py")
    # The default search on MNIST-1D in 40 s at 250 steps/s: far more than fits.
    fixed = config.copy_and_resolve_references()
    fixed.search.stop_at_goal = False
    sized = run_lib.size_search(config, 40.0, 250.0, 3600)
    s = sized.search
    assert s.last_round_full_length is False
    assert s.num_trials < config.search.num_trials and s.refine_trials < config.search.refine_trials
    s0 = 108  # 3 epochs of 3,600 examples at batch 100
    affordable = 40.0 * 250.0 - config.num_steps
    cost = run_lib.search_cost(s, s0, config.num_steps, config.steps_per_call)
    assert cost <= affordable  # the budget bounds it
    # The budget is an upper bound: stopping at the goal only ends the search sooner.
    sized_fixed = run_lib.size_search(fixed, 40.0, 250.0, 3600).search
    assert {k: v for k, v in sized_fixed.items() if k != "stop_at_goal"} == {
        k: v for k, v in s.items() if k != "stop_at_goal"
    }
    # No budget: the configured search, whichever way it stops.
    assert run_lib.size_search(config, float("inf"), 250.0, 3600) is config


def test_the_run_says_what_meeting_the_goal_skipped():
    from workflow import run as run_lib

    step = run_lib.Step("5_evaluate", "evaluate", "w", "c", summary=None)
    text = run_lib.goal_skipped(step, 0, "improve")
    assert text.startswith("the goal is met at 5_evaluate: skipped improve, evaluate of round 1")
    assert "tune, evaluate, improve" in run_lib.goal_skipped(step, 1, "tune")


def _debug_summary(repaired: bool) -> Summary:
    fix = Finding(
        "config_fix",
        "info" if repaired else "warning",
        "repaired" if repaired else "not repaired",
        evidence={"finding": "loss_plateau", "overrides": {"l2": 0.0}, "repaired": repaired},
    )
    plateau = Finding("loss_plateau", "error", "the loss plateaus")
    return Summary(stage="debug", status="failed", config={}, metrics={}, findings=[plateau, fix])


def test_only_a_verified_debug_repair_is_carried_on_and_the_story_names_its_flags():
    from workflow import run

    assert run.config_repair(_debug_summary(repaired=False)) is None
    assert run.config_repair(_debug_summary(repaired=True))["overrides"] == {"l2": 0.0}
    step = run.Step("2_debug", "debug", "w/2_debug", "c.py", _debug_summary(repaired=True))
    [line] = run.decisions(types.SimpleNamespace(steps=[step]))
    assert "repaired by config: --config.l2=0.0 (`loss_plateau`'s first" in line.message
    assert line.evidence["config_fix"] == {"finding": "loss_plateau", "overrides": {"l2": 0.0}}
    start = run.Step("3_start_simple", "start_simple", "w/3", "c.py", step.summary, {"l2": 0.0})
    workflow = types.SimpleNamespace(source="c.py")
    assert run.reproduce_commands(workflow, start)[0].endswith(" --config.l2=0.0")


@pytest.mark.slow
def test_run_carries_a_verified_debug_fix_into_its_later_steps(tmp_path):
    # L2 = 1000 flattens the loss (debug's top finding, an error). With debug.fix the debug step
    # repairs it by config, verified by rerunning its checks; the run goes on with the repair.
    # No search round after the first evaluation: the repair's path, not the search, is tested.
    workdir = str(tmp_path / "run")
    summary, _ = _run(
        workdir,
        "--config.l2=1000.0",
        "--config.debug.fix=True",
        "--config.num_steps=200",
        "--config.debug.overfit_steps=300",
        "--config.budget.max_rounds=0",
    )
    steps = [s["name"] for s in summary["steps"]]
    assert steps == ["1_start_simple", "2_debug", "3_start_simple", "4_evaluate"]
    with open(os.path.join(workdir, "1_start_simple", "config.json")) as f:
        assert json.load(f)["l2"] == 1000.0  # the broken setup, as the user configured it
    for later in steps[2:]:
        with open(os.path.join(workdir, later, "config.json")) as f:
            assert json.load(f)["l2"] == 0.0, later
    story = {f["evidence"]["stage"]: f for f in summary["findings"] if f["id"] == "workflow_step"}
    repaired = story["debug"]
    assert "repaired by config: --config.l2=0.0 (`loss_plateau`'s" in repaired["message"]
    assert repaired["evidence"]["config_fix"] == {
        "finding": "loss_plateau",
        "overrides": {"l2": 0.0},
    }
    assert summary["status"] == "ok" and summary["metrics"]["test_accuracy"] > 0.8
    assert summary["reproduce"][0].endswith("--config.l2=0.0")
    assert "repaired by config: --config.l2=0.0" in open(os.path.join(workdir, "report.md")).read()


@pytest.mark.slow
def test_run_stops_after_debug_on_an_error_without_debug_fix(tmp_path):
    workdir = str(tmp_path / "run")
    result = run_stage("run", *SMALL, "--config.l2=1000.0", f"--workdir={workdir}", timeout=900)
    summary = read_summary(workdir)
    assert [s["name"] for s in summary["steps"]] == ["1_start_simple", "2_debug"]
    assert summary["status"] == "failed" and "fix it first" in summary["stopped"]
    assert result.returncode in (0, 1), result.stderr[-3000:]


def test_the_story_of_a_tune_step_names_every_searched_key_s_best_value():
    """A search over the learning rate and a model width: the step's line gives both choices."""
    from workflow import run

    best = {"learning_rate": 0.0387, "l2": 0.0, "model.channels": 4, "val_accuracy": 0.98}
    best |= {"round": 1, "slot": 3, "seed": 0, "steps": 300, "epochs": 23.0, "improved": True}
    metrics = {"num_trials": 48, "best_learning_rate": 0.0387, "best_l2": 0.0}
    tuned = Summary(stage="tune", status="ok", config={}, metrics=metrics, findings=[], best=best)
    step = run.Step("4_tune", "tune", "w/4_tune", "c.py", tuned)
    [line] = run.decisions(types.SimpleNamespace(steps=[step]))
    assert line.message == "4_tune: 48 trials; best lr 0.0387, L2 0, model.channels 4"


def test_a_regression_run_reads_in_rmse_and_names_the_searched_values(capsys):
    """The run's report of a tune step and its final console line in the task's terms: a
    regression's val/test RMSE (it has no accuracy), and each searched key's best value."""
    from workflow import run
    from workflow.run import report as run_report

    best = {"learning_rate": 0.003, "l2": 0.0, "model.width": 43, "val_accuracy": -52.3}
    metrics = {"num_trials": 24, "best_learning_rate": 0.003, "best_l2": 0.0}
    metrics |= {"val_error": 53.35, "test_error": 56.37, "test_rmse": 56.37}
    config = {"task": "regression"}
    tuned = Summary(
        stage="tune", status="ok", config=config, metrics=metrics, findings=[], best=best
    )
    step = run.Step("4_tune", "tune", "w/4_tune", "c.py", tuned)
    [pairs] = [b for b in run_report.step_blocks(step) if b[0] == "pairs"]
    rows = {key: value for key, value in pairs[1]}
    assert rows["best model.width"] == "43"
    assert rows["val / test RMSE (full length)"] == "53.35 / 56.37"
    metrics["workflow_seconds"] = 9.0
    final = Summary(stage="run", status="ok", config=config, metrics=metrics, findings=[])
    run_report.print_summary(final, "w")
    assert "final test RMSE 56.37 in 9 s" in capsys.readouterr().out
