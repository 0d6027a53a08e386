"""The search space over any config key (config.search.space): parsing and bad input, groups of
programs, Optuna distributions, the report, the best retrained, resuming; per-trial clipping."""

import json
import os

import ml_collections
import numpy as np
import pytest

from tests.conftest import read_events, read_summary, run_stage, session_hparams
from tests.search_worker import search_config
from tests.test_tune import TINY, _search_outcome, _tune_killed
from workflow import config_lib, experiment
from workflow.engine import trials
from workflow.errors import UsageError
from workflow.search import random_search, space

SPACE = (
    "optimizer.learning_rate=log:1e-3:1e-1,"
    "model.hidden_sizes=cat:(16,):(32, 32),"
    "optimizer.accumulate_steps=int:1:2"
)
CHOICES = ([16], [32, 32])


def _config(text: str):
    config = search_config()
    config.loop = "scan"
    config.search.space = text
    return config


def test_space_parses_every_scale_and_the_default_ranges():
    config = search_config()
    config.search.space = (
        "optimizer.learning_rate, l2=linear:0:0.01, model.hidden_sizes=cat:(16,):(32, 32),"
        "optimizer.accumulate_steps=int:1:4, model.activation=cat:relu:gelu"
    )
    dims = space.parse_space(config)
    assert [(d.key, d.scale) for d in dims] == [
        ("optimizer.learning_rate", "log"),
        ("l2", "linear"),
        ("model.hidden_sizes", "cat"),
        ("optimizer.accumulate_steps", "int"),
        ("model.activation", "cat"),
    ]
    assert (dims[0].low, dims[0].high) == tuple(config.search.lr_range)  # no range given
    assert dims[2].choices == ((16,), (32, 32)) and dims[4].choices == ("relu", "gelu")
    assert [d.per_trial for d in dims] == [True, True, False, False, False]
    # Values across [0, 1): integers inclusive of both ends, every categorical value reached.
    us = np.linspace(0, 0.999, 50)
    assert sorted({dims[3].value(u) for u in us}) == [1, 2, 3, 4]
    assert {dims[2].value(u) for u in us} == {(16,), (32, 32)}
    assert all(0 <= dims[1].value(u) <= 0.01 for u in us)
    assert space.parse_space(search_config()) == ()  # the default: lr and L2


@pytest.mark.parametrize(
    "text, words",
    [
        ("optimizer.learnig_rate=log:1e-5:1e-1", "unknown config key 'optimizer.learnig_rate'"),
        ("optimizer.learning_rate=exp:1e-5:1e-1", "scale 'exp' is not one of log, linear"),
        ("optimizer.learning_rate=log:1e-1:1e-5", "the range is empty"),
        ("l2=log:0:1", "0 < low < high"),
        ("model.hidden_sizes=cat:(16,):relu", "model.hidden_sizes"),
        ("batch_size=log:16:256", "not an integer"),
        ("batch_size=int:0:64", "batch_size"),
        ("optimizer.accumulate_steps=int:1:2.5", "not an integer"),
        ("search.epochs=linear:1:2", "does not change how a trial trains; searchable: model.*"),
        ("dataset.train_size=int:100:500", "does not change how a trial trains"),
        ("optimizer=cat:adam:sgd", "is a block"),
        ("model.dropout_rate", "no range"),
        ("l2=linear:0:1,l2=linear:0:2", "named twice"),
        ("optimizer.name=cat:adam", "two or more"),
    ],
)
def test_bad_space_entries_are_one_line_usage_errors(text, words):
    with pytest.raises(UsageError) as info:
        space.parse_space(_config(text))
    message = str(info.value)
    assert "search.space entry" in message and words in message and "\n" not in message


def test_bad_space_exits_2_before_training_and_writes_nothing(tmp_path):
    workdir = tmp_path / "tune"
    flag = "--config.search.space=model.hidden_sizes=cat:(16,):wide"
    result = run_stage("tune", *TINY, flag, f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert "search.space entry 'model.hidden_sizes=cat:(16,):wide'" in line
    assert not workdir.exists()


def test_refinement_narrows_every_kind_of_key_and_keeps_integers_integers():
    log = space.Dimension("optimizer.learning_rate", "log", 1e-5, 1e-1)
    assert space.refined(log, [1e-3, 2e-3]) == log.__class__(
        log.key, "log", *random_search.refined_range([1e-3, 2e-3], (1e-5, 1e-1))
    )
    linear = space.Dimension("model.dropout_rate", "linear", 0.0, 0.8)
    narrowed = space.refined(linear, [0.0, 0.2])
    assert (narrowed.low, narrowed.high) == (0.0, pytest.approx(0.3))  # inside the range
    integer = space.Dimension("optimizer.accumulate_steps", "int", 1, 16)
    narrowed = space.refined(integer, [4, 5])
    assert (narrowed.low, narrowed.high) == (2, 7)
    assert isinstance(narrowed.low, int) and isinstance(narrowed.high, int)
    cat = space.Dimension("model.hidden_sizes", "cat", choices=((16,), (32,), (64,)))
    assert space.refined(cat, [[64], (16,), (64,)]).choices == ((16,), (64,))


@pytest.mark.slow
def test_the_default_space_written_out_reproduces_the_default_search(tmp_path):
    """The generic path on the default's two keys gives the default search's trial table,
    numbers, seeds and best alike (the default space itself is what it was: test_tune)."""
    default = experiment.prepare(search_config())
    ds = default.dataset
    runner = trials.TrialRunner(default.config, ds.input_shape, ds.num_classes)
    outcomes = []
    for name, text in (("default", ""), ("written", "optimizer.learning_rate,l2")):
        config = _config(text)
        search = random_search.Search(
            runner, ds, config, f"sqlite:///{tmp_path}/{name}.db", name, progress=False
        )
        first = random_search.first_round(
            config.search, len(ds.x_train), config.batch_size, space=space.parse_space(config)
        )
        outcomes.append(search.run(first)[1])
    assert outcomes[0] == outcomes[1] and len(outcomes[0]) == 12


def test_a_space_with_group_keys_runs_every_group_and_retrains_the_best(tmp_path):
    """The tune stage over a log, a categorical and an integer key (two group keys)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    workdir = str(tmp_path / "tune")
    result = run_stage(
        "tune",
        *TINY,
        f"--config.search.space={SPACE}",
        "--config.search.range_test.enabled=False",
        "--config.loop=scan",  # one compiled form per group's program, not two timed
        f"--workdir={workdir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(workdir)
    first = [t for t in summary["trials"] if t["round"] == 0]
    assert len(first) == 8
    # Trials of every group ran: both widths, both accumulation counts.
    assert sorted({tuple(t["model.hidden_sizes"]) for t in first}) == [(16,), (32, 32)]
    assert {t["optimizer.accumulate_steps"] for t in first} == {1, 2}
    # Slots are ordered by group (a batch trains as few programs as it can).
    groups = [(t["model.hidden_sizes"], t["optimizer.accumulate_steps"]) for t in first]
    assert groups == sorted(groups, key=lambda g: (CHOICES.index(g[0]), g[1]))
    best = summary["best"]
    trained_in = summary["rounds"][best["round"]]["space"]
    lr_range = (trained_in[0]["low"], trained_in[0]["high"])
    assert isinstance(best["learning_rate"], float)
    assert lr_range[0] <= best["learning_rate"] <= lr_range[1]
    assert best["model.hidden_sizes"] in CHOICES
    assert isinstance(best["optimizer.accumulate_steps"], int)
    assert best["optimizer.accumulate_steps"] in (1, 2)
    # best_config.py and the retrained best carry every searched key.
    config = config_lib.load_config_file(summary["best_config"])
    assert list(config.model.hidden_sizes) == best["model.hidden_sizes"]
    assert config.optimizer.accumulate_steps == best["optimizer.accumulate_steps"]
    assert config.optimizer.learning_rate == pytest.approx(best["learning_rate"])
    retrained = read_summary(os.path.join(workdir, "best"))["config"]
    assert retrained["model"]["hidden_sizes"] == best["model.hidden_sizes"]
    assert retrained["optimizer"]["accumulate_steps"] == best["optimizer.accumulate_steps"]
    assert summary["metrics"]["retrain_steps"] == 60
    assert (
        f"--config.optimizer.accumulate_steps={best['optimizer.accumulate_steps']}"
        in (summary["overrides"])
    )
    # The report: a range column per key, each trial's values, the best with every key.
    report = open(os.path.join(workdir, "report.md")).read()
    assert "| model.hidden_sizes range |" in report and "{(16,), (32, 32)}" in report
    assert "model.hidden_sizes=(" in report and "| optimizer.accumulate_steps |" in report
    assert "best model.hidden_sizes" in result.stdout
    assert os.path.getsize(os.path.join(workdir, "plots", "search.png")) > 10_000
    # Optuna holds each key's distribution (optuna-dashboard shows them).
    study = optuna.load_study(study_name="tune/round-0", storage=f"sqlite:///{workdir}/study.db")
    trial = study.trials[0]
    assert trial.distributions == {
        "learning_rate": FloatDistribution(1e-3, 1e-1, log=True),
        "model.hidden_sizes": CategoricalDistribution(["(16,)", "(32, 32)"]),
        "optimizer.accumulate_steps": IntDistribution(1, 2),
    }
    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    trained = [t for t in study.trials if t.state in ended]
    assert {t.params["model.hidden_sizes"] for t in trained} == {"(16,)", "(32, 32)"}
    # TensorBoard's HParams dashboard shows each trial's own values of the searched keys.
    for trial in first[:: len(first) - 1]:
        events = read_events(
            os.path.join(workdir, "tensorboard", "trials", f"round0-slot{trial['slot']}")
        )
        hparams = session_hparams(events)
        assert hparams["model.hidden_sizes"] == str(trial["model.hidden_sizes"])
        assert hparams["optimizer.accumulate_steps"] == trial["optimizer.accumulate_steps"]


def test_trials_with_their_own_clip_norms_equal_single_runs_at_those_norms():
    config = search_config()
    config.num_steps = 20
    config.loop = "scan"
    setup = experiment.prepare(config)
    ds = setup.dataset
    # High learning rate: the gradients' norms lie above the small clips, so they bite.
    lrs, clips = [3e-2, 3e-2, 3e-2], [0.0, 0.05, 0.5]
    batched = trials.TrialRunner(config, ds.input_shape, ds.num_classes, clip_per_trial=True)
    hparams = trials.TrialHparams(lrs, [0.0] * 3, [0] * 3, clip_norm=clips)
    states, result = batched.run(hparams, ds, config.num_steps)
    for i, clip in enumerate(clips):
        single_config = config.copy_and_resolve_references()
        single_config.optimizer.clip_norm = clip  # optax.clip_by_global_norm, as a single run
        single = trials.TrialRunner(single_config, ds.input_shape, ds.num_classes)
        one, alone = single.run(trials.TrialHparams([lrs[i]], [0.0], [0]), ds, config.num_steps)
        np.testing.assert_allclose(result.val_loss[i], alone.val_loss[0], rtol=1e-5)
        np.testing.assert_allclose(result.train_loss_curve[i], alone.train_loss_curve[0], rtol=1e-5)
        for got, want in zip(
            _leaves(trials.trial_state(states, i).params),
            _leaves(trials.trial_state(one, 0).params),
            strict=True,
        ):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # The clips changed the runs: each norm trains differently.
    assert len({round(float(v), 6) for v in result.val_loss}) == 3


def _leaves(tree) -> list[np.ndarray]:
    import jax

    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.mark.slow
def test_a_grouped_space_killed_and_resumed_reaches_the_uninterrupted_search(tmp_path):
    grouped = [f"--config.search.space={SPACE},optimizer.clip_norm=linear:0:1"]
    whole = str(tmp_path / "whole")
    result = run_stage("tune", *TINY, *grouped, f"--workdir={whole}")
    assert result.returncode == 0, result.stderr[-3000:]
    killed = str(tmp_path / "killed")
    _tune_killed(killed, *grouped, kill_at="search.told:3")
    _tune_killed(killed, *grouped, kill_at="search.trained:2")
    result = run_stage("tune", *TINY, *grouped, f"--workdir={killed}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _search_outcome(killed) == _search_outcome(whole)
    trials_run = json.load(open(os.path.join(whole, "summary.json")))["trials"]
    assert len({tuple(t["model.hidden_sizes"]) for t in trials_run}) == 2


def test_a_model_given_as_an_instance_says_why_its_options_cannot_be_searched():
    """workflow.api registers an instance under a `@python` name with no options: searching
    model.width names the instance and what to give instead."""
    config = _config("model.width=int:8:64")
    config.model = ml_collections.ConfigDict({"name": "Net@python"})
    with pytest.raises(UsageError) as info:
        space.parse_space(config)
    assert "model has: name (Net@python was given as an instance" in str(info.value)
    assert "give its class" in str(info.value)
    config.model = ml_collections.ConfigDict({"name": "mlp"})  # a class without the key: no hint
    with pytest.raises(UsageError) as info:
        space.parse_space(config)
    assert "instance" not in str(info.value)
