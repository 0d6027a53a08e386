"""Stage 2, implement & debug: is the setup broken, and why?

    python -m workflow.debug --config=configs/mnist1d.py:mlp --workdir=runs/debug

Runs the sanity checks on one batch, overfits that batch, trains a short real run and reads
its loss curve; exits 1 when an error-severity finding stands, with the fixes named.
"""

import concurrent.futures
import dataclasses
import os

import jax
import numpy as np
from absl import flags

from workflow import (
    checks,
    cli,
    debugging,
    experiment,
    model_summary,
    reports,
    rundir,
    training,
)
from workflow.findings import Finding

FLAGS = flags.FLAGS

# The report's checklist: what was checked, and the finding ids that mean it failed.
CHECKLIST = (
    ("inputs are normalized", ("inputs_not_normalized",)),
    ("dtypes as expected", ("dtype_mismatch",)),
    ("labels in range and informative", ("labels_out_of_range", "labels_corrupted")),
    ("outputs are logits, not probabilities", ("softmax_before_loss",)),
    ("shapes match in the loss (no silent broadcasting)", ("shape_mismatch",)),
    ("initial loss near ln C", ("initial_loss_off",)),
    ("examples independent of their batch (eval)", ("batch_dependence",)),
    ("dropout / BatchNorm follow train and eval mode", ("train_eval_mode",)),
    (
        "gradients reach every parameter",
        ("no_gradient", "dead_units", "vanishing_gradients", "exploding_gradients"),
    ),
    ("no NaN/inf", ("nan_or_inf",)),
    ("overfits one batch", ("cannot_overfit_batch",)),
    (
        "loss curve of a short run",
        (
            "loss_increasing",
            "loss_exploding",
            "loss_oscillating",
            "loss_plateau",
            "lr_too_high",
            "lr_too_low",
        ),
    ),
)


def short_run_config(config, steps: int):
    """The config of the short real run: same setup, few steps, no checkpoints."""
    short = config.copy_and_resolve_references()
    short.num_steps = steps
    short.eval_every = steps
    short.checkpoint_every = 0
    return short


def check_and_overfit(
    setup: experiment.Setup, batch: dict
) -> tuple[list[Finding], debugging.OverfitResult, float]:
    """The checks on one batch, then overfitting it: (findings, overfit result, its lr)."""
    config = setup.config
    x, y = batch["x"], batch["y"]
    findings = checks.run_checks(setup, batch)
    # Memorize the batch as it is: augmentation would change it every step.
    plain_task = dataclasses.replace(setup.task, augment=None)
    overfit = debugging.overfit_one_batch(
        plain_task,
        setup.state,
        x,
        y,
        max_steps=config.debug.overfit_steps,
        loss_fraction=config.debug.overfit_loss_fraction,
    )
    overfit_lr = config.optimizer.learning_rate
    if not overfit.passed and overfit.final_loss < 0.5 * overfit.initial_loss:
        # Learning, but too slowly to finish: try once at 10x the learning rate. Memorizing
        # there means the setup works and the learning rate is what holds it back.
        faster = debugging.overfit_one_batch(
            plain_task,
            debugging.with_learning_rate(setup.state, 10 * overfit_lr),
            x,
            y,
            max_steps=config.debug.overfit_steps,
            loss_fraction=config.debug.overfit_loss_fraction,
        )
        if faster.passed:
            findings.append(debugging.slow_overfit_finding(overfit, faster, overfit_lr, config))
            overfit, overfit_lr = faster, 10 * overfit_lr
    return findings, overfit, overfit_lr


def run_debug(setup: experiment.Setup, workdir: str, started: float | None = None) -> dict:
    """Every debug step on `setup`; writes the run directory and returns the summary.

    `started` (training.now() before experiment.prepare) puts loading the data and building the
    model into the time to verdict, as the user waits for them too.
    """
    config, dataset = setup.config, setup.dataset
    t_start = training.now() if started is None else started
    batch = checks.sample_batch(dataset, config.debug.batch_size, config.seed)
    short = short_run_config(config, config.debug.train_steps)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="short-run") as pool:
        # The short run does not depend on the checks or the overfit: it compiles and trains on
        # the other core meanwhile (cold LeNet on digits, 2 cores: 9.1-9.4 s -> 7.6-8.7 s to the
        # verdict; the programs are traced by the user's own code in two threads at once, as
        # JAX allows, each from its own merged copy of the model).
        short_run = pool.submit(
            training.fit,
            setup.task,
            debugging.copy_state(setup.state),
            dataset,
            short,
            progress=config.progress,
        )
        findings, overfit, overfit_lr = check_and_overfit(setup, batch)
        fit = short_run.result()
    findings += debugging.curve_findings(
        fit, dataset.num_classes, dataset.y_train, config.optimizer.learning_rate
    )
    val_accuracy = next((r["val_accuracy"] for r in reversed(fit.records) if "val_loss" in r), None)
    if val_accuracy is not None:
        findings += checks.labels_signal_finding(
            overfit.final_accuracy, val_accuracy, dataset.num_classes
        )
    if not overfit.passed:
        ranked = debugging.rank_findings(findings)
        findings.append(debugging.cannot_overfit_finding(overfit, ranked, config))
    findings = debugging.rank_findings(findings)
    seconds = training.now() - t_start

    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    run = rundir.RunDir(workdir)
    rundir.write_json(run.file("config.json"), rundir.config_to_dict(config))
    with open(run.file("metrics.jsonl"), "w"):
        pass
    for record in fit.records:
        run.log(record)
    run.close()
    overfit_plot = plot_overfit(overfit, os.path.join(run.plots, "overfit_batch.png"))
    curve_plot = reports.plot_learning_curves(
        fit.records, os.path.join(run.plots, "short_run.png"), title="short run"
    )
    layers = experiment.write_model_summary(setup, run)
    has_error = any(f.severity == "error" for f in findings)
    next_commands = []
    if not has_error:
        parent = os.path.dirname(os.path.abspath(workdir))
        next_commands.append(experiment.stage_command("evaluate", os.path.join(parent, "evaluate")))
    summary = {
        "stage": "debug",
        "status": "failed" if has_error else "ok",
        "config": rundir.config_to_dict(config),
        "metrics": {
            "overfit_passed": overfit.passed,
            "overfit_learning_rate": overfit_lr,
            "overfit_steps": overfit.steps,
            "overfit_final_loss": overfit.final_loss,
            "overfit_final_accuracy": overfit.final_accuracy,
            "short_run_steps": int(fit.state.step),
            "short_run_val_accuracy": val_accuracy,
            "seconds_to_verdict": seconds,
        },
        "findings": [f.to_json() for f in findings],
        "next": next_commands,
        "dataset": dataset.summary(),
        "model_summary": layers,
        "device": jax.devices()[0].device_kind,
    }
    run.write_summary(summary)
    write_report(run, summary, overfit_plot, curve_plot)
    return summary


def plot_overfit(result: debugging.OverfitResult, path: str) -> str:
    """The overfit-one-batch loss and accuracy against step."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = np.arange(1, len(result.losses) + 1)
    ax_loss.plot(steps, result.losses)
    reports.set_log_scale_if_positive(ax_loss, result.losses.tolist())
    ax_loss.set_ylabel("batch loss")
    ax_acc.plot(steps, result.accuracies)
    ax_acc.set_ylabel("batch accuracy")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"overfit one batch: {'passed' if result.passed else 'FAILED'}")
    return reports.save_figure(fig, path)


def write_report(run: rundir.RunDir, summary: dict, overfit_plot: str, curve_plot: str) -> None:
    """report.md: the checklist, findings with fixes, and the two plots."""
    found = {f["id"]: f for f in summary["findings"]}
    rows = []
    for name, ids in CHECKLIST:
        hits = [found[i] for i in ids if i in found]
        status = "passed" if not hits else ", ".join(f"{h['severity']}: `{h['id']}`" for h in hits)
        evidence = "; ".join(
            ", ".join(f"{k}={reports.fmt(v)}" for k, v in list(h["evidence"].items())[:4])
            for h in hits
        )
        rows.append([name, status, evidence])
    m = summary["metrics"]
    reports.write_report(
        run.file("report.md"),
        f"debug: {summary['config']['model']['name']} on {summary['config']['dataset']['name']} "
        f"({summary['status']})",
        [
            ("Checks", reports.markdown_table(["check", "result", "evidence"], rows)),
            (
                "Findings (most likely root cause first)",
                reports.findings_markdown(summary["findings"]),
            ),
            (
                "Overfit one batch",
                f"{'Passed' if m['overfit_passed'] else 'Failed'} after {m['overfit_steps']} "
                f"steps (final loss {m['overfit_final_loss']:.3g}, accuracy "
                f"{m['overfit_final_accuracy']:.0%}).\n\n"
                f"![overfit one batch]({os.path.relpath(overfit_plot, run.path)})",
            ),
            ("Short run", f"![short run]({os.path.relpath(curve_plot, run.path)})"),
            (
                "Model",
                model_summary.markdown(summary["model_summary"], summary["config"]["batch_size"]),
            ),
            ("Time to verdict", f"{m['seconds_to_verdict']:.1f} s"),
        ],
    )


def main(argv: list[str]) -> int:
    """Debug the configured setup; exit 1 when an error-severity finding stands."""
    del argv
    started = training.now()
    setup = experiment.prepare(FLAGS.config)
    summary = run_debug(setup, FLAGS.workdir, started)
    print_findings(summary)
    return cli.EXIT_OK if summary["status"] == "ok" else cli.EXIT_FINDINGS


def print_findings(summary: dict) -> None:
    """The verdict on the console: each finding with its first suggestion."""
    from rich.console import Console

    console = Console()
    console.print(f"[bold]debug: {summary['status']}[/bold]")
    if not summary["findings"]:
        console.print("all checks passed")
    for f in summary["findings"]:
        console.print(f"{f['severity']:7s} {f['id']}: {f['message']}", soft_wrap=True)
        for s in f["suggestions"][:1]:
            console.print(f"        try: {s}", soft_wrap=True)


if __name__ == "__main__":
    cli.define_flags("debug")  # only as a script: stages can then be imported side by side
    cli.run(main)
