"""Batched trials and the coarse-to-fine search: numbers equal to single runs, resumable studies."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from tests.conftest import ROOT
from tests.search_worker import search_config
from workflow import engine, experiment, killpoints
from workflow.engine import trials
from workflow.errors import UsageError
from workflow.search import random_search

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def setup():
    """The tiny tabular setup every test here shares (one data load, one model build)."""
    return experiment.prepare(search_config())


@pytest.fixture(scope="module")
def runner(setup):
    """One TrialRunner: its programs compile once for the module."""
    ds = setup.dataset
    return trials.TrialRunner(setup.config, ds.input_shape, ds.num_classes)


def test_batched_trials_equal_separate_runs(setup, runner):
    hparams = trials.TrialHparams([3e-3, 1e-2, 1e-4], [0.0, 1e-3, 0.0], [0, 0, 1])
    _, result = runner.run(hparams, setup.dataset, setup.config.num_steps)
    for i in range(2):
        config = setup.config.copy_and_resolve_references()
        config.optimizer.learning_rate = hparams.learning_rate[i]
        config.l2 = hparams.l2[i]
        single = experiment.prepare(config)
        fit = engine.fit(single.task, single.state, single.dataset, config, progress=False)
        ds = single.dataset
        val = engine.Evaluator(single.task, 256)(fit.state, ds.x_val, ds.y_val)
        assert result.val_loss[i] == pytest.approx(val["loss"], rel=1e-4)
        assert result.val_accuracy[i] == pytest.approx(val["accuracy"])
        np.testing.assert_allclose(
            result.train_loss_curve[i][0], np.mean(fit.step_losses[:10]), rtol=1e-4
        )
    # lr 1e-4 for 60 steps barely moves; the other two learn.
    assert result.improved.tolist() == [True, True, False]
    # A trial's seed initializes its parameters as config.seed does for a single run.
    config = setup.config.copy_and_resolve_references()
    config.seed = 1
    model = engine.build_model(config, setup.dataset.input_shape, setup.dataset.num_classes)
    expected = jax.tree.leaves(nnx.state(model, nnx.Param))
    got = jax.tree.leaves(trials.trial_state(runner.init(hparams), 2).params)
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(a, b)


def test_init_seed_builds_the_initialization_of_the_trial_with_that_seed(setup, runner):
    # best_config.py's init_seed: training the best values again starts from the trial's init.
    states = runner.init(trials.TrialHparams([3e-3], [0.0], [7]))
    config = setup.config.copy_and_resolve_references()
    config.init_seed = 7
    ds = setup.dataset
    built = nnx.split(engine.build_model(config, ds.input_shape, ds.num_classes), nnx.Param, ...)[1]
    for trial, single in zip(jax.tree.leaves(states.params), jax.tree.leaves(built), strict=True):
        np.testing.assert_array_equal(np.asarray(trial)[0], np.asarray(single))
    plain = nnx.split(engine.build_model(setup.config, ds.input_shape, ds.num_classes), nnx.Param)
    pairs = zip(jax.tree.leaves(plain[1]), jax.tree.leaves(built), strict=True)
    assert not all(np.array_equal(a, b) for a, b in pairs)  # config.seed's init differs


@pytest.mark.slow
def test_trials_on_eight_devices_match_one():
    script = f"""
import json, sys
sys.path.insert(0, {ROOT!r})
import jax
from tests.search_worker import search_config
from workflow import experiment
from workflow.engine import trials
config = search_config()
setup = experiment.prepare(config)
ds = setup.dataset
runner = trials.TrialRunner(config, ds.input_shape, ds.num_classes)
hp = trials.TrialHparams([3e-3, 1e-2, 1e-4], [0.0, 1e-3, 0.0], [0, 0, 1])
states, result = runner.run(hp, ds, 20)
print(json.dumps({{"devices": len(jax.devices()), "shards": len(states.step.sharding.device_set),
    "val_loss": result.val_loss.tolist(), "trials": len(states.step)}}))
"""
    outputs = []
    for count in (8, 1):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={count}")
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    eight, one = outputs
    assert eight["devices"] == 8 and eight["shards"] == 8 and eight["trials"] == 8  # 3 padded to 8
    assert one["trials"] == 3
    np.testing.assert_allclose(eight["val_loss"], one["val_loss"], rtol=1e-5)


def test_summarize_trials_marks_divergence_and_improvement():
    losses = np.array(
        [
            [2.3, 2.2, 1.0, 0.5, 0.4, 0.3, 0.3, 0.2],  # goes down
            [2.3, 2.3, 2.3, 2.3, 2.3, 2.3, 2.29, 2.3],  # flat
            [2.3, 5.0, 40.0, np.inf, np.nan, np.nan, np.nan, np.nan],  # blows up at step 4
        ]
    )
    result = trials.summarize_trials(
        {"loss": losses}, 2, np.array([0.3, 2.3, np.nan]), np.array([0.9, 0.1, 0.1]), 1.0
    )
    assert result.improved.tolist() == [True, False, False]
    assert result.diverged_at.tolist() == [-1, -1, 4]
    assert result.val_accuracy[2] == 0.0 and math.isinf(result.val_loss[2])
    assert result.train_loss_curve.shape == (3, 4)


@pytest.mark.parametrize(
    "value, words",
    [
        ((1e-3, 1e-6), "inverted"),
        ((1e-3, 1e-3), "empty"),
        ((0.0, 1.0), "not positive"),
        (3, "pair"),
    ],
)
def test_bad_ranges_are_one_line_errors(value, words):
    with pytest.raises(UsageError, match=words) as info:
        random_search.check_range("search.lr_range", value)
    assert "search.lr_range" in str(info.value) and "\n" not in str(info.value)


def test_bad_sampler_metric_and_storage_are_usage_errors(tmp_path):
    config = search_config()
    config.search.sampler = "grid"
    with pytest.raises(UsageError, match="halton, sobol, random"):
        random_search.validate_search_config(config.search)
    with pytest.raises(UsageError, match="postgresql://nobody@127.0.0.1:9/nothing"):
        random_search.open_storage("postgresql://nobody@127.0.0.1:9/nothing", 5)
    with pytest.raises(UsageError, match="cannot open the study storage"):
        random_search.open_storage(f"sqlite:///{tmp_path}/missing/dir/study.db", 5)


def test_first_round_widens_lr_range_to_the_range_test_band():
    config = search_config()
    first = random_search.first_round(config.search, 1000, 100, lr_band=(2e-4, 3e-2))
    assert first.lr_range == (1e-6, 3e-2)
    assert first.reg_range == (1e-5, 1e5)
    assert first.steps == 10  # 1 epoch of 1000 examples at batch 100
    # Never longer than the config's run: 9 epochs (90 steps) against a run of 60.
    config.search.epochs = 9.0
    capped = random_search.first_round(config.search, 1000, 100, full_steps=60)
    assert capped.steps == 60 and capped.epochs == pytest.approx(6.0)
    assert random_search.first_round(config.search, 1000, 100, full_steps=600).steps == 90


def test_refined_round_narrows_around_the_best_trials_and_trains_longer():
    config = search_config()
    first = random_search.first_round(config.search, 1000, 100)
    records = [
        {"learning_rate": lr, "l2": l2, "val_accuracy": acc, "val_loss": 1 - acc, "improved": ok}
        for lr, l2, acc, ok in [
            (3e-4, 1e-4, 0.90, True),
            (5e-4, 1e-3, 0.88, True),
            (1e-6, 1e-5, 0.10, False),
            (2e-4, 1e3, 0.20, True),
            (8e-4, 1e-2, 0.70, True),
            (1e-5, 1e4, 0.05, False),
            (1e-4, 1e2, 0.30, True),
            (4e-6, 1e1, 0.12, False),
        ]
    ]
    refined = random_search.next_round(first, records, config.search, 1000, 100)
    # The top quarter of the improved trials (at least two): lr 3e-4 and 5e-4, l2 1e-4..1e-3.
    lr_lo, lr_hi = refined.lr_range
    assert 1e-4 < lr_lo < 3e-4 and 5e-4 < lr_hi < 2e-3
    reg_lo, reg_hi = refined.reg_range
    assert 1e-6 < reg_lo < 1e-4 and 1e-3 < reg_hi < 0.1
    assert refined.index == 1 and refined.num_trials == config.search.refine_trials
    assert refined.steps == 3 * first.steps


def _study_trials(url: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def _search(setup, runner, url: str, name: str) -> random_search.Search:
    return random_search.Search(runner, setup.dataset, setup.config, url, name, progress=False)


@pytest.fixture(scope="module")
def uninterrupted(setup, runner, tmp_path_factory):
    """The search_config() search run once without interruption: (rounds, records)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('whole')}/study.db"
    config = setup.config
    first = random_search.first_round(config.search, len(setup.dataset.x_train), config.batch_size)
    return _search(setup, runner, url, "t").run(first)


def test_search_resumes_trials_of_a_dead_worker(setup, runner, uninterrupted, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path}/study.db"
    config = setup.config
    first = random_search.first_round(config.search, len(setup.dataset.x_train), config.batch_size)
    # A worker that died with two trials running: a process id that no longer exists.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    worker = _search(setup, runner, url, "t")
    study, round_ = worker.study(first)
    points = random_search.unit_points(config.search.sampler, config.seed, 0, round_.num_trials)
    owners = worker._fill_slots(study, round_, points)
    interrupted = []
    for slot in (0, 1):
        trial_id = owners[slot]._trial_id
        assert worker._claim(trial_id)
        worker.storage.set_trial_user_attr(
            trial_id, "worker", {"host": worker.worker.host, "pid": dead.pid}
        )
        interrupted.append(dict(owners[slot].params))
    rounds, records = worker.run(first)
    assert [r.num_trials for r in rounds] == [8, 4]
    round0 = _study_trials(url, "t/round-0")
    states = optuna.trial.TrialState
    assert sum(t.state == states.COMPLETE for t in round0) == 8
    assert sum(t.state == states.FAIL for t in round0) == 2
    completed = [t.params for t in round0 if t.state == states.COMPLETE]
    for params in interrupted:  # each interrupted trial was run again, once
        assert completed.count(params) == 1
    assert len({tuple(sorted(p.items())) for p in completed}) == 8
    assert worker.trained_here == 12
    # The whole trial table, seeds and numbers included, is the uninterrupted search's.
    assert rounds == uninterrupted[0]
    assert records == uninterrupted[1]

    # The best (the last round's, full length) is held as this worker trained it: its state
    # gives the trial's val loss again.
    best = random_search.best_record(records, config.search.metric)
    held = worker.held_trial(best)
    assert best["steps"] == config.num_steps and held.num_steps == config.num_steps
    val_loss, _ = runner.evaluate(
        jax.tree.map(lambda leaf: leaf[None], held.state), setup.dataset.x_val, setup.dataset.y_val
    )
    assert float(val_loss[0]) == pytest.approx(best["val_loss"], rel=1e-5)

    again = _search(setup, runner, url, "t")
    _, records_again = again.run(first)
    assert again.trained_here == 0  # nothing finished is run twice
    assert records_again == records
    assert again.held_trial(best) is None  # not trained here: the tune stage trains it again


def test_a_slot_has_the_same_point_and_seed_whatever_the_trial_numbers(setup, runner, tmp_path):
    # Spare trials (a race between workers) shift Optuna's numbers; slots keep their values.
    import optuna

    url = f"sqlite:///{tmp_path}/study.db"
    config = setup.config
    first = random_search.first_round(config.search, len(setup.dataset.x_train), config.batch_size)
    worker = _search(setup, runner, url, "t")
    study, round_ = worker.study(first)
    points = random_search.unit_points(config.search.sampler, config.seed, 0, round_.num_trials)
    for slot in (5, 2, 5, 0):  # out of order, slot 5 twice
        seed = random_search.trial_seed(config.seed, 0, slot)
        study.add_trial(random_search.slot_trial(round_, slot, points[slot], seed))
    owners = worker._fill_slots(study, round_, points)
    assert sorted(owners) == list(range(8))
    trials_ = study.get_trials(deepcopy=False)
    assert [t.state for t in trials_].count(optuna.trial.TrialState.FAIL) == 1  # the spare
    for slot, trial in owners.items():
        assert trial.user_attrs["seed"] == config.seed + slot
        assert trial.params == random_search.slot_params(round_, points[slot])


def _worker(url: str, name: str, *args: str, kill_at: str | None = None) -> subprocess.Popen:
    """tests/search_worker.py on the study `name` at `url`, killing itself at `kill_at`."""
    env = {k: v for k, v in os.environ.items() if k != killpoints.ENV}
    if kill_at:
        env[killpoints.ENV] = kill_at
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "search_worker.py"), url, name, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _as_json(value):
    return json.loads(json.dumps(value))


def test_two_workers_share_one_sqlite_study(uninterrupted, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    procs = [_worker(url, "shared") for _ in range(2)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    import optuna

    for name, size in (("shared/round-0", 8), ("shared/round-1", 4)):
        done = [t for t in _study_trials(url, name) if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == size
        assert len({tuple(sorted(t.params.items())) for t in done}) == size
    assert sum(o["trained_here"] for o in outputs) == 12  # every trial trained exactly once
    assert all(o["trials"] == 12 for o in outputs)
    # Whoever trained which trial, the table is the one worker's search.
    rounds, records = uninterrupted
    for output in outputs:
        assert output["rounds"] == _as_json([r.to_json() for r in rounds])
        assert output["records"] == _as_json(records)


# Where each process of a chain kills itself; the chain's last process runs to the end
# (tests/test_tune.py kills the tune stage at the other points).
KILL_CHAIN = (
    "search.popped:2",  # half a batch claimed, its trials not yet named: reclaimed by age
    "search.told:2",  # a batch half recorded: its other trials rerun in a program of its width
)


@pytest.mark.slow  # the default run resumes a killed tune stage (tests/test_tune.py)
def test_a_search_killed_anywhere_resumes_to_the_uninterrupted_search(uninterrupted, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    for point in KILL_CHAIN:
        proc = _worker(url, "k", "1", kill_at=point)  # heartbeat 1 s: orphans wait 3 s
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == -signal.SIGKILL, f"{point}: {err[-2000:]}"
    proc = _worker(url, "k", "1")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    resumed = json.loads(out.strip().splitlines()[-1])
    rounds, records = uninterrupted
    assert resumed["rounds"] == _as_json([r.to_json() for r in rounds])
    assert resumed["records"] == _as_json(records)  # every trial's values, seed and numbers
    assert random_search.best_record(resumed["records"], "val_accuracy") == _as_json(
        random_search.best_record(records, "val_accuracy")
    )


def _goal_in_first_batch(records: list[dict]) -> tuple[float, list[dict], int]:
    """A val error the first batch of round 0 (slots 0-3) reaches and no earlier slot does:
    (that goal, the batch's records, the first slot at or below it)."""
    batch = [r for r in records if r["round"] == 0 and r["slot"] < 4]
    goal = min(1 - r["val_accuracy"] for r in batch)
    slot = min(r["slot"] for r in batch if 1 - r["val_accuracy"] <= goal)
    return goal, batch, slot


def _ended_at_goal(batch: list[dict], goal: float) -> list[dict]:
    """The batch's records as a search with `goal` records them: the trials at the goal ended
    there (`goal_at`: their length), so their best config is a run of that length."""
    return [{**r, "goal_at": r["steps"] if 1 - r["val_accuracy"] <= goal else None} for r in batch]


def test_search_stops_at_the_first_trial_that_meets_the_goal(
    setup, runner, uninterrupted, tmp_path
):
    url = f"sqlite:///{tmp_path}/study.db"
    config = setup.config
    first = random_search.first_round(config.search, len(setup.dataset.x_train), config.batch_size)
    goal, batch, slot = _goal_in_first_batch(uninterrupted[1])
    search = random_search.Search(
        runner, setup.dataset, config, url, "g", progress=False, goal_val_error=goal
    )
    rounds, records = search.run(first)
    assert [r.index for r in rounds] == [0] and records == _ended_at_goal(batch, goal)
    assert search.trained_here == 4  # one batch of four, then nothing
    assert search.stopped == {
        "reason": "goal",
        "round": 0,
        "slot": slot,
        "step": rounds[0].steps,
        "round_steps": rounds[0].steps,
        "val_error": 1 - batch[slot]["val_accuracy"],
        "goal_val_error": goal,
        "skipped_trials": 4 + 4,  # the round's second batch and the refined round
        "skipped_rounds": 1,
    }
    # Run again on the same study: the same decision from the finished slots, nothing trained.
    again = random_search.Search(
        runner, setup.dataset, config, url, "g", progress=False, goal_val_error=goal
    )
    assert again.run(first) == (rounds, records) and again.trained_here == 0
    assert again.stopped == search.stopped
    # A goal no trial reaches: the whole search, as without one.
    never = random_search.Search(
        runner, setup.dataset, config, url, "n", progress=False, goal_val_error=-1.0
    )
    assert never.run(first) == uninterrupted and never.stopped is None


# Slow: resuming is proven by default by the search killed anywhere, the stop at the goal by
# tests/test_tune.py's.
@pytest.mark.slow
def test_a_search_killed_before_the_goal_resumes_to_the_same_stop(uninterrupted, tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    goal, batch, slot = _goal_in_first_batch(uninterrupted[1])
    # Killed with half of the goal's batch recorded; the next worker trains the rest, then stops.
    proc = _worker(url, "k", "1", repr(goal), kill_at="search.told:2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    proc = _worker(url, "k", "1", repr(goal))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    resumed = json.loads(out.strip().splitlines()[-1])
    assert resumed["records"] == _as_json(_ended_at_goal(batch, goal))
    assert resumed["trained_here"] == 2
    assert resumed["stopped"]["slot"] == slot and resumed["stopped"]["skipped_trials"] == 8


def test_goal_val_error_is_the_goal_less_the_val_sets_noise():
    # 4% on 400 examples: one standard error is 0.98 points.
    assert random_search.goal_val_error(0.04, 400, 1.0) == pytest.approx(0.0302, abs=1e-5)
    assert random_search.goal_val_error(0.04, 400, 0.0) == 0.04
    records = [
        {"round": 0, "slot": 1, "val_accuracy": 0.97},
        {"round": 0, "slot": 0, "val_accuracy": 0.95},
        {"round": 0, "slot": 2, "val_accuracy": 0.99},
    ]
    assert random_search.goal_trial(records, 0.0302)["slot"] == 1  # the lowest slot reaching it
    assert random_search.goal_trial(records, 0.005) is None
    assert random_search.goal_trial(records, None) is None


def _open_fresh_study(url: str, barrier, results) -> None:
    """One worker: open the storage and create-or-load the study, all workers at once."""
    import optuna

    barrier.wait()
    try:
        storage = random_search.open_storage(url, heartbeat_seconds=30)
        optuna.create_study(storage=storage, study_name="shared", load_if_exists=True)
        results.put("ok")
    except BaseException as e:  # noqa: BLE001 - reported to the test
        results.put(f"{type(e).__name__}: {e}"[:300])


def test_workers_creating_one_fresh_sqlite_study_at_once_all_succeed(tmp_path):
    # Six workers released together on a database that does not exist yet: without the schema
    # lock most such rounds fail with "table ... already exists" in one of them.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(6), context.Queue()
    url = f"sqlite:///{tmp_path}/study.db"
    workers = [
        context.Process(target=_open_fresh_study, args=(url, barrier, results)) for _ in range(6)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == ["ok"] * 6
    assert sorted(os.listdir(tmp_path)) == ["study.db"]  # the lock leaves no file behind


@pytest.mark.parametrize("name", random_search.SAMPLERS)
def test_slot_points_depend_only_on_the_slot(name):
    points = random_search.unit_points(name, 0, 0, 40)
    # Every worker, and a restarted one, gets the same points; a smaller round their first ones.
    np.testing.assert_array_equal(points, random_search.unit_points(name, 0, 0, 40))
    np.testing.assert_array_equal(points[:10], random_search.unit_points(name, 0, 0, 10))
    round_ = random_search.Round(0, (1e-6, 1e-2), (1e-5, 1e5), 40, 1.0, 10)
    lrs = [random_search.slot_params(round_, p)["learning_rate"] for p in points]
    assert len(set(lrs)) == 40 and all(1e-6 <= v <= 1e-2 for v in lrs)
    other_round = random_search.unit_points(name, 0, 1, 1)
    assert not np.array_equal(other_round[0], points[0])
    # Quasi-random points cover the range evenly: each decade gets its share.
    decades = np.histogram(np.log10(lrs), bins=4, range=(-6, -2))[0]
    assert decades.min() >= (6 if name != "random" else 3)


def test_kill_point_names_are_checked():
    assert killpoints.parse("search.told:3") == ("search.told", 3)
    assert killpoints.parse("search.created") == ("search.created", 1)
    for bad in ("search.tell", "search.told:0"):
        with pytest.raises(ValueError, match=killpoints.ENV):
            killpoints.parse(bad)


def test_a_full_disk_under_the_study_is_a_storage_error_naming_its_file(tmp_path):
    import errno

    import sqlalchemy.exc

    url = f"sqlite:///{tmp_path}/study.db"
    full = sqlite3.OperationalError("database or disk is full")
    with pytest.raises(OSError) as raised:
        with random_search.full_disk_as_oserror(url):
            raise sqlalchemy.exc.OperationalError("INSERT INTO trials ...", {}, full)
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == f"{tmp_path}/study.db"
    with pytest.raises(ValueError, match="other"):  # any other error passes unchanged
        with random_search.full_disk_as_oserror(url):
            raise ValueError("other")
