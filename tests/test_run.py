"""workflow.run: the whole workflow in one command, its story, its report, and resuming."""

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import run_stage

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
    return json.load(open(os.path.join(workdir, "summary.json"))), result


def _check_reports(workdir, summary):
    html = open(os.path.join(workdir, "report.html")).read()
    md = open(os.path.join(workdir, "report.md")).read()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    # Every plot is embedded, so the page stands alone.
    assert len(re.findall(r'src="data:image/png;base64,', html)) >= 3
    for heading in ("Result", "How it got there", "Reproduce the final model"):
        assert f"<h2>{heading}</h2>" in html and f"## {heading}" in md
    assert "| Error source | Value | Analysis |" in md
    assert summary["reproduce"] and summary["reproduce"][0].startswith("python -m workflow.")


def _render_in_chromium(workdir: str, tmp_path) -> None:
    """The page as a person sees it: Debian's headless Chromium loads it, and its screenshot holds
    the tables and plots (an empty or broken page is a few kilobytes of white)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    url = "file://" + os.path.abspath(os.path.join(workdir, "report.html"))
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count("<table>") >= 3 and dom.count("<img") >= 3
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            url,
        ],
        capture_output=True,
        timeout=120,
    )
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
def test_run_fixes_an_underfit_model(tmp_path):
    workdir = str(tmp_path / "run")
    # Eight hidden units memorize one batch (debug passes) but underfit the data (23% train error).
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


@pytest.mark.slow
def test_run_fixes_an_overfit_model(tmp_path):
    workdir = str(tmp_path / "run")
    # 50 training examples for a wide MLP: 0% train error, 11% val error.
    summary, _ = _run(
        workdir,
        "--config.dataset.kwargs.num_train=2000",
        "--config.dataset.train_size=50",
        "--config.model.hidden_sizes=(256,256)",
    )
    first = json.load(open(os.path.join(workdir, "3_evaluate", "summary.json")))
    assert any(f["id"] == "overfit" for f in first["findings"])
    assert {"tune", "improve"} & {s["stage"] for s in summary["steps"]}
    # The final model is the best one by validation accuracy, never worse than the start.
    assert summary["metrics"]["val_accuracy"] >= first["metrics"]["val_accuracy"]
    _check_reports(workdir, summary)
