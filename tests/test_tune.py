"""The tune stage as a user runs it: killed and resumed, its outputs, and bad input."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import read_events, read_summary, run_stage, session_hparams, start_stage
from workflow import config_lib, killpoints
from workflow.diagnostics.budget import measured_seconds_per_step
from workflow.engine import tasks
from workflow.search import random_search
from workflow.tune import report as tune_report

TINY = [
    "--config=configs/synthetic.py:tabular",
    "--config.dataset.kwargs.num_train=600",
    "--config.dataset.kwargs.num_test=200",
    "--config.num_steps=60",
    "--config.batch_size=32",
    "--config.steps_per_call=20",
    "--config.log_every=10",
    "--config.eval_every=20",
    "--config.eval_batch_size=256",
    "--config.progress=False",
    "--config.search.num_trials=8",
    "--config.search.refine_trials=4",
    "--config.search.trials_per_program=4",
    "--config.search.rounds=2",
    "--config.search.epochs=2.0",
    "--config.search.range_test.num_steps=60",
    "--config.search.range_test.repeats=2",
    "--config.search.heartbeat_seconds=2",  # a trial orphaned by the kill is reclaimed in 6 s
]


def _finished_trials(db: str) -> list[tuple]:
    """(study, number, value) of every finished trial (complete, or pruned: its value None),
    read straight from the SQLite file."""
    if not os.path.exists(db):
        return []
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute(
                "SELECT s.study_name, t.number, v.value FROM trials t "
                "JOIN studies s ON s.study_id = t.study_id "
                "LEFT JOIN trial_values v ON v.trial_id = t.trial_id "
                "WHERE t.state IN ('COMPLETE', 'PRUNED')"
            ).fetchall()
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return []


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tune run killed (SIGKILL) after its first batch of trials, then the same command again."""
    workdir = str(tmp_path_factory.mktemp("tune") / "tune")
    db = os.path.join(workdir, "study.db")
    proc = start_stage(
        "tune", *TINY, f"--workdir={workdir}", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while len(_finished_trials(db)) < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished_trials(db)
    interrupted = not os.path.exists(os.path.join(workdir, "summary.json"))
    result = run_stage("tune", *TINY, f"--workdir={workdir}")
    return workdir, before, interrupted, result


def test_killed_tune_resumes_without_losing_or_repeating_trials(tuned):
    workdir, before, interrupted, result = tuned
    assert interrupted and len(before) >= 4
    assert result.returncode == 0, result.stderr[-3000:]
    after = _finished_trials(os.path.join(workdir, "study.db"))
    assert set(before) <= set(after)  # every trial finished before the kill is kept as it was
    per_round = {}
    for study, _, _ in after:
        per_round[study] = per_round.get(study, 0) + 1
    assert per_round == {"tune/round-0": 8, "tune/round-1": 4}  # none run twice
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    params = [(t["round"], t["learning_rate"], t["l2"]) for t in summary["trials"]]
    assert len(params) == len(set(params)) == 12


def test_tune_writes_table_plots_best_config_and_the_best_trial_as_trained(tuned, tmp_path):
    workdir, _, _, result = tuned
    summary = read_summary(workdir)
    assert summary["stage"] == "tune" and summary["status"] == "ok"
    m = summary["metrics"]
    for key in ("val_accuracy", "test_accuracy", "best_learning_rate", "best_l2", "initial_loss"):
        assert isinstance(m[key], float)
    assert m["test_accuracy"] > 0.8  # the tiny synthetic problem is easy once tuned
    assert m["retrain_steps"] == 60
    assert summary["range_test"]["suggested_lr"] > 0
    lr_low, lr_high = summary["rounds"][0]["lr_range"]
    band = summary["range_test"]["band"]
    assert lr_low == 1e-6 and lr_high >= min(1e-3, band[1])  # widened to the range test's band
    for name in ("search.png", "trial_curves.png", "lr_range_test.png"):
        assert os.path.getsize(os.path.join(workdir, "plots", name)) > 0
    report = open(os.path.join(workdir, "report.md")).read()
    assert "acc = " in report and "lr : " in report and "reg: " in report and "✓" in report
    assert "(epoch 2 / " in report
    # best_config.py loads as a config with the tuned values, and the next command uses it.
    config = config_lib.load_config_file(summary["best_config"])
    assert config.optimizer.learning_rate == pytest.approx(m["best_learning_rate"])
    assert config.l2 == pytest.approx(m["best_l2"])
    assert config.search.num_trials == 8  # the command line's overrides are kept
    assert summary["next"][0].startswith("python -m workflow.evaluate --config=")
    assert summary["overrides"][0].startswith("--config.optimizer.learning_rate=")
    assert "best config:" in result.stdout
    # How the range test and the trials ran their steps, measured (the best was not retrained).
    loops = summary["loops"]
    assert set(loops) == {"range_test", "trials"}
    for loop in loops.values():
        assert loop["form"] in ("scan", "step") and measured_seconds_per_step(loop) > 0
    assert "## Training loops" in report and "| search trials |" in report
    # The resumed process trained the last round (full length, 60 steps): best/ is that
    # trial itself, the model whose val numbers chose it, as a complete training run.
    best = summary["best"]
    assert best["steps"] == 60 and m["best_trained_again"] is False
    assert config.init_seed == best["seed"]  # best_config.py starts where the trial did
    assert m["val_loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert m["val_accuracy"] == pytest.approx(best["val_accuracy"])
    best_dir = os.path.join(workdir, "best")
    records = [json.loads(line) for line in open(os.path.join(best_dir, "metrics.jsonl"))]
    train = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in train] == [10, 20, 30, 40, 50, 60]
    assert all("train_accuracy" in r and "lr" in r for r in train)
    assert records[-1]["step"] == 60 and "val_loss" in records[-1]
    assert os.path.isdir(os.path.join(best_dir, "checkpoints", "60"))
    assert read_summary(best_dir)["metrics"]["steps"] == 60
    assert "recorded without training it again" in open(os.path.join(workdir, "report.md")).read()
    # The evaluate stage reads it as any training run (on a copy: the fixture is shared).
    copy = shutil.copytree(best_dir, tmp_path / "best")
    result = run_stage(
        "evaluate",
        f"--config={summary['best_config']}",
        f"--workdir={copy}",
        "--config.progress=False",
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    assert read_summary(copy)["metrics"]["val_loss"] == pytest.approx(m["val_loss"], rel=1e-5)


def _search_outcome(workdir: str) -> dict:
    """What a tune run decided: the whole trial table, the rounds, the best trial, the values
    of best_config.py and the retrained best's numbers (timings aside)."""
    summary = read_summary(workdir)
    best_config = config_lib.load_config_file(summary["best_config"]).to_dict()

    def untimed(values: dict) -> dict:
        return {k: v for k, v in values.items() if "seconds" not in k and "per_s" not in k}

    keys = ("trials", "rounds", "best", "improved_band")
    return {
        **{k: summary[k] for k in keys},
        "range_test": untimed(summary["range_test"]),
        "best_config": best_config,
        "metrics": untimed(summary["metrics"]),
    }


def _tune_killed(workdir: str, *flags: str, kill_at: str = "", after_trials: int = 0) -> None:
    """The tune command (with `flags` added) on `workdir`, killed at the point `kill_at`
    (WORKFLOW_KILL_AT) or by SIGKILL from here once `after_trials` trials have finished in its
    study."""
    proc = start_stage(
        "tune",
        *TINY,
        *flags,
        f"--workdir={workdir}",
        env={killpoints.ENV: kill_at},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if after_trials:
        db, deadline = os.path.join(workdir, "study.db"), time.monotonic() + 240
        while len(_finished_trials(db)) < after_trials and time.monotonic() < deadline:
            assert proc.poll() is None, "the tune run ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"{kill_at or after_trials}: {err[-2000:]}"


@pytest.mark.slow
def test_tune_killed_at_every_kind_of_point_resumes_to_the_uninterrupted_search(tmp_path):
    whole = str(tmp_path / "whole")
    result = run_stage("tune", *TINY, f"--workdir={whole}")
    assert result.returncode == 0, result.stderr[-3000:]
    killed = str(tmp_path / "killed")
    # One process after another on one workdir, each killed somewhere else; traced on this
    # config (8 + 4 trials, 4 per program), each point is reached whatever the timing.
    _tune_killed(killed, kill_at="search.claimed:1")  # a batch claimed, never trained
    _tune_killed(killed, kill_at="search.popped:3")  # between claiming and naming trials
    _tune_killed(killed, kill_at="search.told:1")  # a batch partly recorded
    _tune_killed(killed, kill_at="search.trained:1")  # a batch trained, nothing recorded
    _tune_killed(killed, kill_at="search.created:1")  # slots filled again, none claimed
    # From outside once one more trial has finished: a batch, a round and the retrain remain.
    done = len(_finished_trials(os.path.join(killed, "study.db")))
    _tune_killed(killed, after_trials=done + 1)
    result = run_stage("tune", *TINY, f"--workdir={killed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _search_outcome(killed) == _search_outcome(whole)


def test_tune_stops_at_the_goal_and_reports_what_it_skipped(tmp_path):
    # A goal trials reach at once (0.9 test error): round 0's 34-step trials are cut at step 20
    # (one host call), and the first program of four there ends the search.
    workdir = str(tmp_path / "tune")
    result = run_stage("tune", *TINY, "--config.goal.test_error=0.9", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(workdir)
    stop = summary["search_stop"]
    assert stop["reason"] == "goal" and stop["round"] == 0
    assert stop["val_error"] <= stop["goal_val_error"] < 0.9
    assert stop["step"] == 20 and stop["round_steps"] == 34
    # Recorded: the first program's trials at the line, each ended there, complete.
    trials = summary["trials"]
    assert trials and {t["slot"] for t in trials} <= {0, 1, 2, 3}
    assert all(t["goal_at"] == t["steps"] == 20 and t["pruned_at"] is None for t in trials)
    assert all(1 - t["val_accuracy"] <= stop["goal_val_error"] for t in trials)
    assert stop["slot"] == trials[0]["slot"]  # the lowest slot at or below the line
    # Skipped: the round's other trials and the refined round's four.
    assert stop["skipped_trials"] == 8 - len(trials) + 4 and stop["skipped_rounds"] == 1
    m = summary["metrics"]
    assert m["search_stopped_at_goal"] is True and m["skipped_trials"] == stop["skipped_trials"]
    # The best trial met the goal at step 20, not the full 60: what met it is that run,
    # recorded as trained, and its config is a run of that length.
    assert m["retrain_steps"] == 20 and m["best_trained_again"] is False
    best_config = json.load(open(os.path.join(workdir, "best_config.json")))
    assert best_config["num_steps"] == 20
    report = open(os.path.join(workdir, "report.md")).read()
    assert f"stopped at the goal: round 1 trial #{stop['slot']}" in report
    assert "at step 20 of its 34" in report
    assert "stopped at the goal" in result.stdout


@pytest.mark.parametrize(
    "flag, words",
    [
        ('--config.search.lr_range="(1e-3, 1e-6)"', "search.lr_range"),
        ("--config.search.sampler=grid", "halton, sobol, random"),
        ("--config.search.storage=postgresql://nobody@127.0.0.1:9/db", "cannot open the study"),
        ("--config.search.goal_noise_z=-1", "search.goal_noise_z"),
    ],
)
def test_bad_search_input_exits_2_and_writes_nothing(tmp_path, flag, words):
    workdir = tmp_path / "tune"
    result = run_stage("tune", *TINY, flag.replace('"', ""), f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0]
    assert not workdir.exists()


def test_trial_line_is_the_workflow_table_row():
    record = {
        "val_accuracy": 0.412,
        "learning_rate": 1.405e-4,
        "l2": 4.234e-4,
        "epochs": 1.0,
        "improved": True,
    }
    line = tune_report.trial_line(record, "val_accuracy", 100)
    assert line == "acc = 0.412  lr : 1.405e-04  reg: 4.234e-04 (epoch 1 / 100)  ✓"
    assert not tune_report.trial_line({**record, "improved": False}, "val_accuracy", 100).endswith(
        "✓"
    )
    # A regression's score is 1 - RMSE: its row shows the RMSE itself, in the targets' units.
    regression = {**record, "val_accuracy": -51.349}
    row = tune_report.trial_line(regression, "val_accuracy", 100, tasks.Regression())
    assert row.startswith("rmse = 52.349  lr : ")
    assert tune_report.trial_line({**record, "val_loss": 0.25}, "val_loss", 100).startswith(
        "loss = 0.250  lr : "
    )


def _record(lr, l2, acc, improved=True, round_=0):
    return {
        "round": round_,
        "learning_rate": lr,
        "l2": l2,
        "val_accuracy": acc,
        "val_loss": 1 - acc,
        "improved": improved,
    }


def test_search_findings_fire_on_no_progress_and_range_edges_and_stay_quiet_inside():
    rounds = [random_search.Round(0, (1e-6, 1e-2), (1e-5, 1e5), 3, 1.0, 10)]
    stuck = [_record(lr, 1e-3, 0.1, improved=False) for lr in (1e-6, 1e-4, 1e-2)]
    (finding,) = tune_report.search_findings(stuck, rounds, stuck[0])
    assert finding.id == "loss_plateau" and finding.severity == "error"

    edge = [_record(9e-3, 1e-3, 0.9), _record(1e-4, 1e-3, 0.5)]
    (finding,) = tune_report.search_findings(edge, rounds, edge[0])
    assert finding.id == "search_range_edge" and finding.evidence["value"] == 9e-3

    inside = [_record(1e-4, 1e-3, 0.9), _record(1e-5, 1e-3, 0.5)]
    assert tune_report.search_findings(inside, rounds, inside[0]) == []
    # The smallest L2 searched being best is no reason to search lower.
    low_reg = [_record(1e-4, 2e-5, 0.9)]
    assert tune_report.search_findings(low_reg, rounds, low_reg[0]) == []


@pytest.mark.slow
def test_default_tune_on_mnist1d_mlp_reaches_the_papers_mlp_accuracy(tmp_path):
    """The issue's quality bar: default budget, the paper's MLP figure (0.65), under 10 minutes."""
    workdir = tmp_path / "tune"
    start = time.monotonic()
    result = run_stage(
        "tune",
        "--config=configs/mnist1d.py:mlp",
        "--config.progress=False",
        f"--workdir={workdir}",
        timeout=900,
    )
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.load(open(workdir / "summary.json"))
    assert summary["metrics"]["test_accuracy"] >= 0.65
    assert summary["metrics"]["suggested_lr_in_improved_band"]
    assert seconds < 600


def test_tensorboard_shows_each_trial_as_a_run_with_its_hparams(tuned):
    workdir, _, _, _ = tuned
    trials = read_summary(workdir)["trials"]
    folder = os.path.join(workdir, "tensorboard", "trials")
    assert len(os.listdir(folder)) == len(trials) == 12
    for trial in trials[:2]:
        events = read_events(os.path.join(folder, f"round{trial['round']}-slot{trial['slot']}"))
        assert session_hparams(events)["learning_rate"] == pytest.approx(trial["learning_rate"])
        error = events.Scalars("final/val_error")[-1].value
        assert error == pytest.approx(1 - trial["val_accuracy"], abs=1e-6)


def test_the_configured_rate_s_range_test_warning_is_info_once_the_search_replaced_it():
    """Tune's range test warns that the configured rate lies outside its band; when the search
    searched the rate and found a best, best_config.py replaces it: info, saying so. Without
    the rate in the search (a width alone), the warning stands: the result still uses it."""
    from workflow import tune
    from workflow.diagnostics.findings import Finding
    from workflow.search import space

    low = Finding("lr_too_low", "warning", "the learning rate 0.0003 lies 32x below the band")
    other = Finding("initial_loss_off", "warning", "far")
    with_lr = [random_search.Round(0, (1e-6, 1e-2), (1e-5, 1e5), 3, 1.0, 10)]
    best = {"learning_rate": 0.3188}
    kept_low, kept_other = tune.superseded_lr_findings([low, other], with_lr, best)
    assert kept_low.severity == "info" and kept_other == other
    assert kept_low.message.endswith("the search's best rate, 0.319, replaces it in best_config.py")
    width = (space.Dimension("model.width", "int", 8, 64),)
    without_lr = [random_search.Round(0, (1e-6, 1e-2), (1e-5, 1e5), 3, 1.0, 10, space=width)]
    assert tune.superseded_lr_findings([low], without_lr, best) == [low]
    assert tune.superseded_lr_findings([low], with_lr, None) == [low]
