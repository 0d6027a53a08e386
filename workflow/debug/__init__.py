"""Stage 2, implement & debug: is the setup broken, and why?

    python -m workflow.debug --config=configs/mnist1d.py:mlp --workdir=runs/debug

Runs the sanity checks on one batch, overfits that batch, trains a short real run and reads
its loss curve; exits 1 when an error-severity finding stands, with the fixes named.
"""

import concurrent.futures
import dataclasses
import math
from collections.abc import Callable

import numpy as np

from workflow import engine, experiment, reporting
from workflow.debug.report import plot_overfit, report_sections
from workflow.diagnostics import checks, fixes
from workflow.diagnostics.budget import (
    BudgetCut,
    StepBudget,
    budget_cut_finding,
    judged_on_cut_run,
    measured_seconds_per_step,
    overfit_cut,
    short_run_cut,
    still_learning,
)
from workflow.diagnostics.checks.capacity import model_too_small_finding
from workflow.diagnostics.checks.outputs import (
    bounded_outputs_finding,
    ignored_input_finding,
    squashed_regression_finding,
)
from workflow.diagnostics.checks.probes import forward_in_mode, input_gradient
from workflow.diagnostics.counterfactual import confirm_findings
from workflow.diagnostics.curves import curve_findings
from workflow.diagnostics.findings import Finding, has_error, rank_findings
from workflow.diagnostics.overfit import (
    OverfitResult,
    cannot_overfit_finding,
    overfit_one_batch,
    slow_overfit_finding,
    with_learning_rate,
)
from workflow.engine import copy_state, distributed, losses, tasks
from workflow.reporting import rundir
from workflow.reporting.summary import Summary

# The short run trains in calls of 1/SHORT_RUN_CALLS of its steps: after the first (which
# compiles and measures the step), the steps that fit in debug.train_seconds are known, and the
# run is cut at a whole number of calls (one compiled length).
SHORT_RUN_CALLS = 12


def short_run_config(config, steps: int, steps_per_call: int | None = None):
    """The config of the short real run: same setup, few steps, no checkpoints, no early
    stopping (it is read as a curve of `steps` steps)."""
    short = config.copy_and_resolve_references()
    short.num_steps = steps
    short.eval_every = steps
    short.checkpoint_every = 0
    if steps_per_call is not None:
        short.steps_per_call = steps_per_call
    if "early_stopping" in short:
        short.early_stopping.enabled = False
    return short


def short_run_call_steps(config) -> int:
    """The steps of each of the short run's calls (the first of them measures the step)."""
    steps = config.debug.train_steps
    return max(1, min(steps, config.steps_per_call, math.ceil(steps / SHORT_RUN_CALLS)))


def short_run(setup: experiment.Setup) -> tuple[engine.FitResult, BudgetCut | None]:
    """The short real run of debug.train_steps steps, or of those that fit in
    debug.train_seconds of measured step time: (its result, the cut, None when not cut).

    A first call of steps compiles and measures the step; the rest run as one more fit from
    its state, as many whole calls as the budget holds. The result reads as one run's.
    """
    config, steps = setup.config, setup.config.debug.train_steps
    call = short_run_call_steps(config)
    first = engine.fit(
        setup.task,
        copy_state(setup.state),
        setup.dataset,
        short_run_config(config, call, call),
        progress=config.progress,
    )
    clock = StepBudget(config.debug.train_seconds)
    clock.charge(call, first.compile_seconds, first.loop)
    if first.status != "ok" or call >= steps:
        return first, None
    more = steps - call
    if clock.steps_left() < more:
        more = (clock.steps_left() // call) * call
    # Every process runs the short run's collectives: all train process 0's number of steps.
    more = int(distributed.broadcast_json(int(more)))
    if more <= 0:
        return first, short_run_cut(call, config, clock.seconds_per_step)
    rest = engine.fit(
        setup.task,
        first.state,
        setup.dataset,
        short_run_config(config, call + more, call),
        progress=config.progress,
    )
    fit = dataclasses.replace(
        rest,
        # The first call's evaluation is not the run's: it is read at the end, as one run's.
        records=[r for r in first.records if "val_loss" not in r] + rest.records,
        step_losses=np.concatenate([first.step_losses, rest.step_losses]),
        wall_seconds=first.wall_seconds + rest.wall_seconds,
        compile_seconds=first.compile_seconds + rest.compile_seconds,
        start_step=first.start_step,
        loop=first.loop or rest.loop,
    )
    return fit, short_run_cut(call + more, config, clock.seconds_per_step)


def short_run_seconds_per_step(fit: engine.FitResult) -> float | None:
    """The short run's seconds per training step: its loop form's measurement, else its wall
    time less compilation over its steps (None: neither)."""
    measured = measured_seconds_per_step(fit.loop)
    if measured:
        return measured
    steps = int(fit.state.step) - int(fit.start_step or 0)
    training = fit.wall_seconds - fit.compile_seconds
    return training / steps if steps > 0 and training > 0 else None


def check_and_overfit(
    setup: experiment.Setup, batch: dict
) -> tuple[list[Finding], OverfitResult, float]:
    """The checks on one batch, then overfitting it: (findings, overfit result, its lr)."""
    config = setup.config
    x, y = batch["x"], batch["y"]
    findings = checks.run_checks(setup, batch)
    # Memorize the batch as it is: augmentation would change it every step.
    plain_task = dataclasses.replace(setup.task, augment=None)
    overfit = overfit_one_batch(
        plain_task,
        setup.state,
        x,
        y,
        max_steps=config.debug.overfit_steps,
        loss_fraction=config.debug.overfit_loss_fraction,
        loop=config.get("loop", "auto"),
        max_seconds=config.debug.overfit_seconds,
        progress=config.progress,
    )
    overfit_lr = config.optimizer.learning_rate
    loss_name = getattr(setup.task.loss_fn, "__name__", repr(setup.task.loss_fn))
    if setup.task.kind.name == tasks.CLASSIFICATION:
        bounded = bounded_outputs_finding(
            overfit.outputs,
            overfit.final_loss,
            setup.dataset.num_classes,
            loss_name,
            setup.task.loss_fn is losses.softmax_cross_entropy,
        )
    elif setup.task.kind.name == tasks.REGRESSION:
        bounded = squashed_regression_finding(overfit.outputs, np.asarray(y), loss_name)
    else:
        bounded = None  # multi-label: sigmoid outputs show at step 0 (check_output_and_loss)
    if bounded is not None:
        findings.append(bounded)
    ignored = ignored_input_finding(
        x, overfit.outputs, initial_eval_outputs(setup), initial_input_gradient(setup)
    )
    if ignored is not None:
        findings.append(ignored)
    if not overfit.passed and not overfit.budget_cut and still_learning(overfit):
        # Learning, but too slowly to finish: try once at 10x the learning rate. Memorizing
        # there means the setup works and the learning rate is what holds it back. (Cut by
        # the time budget, there is no time left to try.)
        faster = overfit_one_batch(
            plain_task,
            with_learning_rate(setup.state, 10 * overfit_lr),
            x,
            y,
            max_steps=config.debug.overfit_steps,
            loss_fraction=config.debug.overfit_loss_fraction,
            loop=config.get("loop", "auto"),
            max_seconds=config.debug.overfit_seconds,
            progress=config.progress,
        )
        if faster.passed:
            findings.append(slow_overfit_finding(overfit, faster, overfit_lr, config))
            overfit, overfit_lr = faster, 10 * overfit_lr
    return findings, overfit, overfit_lr


def initial_eval_outputs(setup: experiment.Setup) -> Callable[[np.ndarray], np.ndarray]:
    """The model as initialized, in eval mode, as a function of a batch of inputs."""
    task, state = setup.task, setup.state

    def forward(x: np.ndarray) -> np.ndarray:
        outputs = forward_in_mode(task.eval_graphdef, state.params, state.model_state, x)[0]
        return np.asarray(outputs, np.float64)

    return forward


def initial_input_gradient(setup: experiment.Setup) -> Callable[[np.ndarray], np.ndarray]:
    """The gradient of the initial model's (eval-mode) outputs, randomly projected, with
    respect to a batch of float inputs."""
    task, state = setup.task, setup.state
    return lambda x: np.asarray(
        input_gradient(task.eval_graphdef, state.params, state.model_state, x)
    )


def loss_drop(fit: engine.FitResult) -> float:
    """How much the short run's training loss fell: 1 - its last tenth's mean over its first
    tenth's (0 when it did not fall, or ran too few steps to tell)."""
    losses = np.asarray(fit.step_losses, np.float64)
    window = len(losses) // 10
    if not window or not np.all(np.isfinite(losses)):
        return 0.0
    first, last = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
    return max(0.0, 1.0 - last / first) if first > 0 else 0.0


def held_out_findings(setup: experiment.Setup, state: engine.TrainState) -> list[Finding]:
    """`train_labels_noisy` and `test_split_differs` from the short run's model: its agreement
    with (a sample of) the training labels, the val labels and the test labels."""
    dataset = setup.dataset
    if not len(dataset.y_test):
        return []
    sample = checks.training_label_sample(dataset.y_train, setup.config.seed)
    if setup.task.kind.name != tasks.CLASSIFICATION:
        return task_held_out_findings(setup, state, sample)
    evaluate = engine.Evaluator(setup.task, setup.config.eval_batch_size)
    train = evaluate(state, dataset.x_train[sample], dataset.y_train[sample])
    test = evaluate(state, dataset.x_test, dataset.y_test)
    n_test = len(dataset.y_test)
    findings = checks.train_labels_noise_finding(
        train["accuracy"], len(sample), test["accuracy"], n_test, dataset.num_classes
    )
    if len(dataset.y_val):
        val = evaluate(state, dataset.x_val, dataset.y_val)
        findings += checks.test_split_finding(
            val["accuracy"], len(dataset.y_val), test["accuracy"], n_test
        )
    return findings


def task_held_out_findings(
    setup: experiment.Setup, state: engine.TrainState, sample: np.ndarray
) -> list[Finding]:
    """The held-out checks in a regression's or multi-label task's terms: per-example errors
    of the short run's model on the training sample, val and test."""
    from workflow.diagnostics.task_errors import predict_outputs

    dataset, kind = setup.dataset, setup.task.kind

    def errors(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if not len(y):
            return np.zeros(0)
        outputs = predict_outputs(setup.task, state, x, setup.config.eval_batch_size)
        return kind.example_errors(outputs, y)

    return checks.held_out_error_findings(
        kind,
        errors(dataset.x_train[sample], dataset.y_train[sample]),
        errors(dataset.x_val, dataset.y_val),
        errors(dataset.x_test, dataset.y_test),
    )


def run_debug(setup: experiment.Setup, workdir: str, started: float | None = None) -> Summary:
    """Every debug step on `setup`; writes the run directory and returns the summary.

    `started` (engine.now() before experiment.prepare) puts loading the data and building the
    model into the time to verdict, as the user waits for them too. The directory is claimed
    first (locked; another kind of run there is refused); a rerun replaces its results.
    """
    run = rundir.RunDir(workdir)
    with run.claimed(rundir.KINDS["debug"], "debug", setup.config, setup.dataset.fingerprint()):
        return debug(setup, run, started)


@dataclasses.dataclass
class Diagnosis:
    """What the debug steps found on one setup, before anything is written."""

    findings: list[Finding]  # ranked
    overfit: OverfitResult
    overfit_lr: float  # the learning rate the overfit result ran at
    fit: engine.FitResult  # the short run
    val_accuracy: float | None  # the short run's last validation accuracy
    counterfactual_seconds: float = 0.0  # the counterfactual trials' part of the verdict's time

    @property
    def short_run_steps(self) -> int:
        """The steps the short run trained."""
        return int(self.fit.state.step)


def diagnose(setup: experiment.Setup) -> Diagnosis:
    """The checks, the overfit run, the short run and what they say, ranked."""
    config, dataset = setup.config, setup.dataset
    batch = checks.sample_batch(dataset, config.debug.batch_size, config.seed)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="short-run") as pool:
        # The short run does not depend on the checks or the overfit: it compiles and trains on
        # another core meanwhile, which shortens the time to verdict (benchmarks/bugzoo.py times
        # it). The user's model is traced in two threads at once, as JAX allows, each from its
        # own merged copy.
        running = pool.submit(short_run, setup)
        findings, overfit, overfit_lr = check_and_overfit(setup, batch)
        fit, short_cut = running.result()
    findings += curve_findings(
        fit,
        dataset.num_classes,
        dataset.y_train,
        config.optimizer.learning_rate,
        initial_expected=experiment.initial_loss_reference(setup),
    )
    val_accuracy = next((r["val_accuracy"] for r in reversed(fit.records) if "val_loss" in r), None)
    if val_accuracy is not None and setup.task.kind.name == tasks.CLASSIFICATION:
        findings += checks.labels_signal_finding(
            overfit.final_accuracy, val_accuracy, dataset.num_classes, loss_drop(fit)
        )
    findings += held_out_findings(setup, fit.state)
    findings += stalled_overfit_candidate(overfit, findings, config.optimizer.learning_rate)
    # A finding that blames a knob (learning rate, L2, init scale, input normalization) stands
    # only when changing the knob as it suggests measurably helps on the real data.
    t_trials = engine.now()
    steps = int(fit.state.step)
    findings = confirm_findings(
        setup, findings, steps, (fit.loop or {}).get("form"), short_run_seconds_per_step(fit)
    )
    counterfactual_seconds = engine.now() - t_trials
    findings = judged_on_cut_run(findings, short_cut, config.optimizer.learning_rate)
    cuts = [cut for cut in (overfit_cut(overfit, config), short_cut) if cut is not None]
    findings += budget_cut_finding(cuts)
    if not overfit.passed and not (overfit.budget_cut and still_learning(overfit)):
        findings += model_too_small_finding(
            setup.state.params, len(batch["y"]), dataset.num_classes, overfit.passed
        )
        ranked = rank_findings(findings)
        findings.append(cannot_overfit_finding(overfit, ranked, config))
    return Diagnosis(
        rank_findings(findings), overfit, overfit_lr, fit, val_accuracy, counterfactual_seconds
    )


# One batch whose loss kept this share of its start after the overfit run's steps did not move:
# the learning rate is a candidate cause, which the counterfactual trials then confirm or refute.
STALLED_LOSS_FRACTION = 0.9


def stalled_overfit_candidate(
    overfit: OverfitResult, findings: list[Finding], learning_rate: float
) -> list[Finding]:
    """`lr_too_low` to be tried (confirm_findings) when one batch was not memorized and its loss
    barely moved, and no other finding already names the learning rate: a rate far too low
    leaves every curve flat, whatever the task's noise, so the curve alone may not name it."""
    if overfit.passed or overfit.budget_cut or overfit.steps <= 0:
        return []
    if any(f.id in ("lr_too_low", "lr_too_high") for f in findings):
        return []
    initial, final = float(overfit.initial_loss), float(overfit.final_loss)
    if not (math.isfinite(initial) and math.isfinite(final) and initial > 0):
        return []
    if final < STALLED_LOSS_FRACTION * initial:
        return []
    return [
        Finding(
            id="lr_too_low",
            severity="warning",
            message=(
                f"one batch's loss went from {initial:.4g} to {final:.4g} in {overfit.steps:,} "
                f"steps at lr {learning_rate:g}: it barely moved, as at a rate far too low"
            ),
            evidence={
                "overfit_initial_loss": initial,
                "overfit_final_loss": final,
                "overfit_steps": overfit.steps,
                "learning_rate": learning_rate,
            },
            suggestions=["raise the learning rate, or find it with workflow.tune's range test"],
        )
    ]


def fix_findings(setup: experiment.Setup, findings: list[Finding]) -> list[Finding]:
    """With debug.fix: the top finding's first config-level suggestion applied and the debug
    steps rerun on it, as a `config_fix` finding ([] when no warning or error stands)."""
    top = fixes.top_finding(findings)
    if top is None:
        return []
    fix = fixes.config_fix(top, setup.config)
    if fix is None:
        return [fixes.unfixable_finding(top)]
    again = diagnose(experiment.prepare(fixes.fixed_config(setup.config, fix)))
    rerun = fixes.Rerun(again.findings, again.overfit.passed, again.short_run_steps)
    return [fixes.verified_finding(fix, rerun)]


def debug(setup: experiment.Setup, run: rundir.RunDir, started: float | None) -> Summary:
    """The debug steps, written into the claimed run directory `run`."""
    config, dataset, workdir = setup.config, setup.dataset, run.path
    t_start = engine.now() if started is None else started
    diagnosis = diagnose(setup)
    seconds = engine.now() - t_start
    findings, overfit, fit = diagnosis.findings, diagnosis.overfit, diagnosis.fit
    fix_seconds = None
    if config.debug.fix:
        t_fix = engine.now()
        findings = rank_findings(findings + fix_findings(setup, findings))
        fix_seconds = engine.now() - t_fix

    run.open(config, resume_step=None)
    for record in fit.records:
        run.log(record)
    run.close()
    overfit_plot = run.save_figure(
        rundir.PLOT_OVERFIT_BATCH, lambda: plot_overfit(overfit, setup.task.kind.score_label)
    )
    curve_plot = run.save_figure(
        rundir.PLOT_SHORT_RUN,
        lambda: reporting.plot_learning_curves(
            fit.records, title="short run", score_label=setup.task.kind.score_label
        ),
    )
    failed = has_error(findings)
    summary = Summary(
        stage="debug",
        status="failed" if failed else "ok",
        config=rundir.config_to_dict(config),
        metrics={
            "overfit_passed": overfit.passed,
            "overfit_learning_rate": diagnosis.overfit_lr,
            "overfit_steps": overfit.steps,
            "overfit_final_loss": overfit.final_loss,
            "overfit_final_accuracy": overfit.final_accuracy,
            "short_run_steps": diagnosis.short_run_steps,
            "short_run_val_accuracy": diagnosis.val_accuracy,
            # The task's error (engine/tasks.py): 1 - accuracy, an RMSE, a per-label error.
            "short_run_val_error": (
                None if diagnosis.val_accuracy is None else 1.0 - diagnosis.val_accuracy
            ),
            "seconds_to_verdict": seconds,
            # Of which the counterfactual trials (0 when no finding blamed a knob).
            "counterfactual_seconds": diagnosis.counterfactual_seconds,
            **({"fix_seconds": fix_seconds} if fix_seconds is not None else {}),
        },
        findings=findings,
        next=[] if failed else experiment.next_commands(workdir, "evaluate"),
        dataset=dataset.summary(),
        model_summary=experiment.write_model_summary(setup, run),
        loops={"overfit": overfit.loop, "train": fit.loop},
    )
    run.write_summary(summary)
    run.write_report(
        reporting.report_title(summary), report_sections(summary, overfit_plot, curve_plot)
    )
    return summary
