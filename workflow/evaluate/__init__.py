"""Stage 3, evaluate: the bias-variance decomposition of a trained run against the goal.

    python -m workflow.evaluate --config=configs/mnist1d.py --workdir=runs/start_simple

Evaluates the run in --workdir, training it first (or finishing it) when there is none, then
splits its test error into goal + bias + variance + val overfit, calls `underfit`, `overfit`,
`val_overfit` or `goal_met`, analyzes its errors on train and val side by side (confusion
matrix, per-class error, the most confused classes, the most confidently wrong examples; see
workflow/diagnostics/error_analysis.py), and names the next stage. With
--config.evaluate.train_sizes it also trains short runs on subsets to tell "add data" from
"regularize / a bigger model". The verdict is not an error: exit 0 unless training diverged (1)
or the input is bad (2).
"""

import dataclasses
import math
import os
import shlex

import ml_collections
import numpy as np

from workflow import engine, experiment, reporting
from workflow.diagnostics import bias_variance, error_analysis, task_errors
from workflow.diagnostics.findings import (
    ERROR_ANALYSIS,
    VERDICT,
    Finding,
    declared_ids,
    has_error,
    rank_findings,
)
from workflow.engine import checkpoints, distributed, tasks
from workflow.errors import UsageError
from workflow.evaluate.metrics import check_metrics, split_metrics
from workflow.evaluate.report import report_sections, save_error_analysis_plots, save_plots
from workflow.reporting import rundir
from workflow.reporting.summary import Summary

# Config blocks that only change the analysis, never the trained numbers (see training_config).
ANALYSIS_KEYS = ("evaluate", "goal", "search", "improve", "budget")
# Timing of the run that trained the model, kept when this invocation trains no step.
TIMING_KEYS = ("wall_seconds", "steps_per_s", "compile_seconds")


def run_evaluate(setup: experiment.Setup, workdir: str) -> Summary:
    """Train or restore the run in `workdir`, decompose its errors against the goal, report;
    the directory is claimed (locked, its identity checked) for all of it."""
    sizes = subset_sizes(setup.config, job_train_examples(setup.dataset))  # bad fractions first
    if setup.task.kind.name == tasks.CLASSIFICATION:
        check_metrics(tuple(setup.config.evaluate.metrics), setup.dataset.num_classes)
    experiment.check_loss(setup)
    previous, resume_step = previous_run(workdir)
    trainable = dataclasses.replace(setup, config=training_config(setup.config, workdir))
    run = rundir.RunDir(workdir)
    data = setup.dataset.fingerprint()
    with run.claimed(rundir.TRAINING, "evaluate", trainable.config, data):
        summary = experiment.train_and_report(trainable, workdir, "evaluate", next_stage=None)
        return evaluate(setup, run, summary, previous, resume_step, sizes)


def evaluate(
    setup: experiment.Setup,
    run: rundir.RunDir,
    summary: Summary,
    previous: Summary | None,
    resume_step: int | None,
    sizes: list[tuple[float, int]],
) -> Summary:
    """The decomposition, verdicts and error analysis of the trained run in `run`, whose
    training summary is `summary` (`previous`: the summary.json it held before)."""
    config, workdir = setup.config, run.path
    tolerances = bias_variance.Tolerances.from_config(config.evaluate)
    summary.config = rundir.config_to_dict(config)
    if summary.status != "ok":  # diverged: no model to decompose, the nan_or_inf finding stands
        run.write_summary(summary)
        return summary

    metrics = summary.metrics
    trained_steps = metrics["steps"] - (resume_step or 0)
    metrics["trained_steps"] = trained_steps
    carried = carried_findings(previous, summary, trained_steps)
    if carried is not None:  # this invocation trained nothing: the training run's time stands
        metrics.update({k: previous.metrics[k] for k in TIMING_KEYS if k in previous.metrics})

    errors = split_errors(metrics, setup.dataset)
    decomposition = bias_variance.decompose(
        errors, config.goal.test_error, setup.dataset.irreducible_error, tolerances
    )
    records = run.read_metrics()
    facts = run_facts(setup, metrics, records)
    points = train_size_curve(setup, sizes, metrics) if sizes else []
    trend = bias_variance.train_size_trend(points, errors.n_val, tolerances, errors)
    verdicts = bias_variance.verdict_findings(decomposition, facts, trend)
    state = restore_reported(setup, run, metrics)
    analysis, worst_inputs = analyze_errors(setup, state)
    metrics.update(classification_metrics(setup, state))
    findings = rank_findings(
        verdicts
        + error_findings(setup, analysis, any(v.id == "underfit" for v in verdicts))
        + summary.findings
        + (carried or [])
    )

    metrics.update(decomposition.metrics())
    summary.status = "failed" if has_error(findings) else "ok"
    summary.findings = findings
    summary.next = next_commands(findings, workdir, errors.n_train, facts, trend)
    summary.bias_variance = bias_variance_section(decomposition, tolerances)
    summary.train_size = train_size_section(config, points, trend) if points else None
    summary.error_analysis = analysis or None
    plots = save_plots(run, setup, records, points)
    if analysis:
        plots.update(save_error_analysis_plots(run, setup, analysis, worst_inputs))
    log_evaluation(run, metrics)
    run.write_summary(summary)
    run.write_report(reporting.report_title(summary), report_sections(summary, plots))
    return summary


def log_evaluation(run: rundir.RunDir, metrics: dict) -> None:
    """The evaluation's numbers (`final/<metric>`) and its plots for a person (the worst
    examples, the confusion matrix) in the stage's TensorBoard run."""
    step = metrics["steps"]
    run.log_scalars(step, {f"final/{k}": v for k, v in metrics.items()})
    for plot in (rundir.PLOT_WORST_EXAMPLES, rundir.PLOT_CONFUSION_MATRIX):
        run.log_plot(plot, step)


def bias_variance_section(
    decomposition: bias_variance.Decomposition, tolerances: bias_variance.Tolerances
) -> dict:
    """summary.json's bias_variance: the table's rows, the decomposition line, the tolerances."""
    return {
        "rows": bias_variance.table_rows(decomposition),
        "decomposition": bias_variance.decomposition_line(decomposition),
        "tolerances": dataclasses.asdict(tolerances),
    }


def train_size_section(
    config: ml_collections.ConfigDict,
    points: list[bias_variance.SizePoint],
    trend: bias_variance.SizeTrend | None,
) -> dict:
    """summary.json's train_size: each subset's errors, their run length and the trend read."""
    return {
        "steps": config.evaluate.train_size_steps or config.num_steps,
        "points": [dataclasses.asdict(p) for p in points],
        **({"trend": trend.trend, "text": trend.text()} if trend else {}),
    }


def error_findings(
    setup: experiment.Setup, analysis: dict | None, underfit: bool = False
) -> list[Finding]:
    """What the error analysis says: classes and inputs the errors concentrate in (the
    classification analysis; the other tasks' analyses raise no finding); `underfit`: the
    verdict says the model does not fit its training data."""
    if not analysis or setup.task.kind.name != tasks.CLASSIFICATION:
        return []
    counts = np.bincount(setup.dataset.y_train, minlength=setup.dataset.num_classes)
    return error_analysis.findings(analysis, counts, underfit)


def restore_reported(
    setup: experiment.Setup, run: rundir.RunDir, metrics: dict
) -> engine.TrainState | None:
    """The reported model's state from its checkpoint; None when that checkpoint cannot be
    read, e.g. deleted by hand."""
    step = metrics.get("best_step") or metrics["steps"]
    if not os.path.isdir(run.checkpoints):
        return None
    ckpt = checkpoints.Checkpointer(run.checkpoints)
    try:
        # setup.state is only the template here: training donated its buffers, not its shapes.
        return ckpt.restore(step, setup.state)
    except UsageError:
        return None
    finally:
        ckpt.close()


def analyze_errors(
    setup: experiment.Setup, state: engine.TrainState | None
) -> tuple[dict | None, dict]:
    """Error analysis of the reported model on train and val; (None, {}) without one."""
    if state is None:
        return None, {}
    if setup.task.kind.name != tasks.CLASSIFICATION:
        return task_errors.analyze(setup.task, state, setup.dataset, setup.config.eval_batch_size)
    return error_analysis.analyze(setup.task, state, setup.dataset, setup.config.eval_batch_size)


def classification_metrics(
    setup: experiment.Setup, state: engine.TrainState | None
) -> dict[str, float]:
    """config.evaluate.metrics on every split, from the reported model's probabilities (single-
    label classification; the other tasks report their own metrics, engine/tasks.py)."""
    names = tuple(setup.config.evaluate.metrics)
    if state is None or not names or setup.task.kind.name != tasks.CLASSIFICATION:
        return {}
    predict = error_analysis.make_predict(setup.task)
    batch = setup.config.eval_batch_size
    splits = {}
    for split in ("train", "val", "test"):
        x, y = setup.dataset.split(split)
        if len(y):
            splits[split] = (y, error_analysis.predict_in_batches(predict, state, x, batch))
    return split_metrics(names, splits)


def subset_sizes(config: ml_collections.ConfigDict, n_train: int) -> list[tuple[float, int]]:
    """(fraction, examples) of each train-size run, smallest first; a subset under a batch fails."""
    sizes = {}
    for fraction in config.evaluate.train_sizes:
        size = round(fraction * n_train)
        if size < config.batch_size:
            raise UsageError(
                f"evaluate.train_sizes fraction {fraction:g} of {n_train} training examples is "
                f"{size}, fewer than batch_size={config.batch_size}; use fractions >= "
                f"{config.batch_size / n_train:.3g}"
            )
        sizes.setdefault(size, float(fraction))
    return sorted(((fraction, size) for size, fraction in sizes.items()), key=lambda s: s[1])


def previous_run(workdir: str) -> tuple[Summary | None, int | None]:
    """The summary.json already in `workdir` (before it is overwritten) and its last checkpoint."""
    run = rundir.RunDir(workdir)
    previous = None
    if run.exists:
        try:
            previous = run.read_summary()
        except (OSError, ValueError):
            previous = None  # an unreadable summary is rewritten below; nothing to keep from it
    resume_step = None
    # Never create the directory here: bad input may follow. Process 0's look decides for every
    # process (opening a Checkpointer is a collective; another may already have created it).
    if distributed.broadcast_ints([int(os.path.isdir(run.checkpoints))])[0]:
        ckpt = checkpoints.Checkpointer(run.checkpoints)
        try:
            resume_step = ckpt.latest_step()
        finally:
            ckpt.close()
    return previous, resume_step


def training_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The config the run directory is checked against, with its stored analysis-only blocks.

    A run trained by start_simple and evaluated with other tolerances, train sizes or goal is the
    same training run: those blocks never change the numbers, so they must not count as "a
    different config" when train_and_report resumes the directory.
    """
    run = rundir.RunDir(workdir)
    try:
        stored = run.read_json(rundir.CONFIG)
    except (OSError, ValueError):  # none yet; or damaged, which claiming the directory reports
        return config
    current = rundir.config_to_dict(config)
    if not isinstance(stored, dict):
        return config
    differing = [k for k in ANALYSIS_KEYS if stored.get(k) != current.get(k)]
    if not differing:
        return config
    adopted = config.copy_and_resolve_references()
    with adopted.unlocked():
        for key in differing:
            if key in stored:
                adopted[key] = ml_collections.ConfigDict(stored[key])
            else:  # a run directory written before this block existed
                del adopted[key]
    return adopted


def carried_findings(
    previous: Summary | None, summary: Summary, trained_steps: int
) -> list[Finding] | None:
    """The previous summary's findings (curve diagnoses of the training run) when this invocation
    trained no step, so they still describe this model; None when they do not apply."""
    if not previous or trained_steps != 0:
        return None
    if previous.metrics.get("steps") != summary.metrics["steps"]:
        return None
    # Verdicts and error-analysis findings are recomputed on this invocation's model.
    recomputed = {*declared_ids(VERDICT), *declared_ids(ERROR_ANALYSIS)}
    return [f for f in previous.findings if f.id not in recomputed]


def split_errors(metrics: dict, dataset) -> bias_variance.Errors:
    """The run's errors on each split (the task's error measure: 1 - accuracy, an RMSE in the
    targets' units, a per-label error rate), with the split sizes."""
    kind = dataset.task
    return bias_variance.Errors(
        train=metrics["train_error"],
        val=metrics["val_error"],
        test=metrics["test_error"],
        n_train=job_train_examples(dataset),
        n_val=len(dataset.y_val),
        n_test=len(dataset.y_test),
        kind=None if kind.name == tasks.CLASSIFICATION else kind,
    )


def available_train_examples(dataset) -> int | None:
    """Training examples the data holds, of which --config.dataset.train_size may take a subset."""
    raw = dataset.info.get("raw_sizes", {})
    if "train" not in raw:
        return None
    carved = 0 if "val" in raw else len(dataset.y_val)  # val carved from the raw train split
    return raw["train"] - carved


def run_facts(
    setup: experiment.Setup, metrics: dict, records: list[dict]
) -> bias_variance.RunFacts:
    """The concrete numbers the suggestions name: model size, optimizer, unused data, best step."""
    config, dataset = setup.config, setup.dataset
    val = [
        r for r in records if isinstance(r.get("val_loss"), float) and math.isfinite(r["val_loss"])
    ]
    own_val = "val" in dataset.info.get("raw_sizes", {})
    return bias_variance.RunFacts(
        model=config.model.name,
        num_params=metrics.get("num_params"),
        num_steps=config.num_steps,
        learning_rate=config.optimizer.learning_rate,
        l2=float(config.l2),
        weight_decay=float(config.optimizer.weight_decay),
        val_fraction=None if own_val else config.dataset.val_fraction,
        available_train=available_train_examples(dataset),
        best_val_step=min(val, key=lambda r: r["val_loss"])["step"] if val else None,
        last_step=metrics["steps"],
    )


def train_size_curve(
    setup: experiment.Setup, sizes: list[tuple[float, int]], metrics: dict
) -> list[bias_variance.SizePoint]:
    """Train and val error of one run per subset size, ending at the whole training set."""
    config = setup.config
    steps = config.evaluate.train_size_steps or config.num_steps
    n_train = job_train_examples(setup.dataset)
    fractions = {size: fraction for fraction, size in sizes}
    fractions.setdefault(n_train, 1.0)
    points = []
    for size, fraction in sorted(fractions.items()):
        if size == n_train and steps == config.num_steps:
            # The main run is this point: the same data, seed and step budget.
            points.append(
                bias_variance.SizePoint(
                    fraction, size, metrics["train_error"], metrics["val_error"]
                )
            )
        else:
            points.append(train_size_point(config, fraction, size, steps))
    return points


def train_size_point(
    config: ml_collections.ConfigDict, fraction: float, size: int, steps: int
) -> bias_variance.SizePoint:
    """A short run on the first `size` training examples, without a run directory."""
    subset = config.copy_and_resolve_references()
    subset.dataset.train_size = size
    subset.num_steps = steps
    subset.eval_every = steps
    subset.checkpoint_every = 0
    subset.progress = False
    setup = experiment.prepare(subset)
    result = engine.fit(setup.task, setup.state, setup.dataset, subset, progress=False)
    if result.status != "ok":  # a diverged subset run has no error to plot
        return bias_variance.SizePoint(fraction, size, math.nan, math.nan)
    # Evaluated where fit trained: with per-host data each host holds part of the subset.
    metrics = experiment.final_metrics(setup, result.state)
    return bias_variance.SizePoint(fraction, size, metrics["train_error"], metrics["val_error"])


def job_train_examples(dataset) -> int:
    """Training examples of the whole job: every host's shard with per-host data."""
    shard = dataset.info.get("shard")
    return int(shard["global_size"]) if shard else len(dataset.y_train)


def with_overrides(command: str, overrides: dict) -> str:
    """`command` (from experiment.stage_command) with --config.KEY=VALUE flags set or replaced."""
    parts = shlex.split(command)
    kept = [p for p in parts if not any(p.startswith(f"--config.{k}=") for k in overrides)]
    added = [f"--config.{k}={v}" for k, v in overrides.items()]
    return shlex.join(kept[:-1] + added + kept[-1:])  # --workdir stays last


def next_commands(
    findings: list[Finding],
    workdir: str,
    n_train: int,
    facts: bias_variance.RunFacts,
    trend: bias_variance.SizeTrend | None,
) -> list[str]:
    """The stages the verdict calls for; none once the goal is met."""
    ids = {f.id for f in findings}
    if "goal_met" in ids:
        return []
    parent = os.path.dirname(os.path.abspath(workdir))

    def command(stage: str, name: str | None = None) -> str:
        return experiment.stage_command(stage, os.path.join(parent, name or stage))

    commands = []
    if ids & {"underfit", "overfit", "val_overfit"}:
        commands.append(command("improve"))
    if ids & {"underfit", "overfit"}:
        # Not for val_overfit alone: more tuning rounds select on the val set even harder.
        commands.append(command("tune"))
    if "overfit" in ids and facts.available_train and facts.available_train > n_train:
        bigger = min(facts.available_train, 2 * n_train)
        more_data = with_overrides(
            command("evaluate", f"evaluate_train_size_{bigger}"), {"dataset.train_size": bigger}
        )
        flat = trend is not None and trend.trend == bias_variance.TREND_FLAT
        commands.insert(len(commands) if flat else 0, more_data)
    if "val_overfit" in ids and facts.val_fraction is not None and facts.val_fraction < 0.5:
        fraction = round(min(0.5, 2 * facts.val_fraction), 4)
        commands.append(
            with_overrides(
                command("evaluate", f"evaluate_val_fraction_{fraction:g}"),
                {"dataset.val_fraction": fraction},
            )
        )
    return commands
