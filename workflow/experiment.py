"""One training run as the stages share it: set up, train (resuming), summarize, report."""

import dataclasses
import os
import shlex
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

import models
from workflow import config_lib, data, engine, reporting
from workflow.diagnostics.curves import curve_findings
from workflow.diagnostics.findings import Finding, has_error, rank_findings
from workflow.engine import augment, checkpoints, loop, losses, tasks, trials
from workflow.errors import UsageError, user_code
from workflow.reporting import model_summary, rundir
from workflow.reporting.summary import Summary


@dataclasses.dataclass
class Setup:
    """Everything checked and built before a run directory is touched."""

    config: ml_collections.ConfigDict
    dataset: Any
    model: Any
    task: engine.Task
    state: engine.TrainState


@dataclasses.dataclass
class Trained:
    """What `train` did: fit's result and how the run resumed."""

    result: engine.FitResult
    resume_step: int | None  # the checkpoint it resumed from (None: from the start)
    skipped: list[dict]  # the checkpoints set aside (Checkpointer.restore_latest)
    unverified: str | None  # why the resumed checkpoint could not be verified; None: it was


def prepare(config: ml_collections.ConfigDict) -> Setup:
    """Validate the config, load the data, build the model: all bad input fails here, before
    anything is written (but a broken loss, which the debug stage diagnoses as a finding and
    the training stages refuse first with `check_loss`)."""
    config_lib.validate_config(config)
    dataset = data.load_dataset(
        config.dataset, seed=config.seed, shard=data.process_shard(config), task=config.task
    )
    check_batch_size(config, dataset)
    engine.data_mesh(config)  # a batch the data-parallel devices cannot split is refused here
    if config.model.name == "auto":  # the workflow's default architecture for the data kind
        config.model.name = models.default_model_for_kind(dataset.kind)
    if "augment" in config:  # in the config, so every Task built from it augments alike
        if config.augment.kind is None:
            config.augment.kind = dataset.kind
        elif config.augment.kind != dataset.kind:
            raise UsageError(
                f"invalid value augment.kind={config.augment.kind!r}: dataset "
                f"{config.dataset.name!r} is {dataset.kind} data; use {dataset.kind} or None"
            )
        noise = config.augment.get(dataset.kind, {}).get("noise_std", 0.0)
        if config.augment.enabled and noise and dataset.info.get("vocabulary"):
            # Ids are categories: id + noise, cast back to an integer, is another word.
            raise UsageError(
                f"invalid value augment.{dataset.kind}.noise_std={noise:g}: dataset "
                f"{config.dataset.name!r} is token ids, which noise would turn into other "
                "words; use 0 (time shifts only)"
            )
    model = engine.build_model(config, dataset.input_shape, dataset.num_classes)
    # The shape is named: a model written for other inputs (a Flax example's CNN sized for
    # 28x28 images) fails here with a layer's shape error that does not say what it was given.
    shape = tuple(dataset.input_shape)
    with user_code(f"model {config.model.name!r} on inputs of shape {shape}", type(model)):
        engine.check_output_shape(model, dataset.input_shape, dataset.num_classes, config.task)
    task, state = engine.create_train_state(model, config, task_kind=dataset.task)
    return Setup(config, dataset, model, task, state)


def check_batch_size(config: ml_collections.ConfigDict, dataset) -> None:
    """A training batch no larger than the training split (of the whole job, per-host data)."""
    shard = dataset.info.get("shard")
    examples = int(shard["global_size"]) if shard else len(dataset.y_train)
    if config.batch_size > examples:
        raise UsageError(
            f"batch_size={config.batch_size} exceeds the {examples} training examples; "
            f"use batch_size <= {examples}"
        )


def check_loss(setup: Setup) -> None:
    """The configured loss on one batch's shapes (nothing runs): it takes (logits, labels) and
    returns one float per example. Every training stage calls it before its first write."""
    config, dataset = setup.config, setup.dataset
    logits = jax.ShapeDtypeStruct((config.batch_size, dataset.num_classes), jnp.float32)
    labels = jax.ShapeDtypeStruct(
        (config.batch_size, *dataset.y_train.shape[1:]), dataset.y_train.dtype
    )
    losses.check_loss(setup.task.loss_fn, config.loss, logits, labels)


def with_whole_training_split(setup: Setup) -> Setup:
    """`setup` with the whole training split on this process (batched trials and the lr range
    test compare hyperparameters on the same data on every process); itself unless per-host
    data left this process only its shard."""
    if data.process_shard(setup.config) is None:
        return setup
    whole = data.load_dataset(
        setup.config.dataset, seed=setup.config.seed, shard=None, task=setup.config.task
    )
    return dataclasses.replace(setup, dataset=whole)


def final_metrics(setup: Setup, state: engine.TrainState) -> dict[str, float]:
    """Loss, error and the task's metrics (tasks.split_metric_names) of `state` on every split,
    in eval mode."""
    mesh = engine.data_mesh(setup.config)  # evaluate where fit trained (all hosts' devices)
    evaluator = engine.Evaluator(setup.task, setup.config.eval_batch_size, mesh)
    ds = setup.dataset
    metrics = {}
    for split, x, y in (
        ("train", ds.x_train, ds.y_train),
        ("val", ds.x_val, ds.y_val),
        ("test", ds.x_test, ds.y_test),
    ):
        result = evaluator(state, x, y)
        for name in tasks.split_metric_names(setup.config):
            metrics[f"{split}_{name}"] = result[name]
    return metrics


def divergence_finding(result: engine.FitResult, config) -> Finding:
    """The `nan_or_inf` finding for a run stopped by a non-finite loss or gradient."""
    d = result.divergence
    return Finding(
        id="nan_or_inf",
        severity="error",
        message=f"the training {d['quantity']} became NaN/inf at step {d['step']}",
        evidence={
            "step": d["step"],
            "quantity": d["quantity"],
            "last_finite_loss": d["last_finite_loss"],
            "learning_rate": config.optimizer.learning_rate,
            "last_good_checkpoint": result.last_checkpoint,
        },
        suggestions=[
            f"lower the learning rate (now {config.optimizer.learning_rate:g}), e.g. by 10x",
            "check every exp, log and division in the model and loss for overflow or log(0)",
            "run workflow.debug to find the operation where the NaN first appears",
        ],
    )


def corrupt_checkpoint_finding(
    skipped: list[dict], resume_step: int | None, unverified: str | None = None
) -> Finding:
    """The `corrupt_checkpoint` warning: checkpoints set aside (unreadable, damaged, or without
    a checksum while an older one had one), where the run resumed, and why that checkpoint could
    not be verified when it could not."""
    resumed = f"resumed from step {resume_step}" if resume_step is not None else "restarted"
    parts = []
    if skipped:
        steps = ", ".join(str(item["step"]) for item in skipped)
        parts.append(
            f"checkpoint(s) at step {steps} were unreadable, damaged or unverifiable and set aside"
        )
    if unverified:
        parts.append(f"the checkpoint at step {resume_step} was not verified: {unverified}")
    suggestions = ["check the disk and whatever else writes to the run directory"]
    if skipped:
        suggestions.append(f"inspect or delete {', '.join(i['moved_to'] for i in skipped)}")
    if unverified:
        suggestions.append(
            "to retrain from the last verified state instead, move that "
            "checkpoint out of checkpoints/ and run the same command again"
        )
    return Finding(
        id="corrupt_checkpoint",
        severity="warning",
        message=f"{'; '.join(parts)}; the run {resumed}",
        evidence={"checkpoints": skipped, "resumed_from": resume_step, "unverified": unverified},
        suggestions=suggestions,
    )


# Set while a stage runs inside Python (workflow.api): the next steps are then calls of its
# functions, and the interpreter's own command line (a Jupyter kernel's) is never read.
IN_PYTHON = {"active": False}


def stage_command(stage: str, workdir: str) -> str:
    """The command line of `stage` with this invocation's flags and another --workdir (inside
    Python: the workflow.api call)."""
    if IN_PYTHON["active"]:
        return f"workflow.api.{stage}(model, data, ..., workdir={workdir!r})"
    args = [a for a in sys.argv[1:] if not a.startswith("--workdir")]
    return shlex.join(["python", "-m", f"workflow.{stage}", *args, f"--workdir={workdir}"])


def config_command(stage: str, config_path: str, workdir: str) -> str:
    """Run `stage` on a config file the stage wrote (a best_config.py) in another `workdir`:
    the command line, or inside Python the workflow.api call (the config names the model and
    the data as this process registered them, tuned options included)."""
    if IN_PYTHON["active"]:
        return f"workflow.api.{stage}(config={config_path!r}, workdir={workdir!r})"
    return f"python -m workflow.{stage} --config={config_path} --workdir={workdir}"


def train_and_report(setup: Setup, workdir: str, stage: str, next_stage: str | None) -> Summary:
    """Train in `workdir` (resuming a killed run), then write summary.json and report.md.

    The loss is checked and the directory claimed (locked, its identity checked) before
    anything is written there."""
    check_loss(setup)
    run = rundir.RunDir(workdir)
    with run.claimed(rundir.TRAINING, stage, setup.config, setup.dataset.fingerprint()) as new:
        return report_training(setup, run, stage, next_stage, train(setup, run, new))


def report_training(
    setup: Setup, run: rundir.RunDir, stage: str, next_stage: str | None, trained: Trained
) -> Summary:
    """summary.json and report.md of a training run, from what `train` returned."""
    config, workdir, result = setup.config, run.path, trained.result
    findings = run_findings(setup, result, trained.skipped, trained.resume_step, trained.unverified)
    summary = Summary(
        stage=stage,
        status="failed" if result.status == "ok" and has_error(findings) else result.status,
        config=rundir.config_to_dict(config),
        metrics=run_metrics(setup, result),
        findings=findings,
        next=next_commands(workdir, next_stage),
        dataset=setup.dataset.summary(),
        model_summary=write_model_summary(setup, run),
        loops={"train": result.loop} if result.loop else None,
    )
    run.log_hparams(config, result.final_step, summary.metrics)
    curve = run.save_figure(
        rundir.PLOT_LEARNING_CURVES,
        lambda: reporting.plot_learning_curves(
            run.read_metrics(),
            title=f"{config.model.name} on {setup.dataset.name}",
            score_label=setup.task.kind.score_label,
        ),
    )
    run.write_summary(summary)
    run.write_report(reporting.report_title(summary), report_sections(summary, curve))
    return summary


def train(setup: Setup, run: rundir.RunDir, new: bool) -> Trained:
    """engine.fit in the claimed `run` (`new`: claim found it new), resumed from its newest
    verified checkpoint."""
    config = setup.config
    ckpt = checkpoints.Checkpointer(run.checkpoints, max_to_keep=engine.checkpoints_to_keep(config))
    state, resume_step, skipped, unverified = setup.state, None, [], None
    try:
        lost = run.first_unrecorded_step()  # a torn last record: its step is trained again
        if lost is not None:
            ckpt.discard_from(lost)
        if ckpt.latest_step() is not None:
            state, resume_step, skipped = ckpt.restore_latest(setup.state)
        for item in skipped:
            print(f"warning: {item['error']}; set aside as {item['moved_to']}", file=sys.stderr)
        if resume_step is not None:
            unverified = ckpt.unverified_reason(resume_step)
        if unverified:
            print(f"warning: checkpoint at step {resume_step}: {unverified}", file=sys.stderr)
        run.open(config, resume_step=resume_step)
    except BaseException:
        ckpt.close()
        if new:
            run.remove()
        raise
    run.write_json(rundir.NORMALIZATION, setup.dataset.normalization)
    try:
        result = engine.fit(
            setup.task,
            state,
            setup.dataset,
            config,
            log=run.log,
            checkpointer=ckpt,
            progress=config.progress,
            history=run.read_metrics(),  # the records up to the resume step (early stopping)
            log_layers=run.log_layers if config.tensorboard.histograms else None,
        )
    finally:
        ckpt.close()
        run.close()
    return Trained(result, resume_step, skipped, unverified)


def record_trial(
    setup: Setup, workdir: str, stage: str, trial: "trials.TrainedTrial"
) -> Summary | None:
    """A trial the search trained to the config's full length, recorded in `workdir` as its
    training run (metrics.jsonl, its final checkpoint, summary and report) instead of being
    trained again; None when `workdir` already holds a run (resume that by training) or the
    trial's state is not this setup's (another model's shapes, or early stopping, which a trial
    does not run)."""
    if not trial_fits(setup, trial):
        return None
    check_loss(setup)
    run = rundir.RunDir(workdir)
    with run.claimed(rundir.TRAINING, stage, setup.config, setup.dataset.fingerprint()) as new:
        if not new:
            return None
        try:
            trained = write_trial(setup, run, trial)
        except BaseException:
            run.remove()
            raise
        return report_training(setup, run, stage, None, trained)


def trial_fits(setup: Setup, trial: "trials.TrainedTrial") -> bool:
    """Whether `trial` trained what `setup` would: the same state structure and shapes, the
    config's full length, no early stopping."""
    if setup.config.early_stopping.enabled or trial.num_steps != setup.config.num_steps:
        return False
    built, held = jax.tree.leaves(setup.state), jax.tree.leaves(trial.state)
    return jax.tree.structure(setup.state) == jax.tree.structure(trial.state) and all(
        jnp.shape(a) == jnp.shape(b) for a, b in zip(built, held, strict=True)
    )


def write_trial(setup: Setup, run: rundir.RunDir, trial: "trials.TrainedTrial") -> Trained:
    """The trial's records, final checkpoint and normalization in the claimed `run`, as
    engine.fit writes a run's: train records per log window, in step order with the val records
    the search measured at its rungs and the val record at the end."""
    config, steps = setup.config, trial.num_steps
    rate = engine.format_rate(steps, trial.seconds)
    train = loop.with_learning_rate(
        engine.window_records(0, trial.step_metrics, config.log_every, rate), config
    )
    evaluator = engine.Evaluator(setup.task, config.eval_batch_size)
    val = [*trial.val_records, loop.validation_record(evaluator, trial.state, setup.dataset, steps)]
    # fit's order: a step's train record, then its val record.
    records = sorted(train + val, key=lambda r: (r["step"], "val_loss" in r))
    ckpt = checkpoints.Checkpointer(run.checkpoints, max_to_keep=engine.checkpoints_to_keep(config))
    try:
        run.open(config, resume_step=None)
        for record in records:
            run.log(record)
        ckpt.save(steps, trial.state)
    finally:
        ckpt.close()
        run.close()
    run.write_json(rundir.NORMALIZATION, setup.dataset.normalization)
    result = engine.FitResult(
        state=trial.state,
        status="ok",
        records=records,
        step_losses=trial.step_metrics["loss"],
        divergence=None,
        wall_seconds=trial.seconds,
        steps_per_s=rate,
        compile_seconds=0.0,
        start_step=0,
        last_checkpoint=steps,
        final_step=steps,
        best_step=steps,
    )
    return Trained(result, None, [], None)


def run_findings(
    setup: Setup,
    result: engine.FitResult,
    skipped: list[dict],
    resume_step: int | None,
    unverified: str | None = None,
) -> list[Finding]:
    """A divergence, checkpoints set aside or unverified, and what the learning curves say;
    ranked."""
    config = setup.config
    findings = [divergence_finding(result, config)] if result.divergence else []
    if skipped or unverified:
        findings.append(corrupt_checkpoint_finding(skipped, resume_step, unverified))
    if result.start_step == 0:  # the curve checks read a whole run from its first step
        findings += curve_findings(
            result,
            setup.dataset.num_classes,
            setup.dataset.y_train,
            config.optimizer.learning_rate,
            initial_expected=initial_loss_reference(setup),
        )
    return rank_findings(findings)


def initial_loss_reference(setup: Setup) -> float:
    """The loss a model knowing only the training targets' distribution has (tasks.py): the
    level an untrained model's loss starts near, for the curve diagnosis."""
    ds = setup.dataset
    return tasks.initial_loss_reference(
        setup.task.kind, setup.task.loss_fn, ds.y_train, ds.num_classes
    )


def run_metrics(setup: Setup, result: engine.FitResult) -> dict[str, Any]:
    """Loss and accuracy on every split, the model's size, the steps and the time they took."""
    metrics = final_metrics(setup, result.state)
    metrics.update(
        num_params=models.count_params(setup.model),
        steps=result.final_step,
        # The step the reported model comes from: the best evaluation's with early stopping.
        best_step=result.best_step,
        stopped_early=result.stopped_early,
        wall_seconds=result.wall_seconds,
        steps_per_s=result.steps_per_s,
        compile_seconds=result.compile_seconds,
    )
    return metrics


def next_commands(workdir: str, next_stage: str | None) -> list[str]:
    """The command of `next_stage` in a folder beside `workdir` (none without one)."""
    if not next_stage:
        return []
    parent = os.path.dirname(os.path.abspath(workdir))
    return [stage_command(next_stage, os.path.join(parent, next_stage))]


def write_model_summary(setup: Setup, run: rundir.RunDir) -> list[dict]:
    """model_summary.txt in the run directory; the layers for summary.json's model_summary."""
    ds = setup.dataset
    described = model_summary.summarize(
        setup.model, ds.input_shape, setup.config.batch_size, ds.x_train.dtype
    )
    run.write_text(rundir.MODEL_SUMMARY, described["text"])
    return described["layers"]


def report_sections(summary: Summary, curve: str) -> list[tuple[str, str]]:
    """report.md: metrics table, run, learning curves, findings, model, data, next commands."""
    m, c = summary.metrics, summary.config
    columns = ("loss", *tasks.kind_of(c).metric_names)
    rows = [
        [split, *(reporting.fmt(m[f"{split}_{name}"]) for name in columns)]
        for split in ("train", "val", "test")
    ]
    model_kwargs = ", ".join(f"{k}={v}" for k, v in c["model"].items() if k != "name")
    run_rows = [
        ["model", f"`{c['model']['name']}` ({model_kwargs})"],
        ["parameters", reporting.fmt(m["num_params"])],
        ["optimizer", f"{c['optimizer']['name']} lr={c['optimizer']['learning_rate']:g}"],
        ["steps", f"{m['steps']:,} at batch {c['batch_size']}"],
        [
            "wall time",
            f"{m['wall_seconds']:.1f} s ({m['steps_per_s']:,.0f} steps/s, "
            f"{m['compile_seconds']:.1f} s compiling)",
        ],
        ["device", summary.device],
    ]
    if summary.loops and "train" in summary.loops:
        run_rows.append(["training loop", engine.loop_form.describe_loop(summary.loops["train"])])
    if c.get("augment", {}).get("enabled"):
        kind = c["augment"]["kind"]
        run_rows.append(["augmentation", f"{kind}: {augment.describe(kind, c['augment'])}"])
    if c.get("early_stopping", {}).get("enabled"):
        es = c["early_stopping"]
        ended = f"stopped at step {m['steps']:,}" if m["stopped_early"] else "did not stop early"
        run_rows.append(
            [
                "early stopping",
                f"{ended}; the model reported is step {m['best_step']:,}, best {es['metric']} "
                f"(patience {es['patience']} evaluations)",
            ]
        )
    ds = summary.dataset
    data_rows = [
        ["dataset", f"{ds['name']} ({ds['kind']}, {described_targets(c, ds['num_classes'])})"],
        ["input shape", str(tuple(ds["input_shape"]))],
        ["normalized", "per channel, train statistics" if ds["normalized"] else "no"],
        ["irreducible error", reporting.fmt(ds["irreducible_error"])],
    ]
    for split, info in ds["splits"].items():
        counts = info.get("class_counts")
        balance = f"{min(counts):,}–{max(counts):,} per class" if counts else ""
        if "target_mean" in info:
            balance = "targets " + ", ".join(
                f"{mu:.4g} ± {sd:.4g}"
                for mu, sd in zip(info["target_mean"], info["target_std"], strict=True)
            )
        if "label_counts" in info:
            balance = "label counts " + ", ".join(f"{n:,}" for n in info["label_counts"])
        data_rows.append([f"{split} examples", f"{info['size']:,} ({balance})"])
    return [
        ("Results", reporting.markdown_table(["split", *columns], rows)),
        ("Run", reporting.markdown_table(["", ""], run_rows)),
        ("Learning curves", f"![learning curves]({curve})"),
        ("Findings", reporting.findings_markdown(summary.findings)),
        ("Model", model_summary.markdown(summary.model_summary, c["batch_size"])),
        ("Data", reporting.markdown_table(["", ""], data_rows)),
        ("Next", reporting.next_markdown(summary.next)),
    ]


def described_targets(config: dict, count: int) -> str:
    """'10 classes', '1 regression target', '3 labels': what a dataset's targets are."""
    task = tasks.kind_of(config).name
    if task == tasks.REGRESSION:
        return f"{count} regression target{'s' if count != 1 else ''}"
    if task == tasks.MULTILABEL:
        return f"{count} labels"
    return f"{count} classes"


def print_summary(summary: Summary) -> None:
    """A console table of the run's results and findings."""
    from rich.console import Console
    from rich.table import Table

    m = summary.metrics
    table = Table(title=f"{summary.stage}: {summary.status}")
    columns = ("loss", *tasks.kind_of(summary.config).metric_names)
    for col in ("split", *columns):
        table.add_column(col)
    for split in ("train", "val", "test"):
        table.add_row(split, *(reporting.fmt(m[f"{split}_{name}"]) for name in columns))
    console = Console()
    console.print(table)
    for f in summary.findings:
        console.print(f"[bold]{f.severity}[/bold] {f.id}: {f.message}")
    for cmd in summary.next:
        console.print(f"next: {cmd}", soft_wrap=True)
