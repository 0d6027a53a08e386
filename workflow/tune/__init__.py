"""Stage 4, tune: check the initial loss, find the learning rates that make the loss go down, then
a coarse-to-fine random search of many short trials trained at once.

    python -m workflow.tune --config=configs/mnist1d.py:mlp --workdir=runs/tune

Writes the trial table, axis plots, `best_config.py` (accepted by every stage as --config) and
the best trial retrained at the config's full length; a killed search resumes from `study.db`.

As a multi-process job (workflow/engine/distributed.py) every process loads the whole training split
and runs the range test and the search on its own devices (the same trials, the same results); only
process 0 writes the run directory and the study (the others keep a private scratch copy, deleted at
the end), every process takes process 0's trials and best, and the best is retrained by engine.fit
over every host's devices with the configured data layout.
"""

import dataclasses
import math
import os
import shutil
import tempfile

import jax
import numpy as np

from workflow import engine, experiment
from workflow.diagnostics import checks
from workflow.diagnostics.curves import expected_initial_loss
from workflow.diagnostics.findings import Finding
from workflow.engine import distributed, tasks, trials
from workflow.reporting import rundir
from workflow.reporting.summary import Summary
from workflow.search import random_search, range_test, space
from workflow.tune import report


def check_initial_loss(setup: experiment.Setup) -> tuple[list, dict]:
    """Step 1: the loss at initialization against ln C (the debug stage's checks)."""
    dataset = setup.dataset
    batch = checks.sample_batch(dataset, min(256, len(dataset.x_train)), setup.config.seed)
    findings = checks.check_output_and_loss(setup.task, setup.state, batch, dataset.num_classes)
    measured = engine.Evaluator(setup.task, len(batch["x"]))(setup.state, batch["x"], batch["y"])
    if setup.task.kind.name == tasks.CLASSIFICATION:
        expected = expected_initial_loss(np.asarray(batch["y"]), dataset.num_classes)
    else:  # predicting the mean, the base rates (engine/tasks.py)
        expected = experiment_reference(setup, np.asarray(batch["y"]))
    return findings, {"initial_loss": measured["loss"], "expected_initial_loss": expected}


def configured_range_test(setup: experiment.Setup) -> range_test.RangeTest:
    """The range test of `setup` with the settings of config.search.range_test."""
    rt = setup.config.search.range_test
    return range_test.run_range_test(
        setup.task,
        setup.state,
        setup.dataset,
        min_lr=rt.min_lr,
        max_lr=rt.max_lr,
        num_steps=rt.num_steps,
        batch_size=setup.config.batch_size,
        seed=setup.config.seed,
        repeats=rt.repeats,
        divergence_factor=rt.divergence_factor,
        loop=setup.config.get("loop", "auto"),
        progress=setup.config.progress,
    )


def lr_range_test(setup: experiment.Setup, run: rundir.RunDir) -> range_test.RangeTest | None:
    """Step 2: sweep the learning rate (deterministic: a resumed search gets the same band)."""
    rt = setup.config.search.range_test
    if not rt.enabled:
        return None
    result = configured_range_test(setup)
    run.write_json(rundir.RANGE_TEST, result.to_json(include_curve=True))
    return result


def search_goal(setup: experiment.Setup) -> float | None:
    """The val error at which the search stops (config.search.stop_at_goal), or None."""
    config = setup.config
    if not config.search.stop_at_goal:
        return None
    num_val = len(setup.dataset.y_val)
    z = config.search.goal_noise_z
    kind = setup.task.kind
    if kind.name != tasks.CLASSIFICATION:  # the goal in the task's error, with its own noise
        goal = config.goal.test_error
        return goal - z * math.sqrt(kind.error_variance(goal, max(num_val, 1)))
    return random_search.goal_val_error(config.goal.test_error, num_val, z)


def experiment_reference(setup: experiment.Setup, y: np.ndarray) -> float:
    """The loss of predicting the targets' distribution on targets `y` (tasks.py)."""
    kind = setup.task.kind
    return tasks.initial_loss_reference(kind, setup.task.loss_fn, y, setup.dataset.num_classes)


def search_trials(
    setup: experiment.Setup, run: rundir.RunDir, band
) -> tuple[list, list, dict | None, dict | None, random_search.Search]:
    """Steps 3-4: the coarse round and the refined ones, as batches of vmapped trials, until
    a trial meets the goal: (rounds, records, the form the trials' steps ran in, where the
    search stopped at the goal or None, the search)."""
    config, dataset = setup.config, setup.dataset
    goal = search_goal(setup)
    # Only process 0 records the search in the configured storage; the others in their scratch
    # directory (`run` is theirs), and all of them then take process 0's trials.
    shared = config.search.storage if distributed.is_writer() else None
    storage = shared or f"sqlite:///{os.path.abspath(run.file(rundir.STUDY))}"
    runner = trials.TrialRunner(
        config, dataset.input_shape, dataset.num_classes, task_kind=dataset.task
    )
    study = random_search.Search(
        runner, dataset, config, storage, "tune", progress=config.progress, goal_val_error=goal
    )
    first = random_search.first_round(
        config.search,
        len(dataset.x_train),
        config.batch_size,
        band,
        config.num_steps,
        space=space.parse_space(config),
    )
    total_epochs = config.num_steps * config.batch_size / len(dataset.x_train)
    rounds, records = study.run(
        first,
        on_batch=lambda batch: report.print_trials(
            batch, total_epochs, setup.task.kind, config.search.metric
        ),
    )
    stopped = study.stopped
    if distributed.multi_process():
        agreed = distributed.broadcast_json([[r.to_json() for r in rounds], records, stopped])
        rounds = [random_search.Round.from_json(r) for r in agreed[0]]
        records, stopped = agreed[1], agreed[2]
    return rounds, records, study.loop, stopped, study


def tensorboard_record(record: dict) -> dict:
    """A trial record for the HParams dashboard: a searched tuple (a model's widths) as text,
    as the dashboard writes the config's own."""
    extras = random_search.searched_extras(record)
    text = {k: str(list(v)) for k, v in extras.items() if isinstance(v, list | tuple)}
    return {**record, **text}


def retrain_best(
    setup: experiment.Setup, best_config, workdir: str, trained: trials.TrainedTrial | None
) -> tuple[Summary, bool]:
    """Step 5: the best hyperparameters at the config's full length, with a report: the best
    trial itself when the search trained it to that length here (`trained`: recorded as
    trained, the model its val error was measured on), else trained again; (the best run's
    summary, whether it was trained again)."""
    best_setup = experiment.prepare(best_config)
    best_dir = os.path.join(workdir, rundir.BEST)
    if trained is not None and not distributed.multi_process():
        recorded = experiment.record_trial(best_setup, best_dir, "tune", trained)
        if recorded is not None:
            return recorded, False
    return experiment.train_and_report(best_setup, best_dir, "tune", None), True


def run_tune(setup: experiment.Setup, workdir: str, config_source: str) -> Summary:
    """Every tuning step on `setup` in `workdir` (resumed when it holds the same search)."""
    config = setup.config
    random_search.validate_search_config(config.search)
    space.parse_space(config)
    experiment.check_loss(setup)
    if config.search.storage and distributed.is_writer():
        # An unreachable database is bad input: fail before writing.
        random_search.open_storage(config.search.storage, config.search.heartbeat_seconds)
    data = setup.dataset.fingerprint()
    if not distributed.is_writer():
        # Another process of a multi-process job: the same steps in a scratch directory of
        # its own; the run directory (and the retrained best's checkpoints) stay the job's.
        rundir.RunDir(workdir).check_identity(rundir.KINDS["tune"], "tune", config, data)
        scratch = tempfile.mkdtemp(prefix=f"tune-process{jax.process_index()}-")
        try:
            run, _ = report.open_run(scratch, config, data)
            try:
                return tune(setup, run, config_source, workdir)
            finally:
                run.release()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    run, new = report.open_run(workdir, config, data)
    try:
        return tune(setup, run, config_source, workdir)
    except BaseException:
        if new and not os.path.exists(run.file(rundir.STUDY)):
            run.remove()  # nothing of value was written yet
        raise
    finally:
        run.release()


# The range test's findings about the configured learning rate (range_test_findings).
CONFIGURED_LR_FINDINGS = ("lr_too_low", "lr_too_high")


def superseded_lr_findings(
    findings: list[Finding], rounds: list, best: dict | None
) -> list[Finding]:
    """The range test's verdict on the configured learning rate, as info once the search has
    searched the learning rate and found a best: best_config.py replaces the configured rate,
    so it no longer warns about the result (the message says what replaced it)."""
    searched = bool(rounds) and any(d.name == "learning_rate" for d in rounds[0].dimensions)
    if best is None or not searched:
        return findings
    return [
        dataclasses.replace(
            f,
            severity="info",
            message=f"{f.message}; the search's best rate, {best['learning_rate']:.3g}, "
            "replaces it in best_config.py",
        )
        if f.id in CONFIGURED_LR_FINDINGS and f.severity != "info"
        else f
        for f in findings
    ]


def tune(
    setup: experiment.Setup, run: rundir.RunDir, config_source: str, workdir: str | None = None
) -> Summary:
    """The tuning steps in the run directory `run` (the best retrained in `workdir`/best,
    default `run`'s); returns the summary."""
    config = setup.config
    t_start = engine.now()
    whole = experiment.with_whole_training_split(setup)  # the search's data, on every process
    findings, initial = check_initial_loss(whole)
    sweep = lr_range_test(whole, run)
    band = sweep.band if sweep is not None and sweep.found else None
    if sweep is not None:
        findings += range_test.range_test_findings(sweep, config.optimizer.learning_rate)
    rounds, records, trials_loop, stopped, search = search_trials(whole, run, band)
    run.log_trials([tensorboard_record(r) for r in records], config)
    best = random_search.best_record(records, config.search.metric)
    findings = superseded_lr_findings(findings, rounds, best)
    findings += report.search_findings(records, rounds, best)
    best_config_path = None
    retrained, trained_again = None, None
    if best is not None:
        best_config_path, best_config = report.write_best_config(run, config, config_source, best)
        if config.search.retrain_best:
            retrained, trained_again = retrain_best(
                setup, best_config, workdir or run.path, search.held_trial(best)
            )
    return report.summarize(
        run,
        setup,
        findings=findings,
        initial=initial,
        sweep=sweep,
        rounds=rounds,
        records=records,
        best=best,
        retrained=retrained,
        trained_again=trained_again,
        best_config_path=best_config_path,
        stopped=stopped,
        seconds=engine.now() - t_start,
        loops={
            "range_test": sweep.loop if sweep is not None else None,
            "trials": trials_loop,
            "train": retrained.loops.get("train") if retrained and retrained.loops else None,
        },
    )
