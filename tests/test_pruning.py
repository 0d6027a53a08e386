"""Rung pruning: successive halving over batched trials, recorded in Optuna, resumable."""

import json
import math
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import fault_models
from tests.conftest import ROOT
from tests.search_worker import search_config
from workflow import experiment, killpoints
from workflow.engine import tasks, trials
from workflow.search import pruning, random_search
from workflow.tune import report as tune_report

HERE = os.path.dirname(os.path.abspath(__file__))


def test_rungs_are_whole_host_calls_each_factor_times_longer():
    assert pruning.rung_steps(3000, 4, 3, 100) == (100, 300, 1000, 3000)
    assert pruning.rung_steps(60, 4, 3, 20) == (20, 60)  # 60/9 and 60/27: shorter than a call
    assert pruning.rung_steps(38, 4, 3, 20) == (20, 38)  # raised to one call
    assert pruning.rung_steps(20, 4, 3, 20) == (20,)  # one call: nothing to cut
    assert pruning.rung_steps(3000, 1, 3, 100) == (3000,)  # pruning off
    assert pruning.halving_cost(27, (100, 300, 1000), 3) == 27 * 100 + 9 * 200 + 3 * 700


def test_survivors_are_the_best_fraction_by_val_loss_never_a_diverged_one():
    assert pruning.survivors([0.5, 2.0, 0.4, 1.0, 3.0, 0.45], 3) == [2, 5]
    assert pruning.survivors([1.0, 1.0, 1.0], 3) == [0]  # ties to the lower slot
    assert pruning.survivors([math.nan, 1.0, 2.0], 3) == [1]
    assert pruning.survivors([math.inf, math.nan], 2) == []


# MNIST-1D, seed 2: the refined round's five trials at its rung of step 300 (400 val examples).
# Val loss ranks lr 0.0083 (last) first; lr 0.032 (second) has the worst loss and the best
# accuracy, by 2.6 standard errors. Trained to the end, the first reached 90.75% val, the
# second 94.5% (the fixed-budget search's pick: 95.2% test).
RUNG_300_LOSSES = [1.2498, 1.5193, 1.2964, 1.3505, 1.2174]
RUNG_300_ACCURACIES = [0.49, 0.5675, 0.4825, 0.45, 0.4775]


def test_a_rung_keeps_a_trial_whose_val_accuracy_is_clearly_better_than_a_kept_ones():
    variance = tasks.Classification().error_variance
    better = random_search.clearly_better(RUNG_300_ACCURACIES, 400, variance)
    assert pruning.survivors(RUNG_300_LOSSES, 3) == [4]  # by val loss alone
    assert pruning.survivors(RUNG_300_LOSSES, 3, better) == [1, 4]
    # The same numbers on 100 val examples are within the noise: val loss decides alone.
    assert pruning.survivors(
        RUNG_300_LOSSES, 3, random_search.clearly_better(RUNG_300_ACCURACIES, 100, variance)
    ) == [4]


def test_a_rung_keeps_no_more_when_accuracy_agrees_with_val_loss_or_the_loss_diverged():
    variance = tasks.Classification().error_variance
    agreeing = [0.60, 0.45, 0.55, 0.52, 0.62]  # the lowest loss is the most accurate
    better = random_search.clearly_better(agreeing, 400, variance)
    assert pruning.survivors(RUNG_300_LOSSES, 3, better) == [4]
    diverged = [*RUNG_300_LOSSES[:1], math.nan, *RUNG_300_LOSSES[2:]]
    better = random_search.clearly_better(RUNG_300_ACCURACIES, 400, variance)
    assert pruning.survivors(diverged, 3, better) == [4]  # never a non-finite loss
    nan_score = random_search.clearly_better([math.nan, 0.9], 400, variance)
    assert not nan_score(0, 1) and not nan_score(1, 0)


@pytest.fixture(scope="module")
def setup():
    return experiment.prepare(search_config())


@pytest.fixture(scope="module")
def runner(setup):
    ds = setup.dataset
    return trials.TrialRunner(setup.config, ds.input_shape, ds.num_classes)


def test_a_clearly_worse_curve_is_cut_and_the_good_trial_keeps_its_unpruned_numbers(setup, runner):
    # lr 1e-2 learns the tabular problem; lr 1e-7 leaves the loss where it started.
    hparams = trials.TrialHparams([1e-2, 1e-7], [0.0, 0.0], [0, 1])
    batches, rungs_seen, judged = [], [], []

    def keep(losses, scores):
        judged.append((losses, scores))
        return pruning.survivors(losses, 2)

    runner.run_halving(
        hparams,
        setup.dataset,
        (20, 60),
        2,
        keep=keep,
        on_batch=lambda rung, slots, result: batches.append((rung, slots, result)) and False,
        on_rung=lambda rung, kept, cut: rungs_seen.append((rung, kept, cut)),
    )
    assert rungs_seen == [(0, [0], [1])]  # the flat curve is cut at step 20, the good one not
    (_, first, at_20), (_, last, at_60) = batches
    assert first == [0, 1] and last == [0]
    assert at_20.val_loss[0] < 0.5 * at_20.val_loss[1]
    # The cut is judged on each trial's val loss and accuracy at the rung.
    assert judged == [(at_20.val_loss.tolist(), at_20.val_accuracy.tolist())]
    assert at_60.steps == 60 and at_60.val_accuracy[0] > 0.8
    # Continued from its own state on its own batches: the numbers of the unpruned trial.
    _, whole = runner.run(hparams, setup.dataset, 60)
    np.testing.assert_allclose(at_60.val_loss[0], whole.val_loss[0], rtol=1e-6)
    np.testing.assert_allclose(at_60.train_loss_curve[0], whole.train_loss_curve[0], rtol=1e-6)


def test_a_model_with_dropout_and_batchnorm_state_is_halved_to_its_unpruned_numbers():
    # Its state carries typed PRNG keys (dropout) and batch statistics across the rungs.
    config = search_config()
    config.model.dropout_rate = 0.2
    config.model.norm = "batch"
    setup = experiment.prepare(config)
    ds = setup.dataset
    runner = trials.TrialRunner(config, ds.input_shape, ds.num_classes)
    hparams = trials.TrialHparams([1e-2, 3e-3, 1e-7], [0.0, 0.0, 0.0], [0, 1, 2])
    finals = []
    runner.run_halving(
        hparams,
        ds,
        (20, 60),
        2,
        keep=lambda losses, scores: pruning.survivors(losses, 2),
        on_batch=lambda rung, slots, result: finals.append((slots, result)) and False,
        on_rung=lambda rung, kept, cut: None,
    )
    slots, at_60 = finals[-1]
    _, whole = runner.run(hparams, ds, 60)
    # The last rung's program has one lane on the CPU, the unpruned one three: XLA compiles the
    # two differently, so float32 sums may round apart by a few units in the last place a step.
    for lane, slot in enumerate(slots):
        np.testing.assert_allclose(at_60.val_loss[lane], whole.val_loss[slot], rtol=1e-4)


def _worker(url: str, name: str, *, kill_at: str | None = None) -> subprocess.Popen:
    """tests/search_worker.py on `name` at `url` with pruning, killing itself at `kill_at`."""
    env = {k: v for k, v in os.environ.items() if k != killpoints.ENV}
    if kill_at:
        env[killpoints.ENV] = kill_at
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "search_worker.py"), url, name, "1", "none", "4"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The search_config() search with pruning, run once without interruption: (url, output)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('pruned')}/study.db"
    out, err = _worker(url, "p").communicate(timeout=300)
    assert out, err[-2000:]
    return url, json.loads(out.strip().splitlines()[-1])


def test_the_pruned_search_records_rung_values_and_cuts_in_optuna(pruned):
    import optuna

    url, output = pruned
    assert output["rounds"][1]["rungs"] == [20, 60]
    states = optuna.trial.TrialState
    study = optuna.load_study(study_name="p/round-1", storage=url)
    by_state = {
        state: [t for t in study.trials if t.state == state]
        for state in (states.COMPLETE, states.PRUNED)
    }
    assert len(by_state[states.COMPLETE]) == 1 and len(by_state[states.PRUNED]) == 3  # 4 // 3
    (best,) = by_state[states.COMPLETE]
    assert sorted(best.intermediate_values) == [20, 60]
    for trial in by_state[states.PRUNED]:  # what optuna-dashboard draws: the curve to the cut
        assert list(trial.intermediate_values) == [20]
        assert trial.intermediate_values[20] >= best.intermediate_values[20]
        assert trial.user_attrs["result"]["pruned_at"] == 20
    records = [r for r in output["records"] if r["round"] == 1]
    assert sorted(r["pruned_at"] or 60 for r in records) == [20, 20, 20, 60]
    assert random_search.best_record(output["records"], "val_accuracy")["pruned_at"] is None
    assert output["trained_here"] == 12


# Each process of the chain is killed in the pruned round: after its first rung's program
# trained (nothing of it recorded; the unpruned round 0 trained two programs before), then,
# in the next process (round 0 finished), with two of the round's three cuts recorded.
PRUNED_KILL_CHAIN = ("search.trained:3", "search.told:2")


@pytest.mark.slow
def test_a_pruned_search_killed_midway_resumes_to_the_same_cuts(pruned, tmp_path):
    _, whole = pruned
    url = f"sqlite:///{tmp_path}/study.db"
    for point in PRUNED_KILL_CHAIN:
        _, err = (proc := _worker(url, "p", kill_at=point)).communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{point}: {err[-2000:]}"
    out, err = (proc := _worker(url, "p")).communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    resumed = json.loads(out.strip().splitlines()[-1])
    assert resumed["rounds"] == whole["rounds"]
    assert resumed["records"] == whole["records"]  # the same cuts, at the same val numbers
    assert resumed["trained_here"] == 2  # the last cut and the complete trial, recorded once


def test_groups_are_halved_each_on_their_own_trials(setup, runner, tmp_path):
    import optuna

    config = search_config(prune_rungs=3)
    config.search.group_trials = 2  # round 1's four slots: two groups, one survivor each
    url = f"sqlite:///{tmp_path}/study.db"
    first = random_search.first_round(config.search, len(setup.dataset.x_train), config.batch_size)
    search = random_search.Search(runner, setup.dataset, config, url, "g", progress=False)
    rounds, records = search.run(first)
    refined = [r for r in records if r["round"] == 1]
    survivors = [r["slot"] for r in refined if r["pruned_at"] is None]
    assert len(survivors) == 2 and {s // 2 for s in survivors} == {0, 1}
    for slot in survivors:  # the better of its group at the cut
        other = next(r for r in refined if r["slot"] == slot ^ 1)
        mine = next(r for r in refined if r["slot"] == slot)
        assert mine["rungs"][0]["val_loss"] <= other["rungs"][0]["val_loss"]
    study = optuna.load_study(study_name="g/round-1", storage=url)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) == 2


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("prune_rungs", 0, "search.prune_rungs=0"),
        ("prune_factor", 1, "search.prune_factor=1"),
        ("group_trials", -2, "search.group_trials=-2"),
    ],
)
def test_bad_pruning_settings_are_one_line_errors(key, value, words):
    from workflow.errors import UsageError

    config = search_config()
    config.search[key] = value
    with pytest.raises(UsageError, match=words):
        random_search.validate_search_config(config.search)


HALVING_SCRIPT = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[1]
sys.path.insert(0, sys.argv[2])
import jax
from tests.search_worker import search_config
from workflow import experiment
from workflow.engine import trials
from workflow.search import pruning
config = search_config()
setup = experiment.prepare(config)
ds = setup.dataset
runner = trials.TrialRunner(config, ds.input_shape, ds.num_classes)
hp = trials.TrialHparams([1e-2, 1e-7, 3e-3, 1e-4, 5e-3], [0.0] * 5, [0, 1, 2, 3, 4])
seen = []
runner.run_halving(
    hp, ds, (20, 60), 3, keep=lambda losses, scores: pruning.survivors(losses, 2),
    on_batch=lambda rung, slots, res: seen.append([rung, slots, res.val_loss.tolist()]) and False,
    on_rung=lambda rung, kept, cut: seen.append([rung, kept, cut]),
)
print(json.dumps([jax.device_count(), seen]))
"""


@pytest.mark.slow  # two fresh JAX processes
def test_halving_on_eight_devices_cuts_and_scores_as_on_one():
    runs = {}
    for devices in (1, 8):
        done = subprocess.run(
            [sys.executable, "-c", HALVING_SCRIPT, str(devices), ROOT],
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu"),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        count, runs[devices] = json.loads(done.stdout.strip().splitlines()[-1])
        assert count == devices
    # Five trials in programs of three lanes (padded to the eight devices' multiple).
    one, eight = runs[1], runs[8]
    assert [e[:2] for e in one] == [e[:2] for e in eight]
    assert one[2] == [0, [0, 4], [1, 2, 3]]  # the best two of five go on
    for a, b in zip(one, eight, strict=True):
        if a[0] in (0, 1) and len(a) == 3 and isinstance(a[2][0], float):
            np.testing.assert_allclose(a[2], b[2], rtol=1e-5)


def _goal_round(config, lr_range=(3e-3, 3e-2)) -> random_search.Round:
    """One round of four 60-step trials (cut at step 20 with prune_rungs=4) that learn."""
    return random_search.Round(0, lr_range, (1e-5, 1e-4), num_trials=4, epochs=3.0, steps=60)


def test_a_trial_that_meets_the_goal_at_a_rung_ends_there_complete_and_stops_the_search(
    setup, runner, tmp_path
):
    from workflow.tune import report

    config = search_config(prune_rungs=4)
    ds = setup.dataset
    free = random_search.Search(
        runner, ds, config, f"sqlite:///{tmp_path}/a.db", "a", progress=False
    )
    study, round_ = free.study(_goal_round(config))
    assert round_.rungs == (20, 60)
    unstopped = free.run_round(study, round_, lambda records: None)
    # The goal: the best val error any trial has at the first rung (step 20 of 60).
    at_20 = {r["slot"]: 1 - r["rungs"][0]["val_accuracy"] for r in unstopped}
    goal = min(at_20.values())
    search = random_search.Search(
        runner, ds, config, f"sqlite:///{tmp_path}/b.db", "b", progress=False, goal_val_error=goal
    )
    study, round_ = search.study(_goal_round(config))
    records = search.run_round(study, round_, lambda records: None)
    met = [r for r in records if r["goal_at"] is not None]
    assert met and all(r["steps"] == 20 and r["goal_at"] == 20 for r in met)
    assert all(r["pruned_at"] is None and 1 - r["val_accuracy"] == goal for r in met)
    assert max(r["steps"] for r in records) == 20  # nothing trained past the rung
    assert search.stopped["step"] == 20 and search.stopped["round_steps"] == 60
    assert search.stopped["slot"] == min(r["slot"] for r in met)
    # The best is the trial at the goal, held as trained at step 20: its config is that run.
    best = random_search.best_record(records, "val_accuracy")
    held = search.held_trial(best)
    assert best in met and held is not None and held.num_steps == 20
    assert report.best_values(config, best).num_steps == 20
    one_lane = jax.tree.map(lambda leaf: jnp.stack([leaf]), held.state)
    val_loss, _ = runner.evaluate(one_lane, ds.x_val, ds.y_val)
    np.testing.assert_allclose(val_loss[0], best["val_loss"], rtol=1e-5)


def test_a_trial_that_meets_the_goal_between_rungs_ends_at_that_host_call(
    setup, runner, tmp_path, monkeypatch
):
    # Rungs at 20 and 60 steps, host calls of 20: between the rungs the trials are evaluated
    # at step 40 too (the val set is small beside a call's training examples). A goal first
    # met there ends its trial at step 40, complete; the other trials of its program are not
    # completed at a step that is not their end.
    config = search_config(prune_rungs=4)
    ds = setup.dataset
    seen = []
    free = random_search.Search(
        runner, ds, config, f"sqlite:///{tmp_path}/a.db", "a", progress=False, goal_val_error=-1
    )
    monkeypatch.setattr(free, "reaches_goal", lambda step, acc: seen.append((step, acc)) and False)
    study, round_ = free.study(_goal_round(config, lr_range=(1e-3, 3e-3)))
    assert round_.rungs == (20, 60)
    unstopped = free.run_round(study, round_, lambda records: None)
    assert {step for step, _ in seen} == {40}  # evaluated between rungs, not at them
    at_20 = max(r["rungs"][0]["val_accuracy"] for r in unstopped)
    at_40 = max(acc for _, acc in seen)
    assert at_40 > at_20  # the setup: the goal is first met after the first rung

    search = random_search.Search(
        runner,
        ds,
        config,
        f"sqlite:///{tmp_path}/b.db",
        "b",
        progress=False,
        goal_val_error=1 - at_40,
    )
    study, round_ = search.study(_goal_round(config, lr_range=(1e-3, 3e-3)))
    records = search.run_round(study, round_, lambda records: None)
    met = [r for r in records if r["goal_at"] is not None]
    assert met and all(r["steps"] == 40 and r["goal_at"] == 40 for r in met)
    assert all(r["pruned_at"] is None and r["val_accuracy"] == at_40 for r in met)
    assert [r for r in records if r["pruned_at"] is None and r["goal_at"] is None] == []
    assert search.stopped["step"] == 40 and search.stopped["round_steps"] == 60
    held = search.held_trial(random_search.best_record(records, "val_accuracy"))
    assert held is not None and held.num_steps == 40


def test_goal_checks_between_rungs_cost_at_most_a_tenth_of_the_training():
    config = search_config()
    config.steps_per_call, config.batch_size = 100, 100  # 10,000 examples a call
    assert trials.goal_check_calls(400, config) == 1  # MNIST-1D's val set: every call
    assert trials.goal_check_calls(3_000, config) == 1
    assert trials.goal_check_calls(30_000, config) == 10  # a large val set: every 10th call


def test_a_schedule_that_depends_on_the_run_length_never_stops_a_trial_before_its_end(
    setup, runner, tmp_path
):
    config = search_config(prune_rungs=4)
    search = random_search.Search(
        runner, setup.dataset, config, f"sqlite:///{tmp_path}/a.db", "a", goal_val_error=0.5
    )
    assert search.goal_at(20, 0.9) == 20  # constant: a 20-step run is this trial
    assert search.goal_at(20, 0.4) is None  # not at the goal
    config.optimizer.schedule.name = "cosine"  # decays over num_steps: a 20-step run differs
    assert search.goal_at(20, 0.9) is None
    assert search.goal_at(config.num_steps, 0.9) == config.num_steps


def test_after_a_rung_the_kept_trials_train_on_best_first(setup, runner):
    # Three trials, programs of one lane, all kept (factor 1): the second rung's programs run
    # in the order of the first rung's val losses.
    hparams = trials.TrialHparams([1e-7, 1e-2, 3e-3], [0.0] * 3, [0, 1, 2])
    order = []
    runner.run_halving(
        hparams,
        setup.dataset,
        (20, 40),
        1,
        keep=lambda losses, scores: pruning.survivors(losses, 1),
        on_batch=lambda rung, slots, result: (
            order.append((rung, slots[0], result.val_loss[0])) and False
        ),
        on_rung=lambda rung, kept, cut: None,
    )
    first = {slot: loss for rung, slot, loss in order if rung == 0}
    assert [slot for rung, slot, _ in order if rung == 1] == sorted(first, key=first.get)
    assert sorted(first, key=first.get) != [0, 1, 2]  # the order did change


def test_halving_programs_are_as_wide_as_their_trials_on_the_cpu_only():
    # A CPU pays for every lane: five trials left of a 16-wide group train in five lanes; an
    # accelerator's lanes are free, and the group's width keeps one compiled shape.
    assert trials.program_lanes(16, "cpu")([3, 4, 5, 6, 7]) == 5
    assert trials.program_lanes(16, "gpu")([3, 4, 5, 6, 7]) == 16


def end_attrs(val_accuracy: float, val_loss: float, rungs: list[tuple[int, float, float]]) -> dict:
    """A trial's attrs at its round's end (step 1500), its rung points (step, acc, loss)."""
    points = [{"step": s, "val_accuracy": a, "val_loss": loss} for s, a, loss in rungs]
    points.append({"step": 1500, "val_accuracy": val_accuracy, "val_loss": val_loss})
    return {"steps": 1500, "val_accuracy": val_accuracy, "val_loss": val_loss, "rungs": points}


def test_a_trial_that_collapses_after_a_rung_is_taken_at_that_rung():
    # The last rung's only survivor at lr 0.016 (synthetic, seed 1): 94.5% val at step 500,
    # 47.5% at its end. Its config at 500 steps is what the search measured: that is its pick.
    attrs = end_attrs(0.475, 2.175, [(100, 0.755, 0.747), (200, 0.88, 0.451), (500, 0.945, 0.317)])
    taken = random_search.stopped_at_best_rung(attrs, "val_accuracy", 200, lambda step: True)
    assert taken["stopped_at"] == 500 and taken["steps"] == 1500  # ranked as trained
    assert (taken["val_accuracy"], taken["val_loss"]) == (0.945, 0.317)
    record = random_search.trial_record(
        3,
        {"learning_rate": 0.016, "l2": 1e-4},
        {
            **taken,
            "seed": 7,
            "epochs": 83.3,
            "initial_loss": 1.8,
            "final_loss": 0.5,
            "improved": True,
            "diverged_at": -1,
        },
        random_search.Round(1, (1e-3, 1e-1), (1e-5, 1e-3), 16, 83.3, 1500),
    )
    config = search_config()
    config.num_steps = 1500
    tuned = tune_report.best_values(config, record)
    assert tuned.num_steps == 500 and tuned.optimizer.learning_rate == 0.016


def test_a_near_tie_or_a_length_dependent_schedule_keeps_the_trials_end():
    # One example of 400 better at 1000 steps: within the end's noise, the whole run stands.
    tie = end_attrs(0.9675, 0.11, [(300, 0.90, 0.3), (1000, 0.97, 0.105)])
    assert random_search.stopped_at_best_rung(tie, "val_accuracy", 400, lambda s: True) is tie
    # Better on accuracy but not on loss: not clearly better.
    mixed = end_attrs(0.80, 0.5, [(500, 0.95, 0.6)])
    assert random_search.stopped_at_best_rung(mixed, "val_accuracy", 400, lambda s: True) is mixed
    # A cosine schedule's rung is not its config at that length: judged at its end only.
    collapsed = end_attrs(0.475, 2.175, [(500, 0.945, 0.317)])
    kept = random_search.stopped_at_best_rung(collapsed, "val_accuracy", 200, lambda s: False)
    assert kept is collapsed and "stopped_at" not in kept


def run_search(config, tmp_path) -> tuple[random_search.Search, list, list[dict]]:
    """`config`'s search run in this process on its own SQLite study: (search, rounds, records)."""
    setup = experiment.prepare(config)
    ds = setup.dataset
    runner = trials.TrialRunner(config, ds.input_shape, ds.num_classes)
    search = random_search.Search(
        runner, ds, config, f"sqlite:///{tmp_path}/study.db", "search", progress=False
    )
    first = random_search.first_round(config.search, len(ds.x_train), config.batch_size)
    return search, *search.run(first)


def test_a_search_takes_a_late_collapsing_trial_where_it_was_good_as_trained_there(tmp_path):
    # Every trial's eval outputs turn to noise after 30 training steps: the refined round's
    # survivor (60 steps, cut at 20) ends at chance, and is taken at step 20 with its state there.
    config = search_config(prune_rungs=2)
    config.model.name = "tests.fault_models:LateCollapseMLP"
    config.search.lr_range = (3e-3, 3e-2)  # rates that learn the task within 20 steps
    search, rounds, records = run_search(config, tmp_path)
    assert rounds[1].rungs == (20, 60)
    best = random_search.best_record(records, "val_accuracy")
    assert best["round"] == 1 and best["pruned_at"] is None and best["steps"] == 60
    assert best["stopped_at"] == 20
    at_20, at_60 = best["rungs"][0], best["rungs"][-1]
    assert at_20["step"] == 20 and at_60["step"] == 60
    assert at_60["val_accuracy"] < 0.6 < at_20["val_accuracy"] == best["val_accuracy"]
    held = search.held_trial(best)
    assert held is not None and held.num_steps == 20  # its state at the rung, not the end's
    # Not the end's state: the model had not collapsed yet (its step count is under the line).
    assert int(held.state.model_state["steps"].value) <= fault_models.LateCollapseMLP.COLLAPSE_AFTER
    tuned = tune_report.best_values(config, best)
    assert tuned.num_steps == 20
    assert "taken at step 20" in tune_report.trial_line(best, "val_accuracy", 1.0)


def test_a_trial_a_rung_keeps_for_its_metric_trains_to_the_end_and_says_so(tmp_path, monkeypatch):
    # Every trial clearly better than every other: each rung keeps all its trials, one (four //
    # three) for its val loss and the rest for their metric.
    monkeypatch.setattr(random_search, "clearly_better", lambda *args: lambda i, j: True)
    config = search_config(prune_rungs=2)
    search, rounds, records = run_search(config, tmp_path)
    refined = [r for r in records if r["round"] == 1]
    assert rounds[1].rungs == (20, 60) and len(refined) == 4
    assert all(r["pruned_at"] is None and r["steps"] == 60 for r in refined)
    kept = [r for r in refined if r["rungs"][0].get("kept_for_metric")]
    assert len(kept) == 3  # all but the best by val loss at step 20
    best_by_loss = min(refined, key=lambda r: r["rungs"][0]["val_loss"])
    assert best_by_loss not in kept
    line = tune_report.trial_line(kept[0], "val_accuracy", 1.0)
    assert "kept at step 20 for its acc" in line and "cut at" not in line
    assert "kept at" not in tune_report.trial_line(best_by_loss, "val_accuracy", 1.0)
    # A search that picks by val loss has only the rungs' own ranking.
    config.search.metric = "val_loss"
    assert search.clearly_better([0.5, 0.9]) is None
