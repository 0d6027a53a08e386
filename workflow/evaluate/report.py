"""What the evaluate stage leaves for a person: error curves, the train-size plot, the error
analysis's plots, report.md."""

import math
from typing import Any

import numpy as np

from workflow import experiment, reporting
from workflow.diagnostics import bias_variance, error_analysis, task_errors
from workflow.engine import tasks
from workflow.reporting import rundir
from workflow.reporting.summary import Summary


def save_plots(
    run: rundir.RunDir,
    setup: experiment.Setup,
    records: list[dict],
    points: list[bias_variance.SizePoint],
) -> dict[str, str]:
    """The error curves and, when measured, error against training-set size; paths relative to
    the run directory, as report.md links them."""
    goal, title = setup.config.goal.test_error, f"{setup.config.model.name} on {setup.dataset.name}"
    irreducible = setup.dataset.irreducible_error
    kind = setup.task.kind
    plots = {
        "error curves": run.save_figure(
            rundir.PLOT_ERROR_CURVES,
            lambda: plot_error_curves(records, goal, irreducible, title, kind),
        )
    }
    if points:
        plots["train size"] = run.save_figure(
            rundir.PLOT_TRAIN_SIZE, lambda: plot_train_size(points, goal, title, kind)
        )
    return plots


def save_error_analysis_plots(
    run: rundir.RunDir,
    setup: experiment.Setup,
    analysis: dict,
    worst_inputs: dict[str, np.ndarray],
) -> dict[str, str]:
    """The confusion matrices and (images, sequences) the worst-examples grids; name -> path
    relative to the run directory."""
    kind, title = setup.dataset.kind, f"{setup.config.model.name} on {setup.dataset.name}"
    if analysis.get("task") == tasks.REGRESSION:
        return {
            "residuals": run.save_figure(
                rundir.PLOT_RESIDUALS, lambda: task_errors.plot_residuals(analysis, title)
            )
        }
    if analysis.get("task") == tasks.MULTILABEL:
        return {
            "label errors": run.save_figure(
                rundir.PLOT_LABEL_ERRORS, lambda: task_errors.plot_label_errors(analysis, title)
            )
        }
    plots = {
        "confusion matrix": run.save_figure(
            rundir.PLOT_CONFUSION_MATRIX, lambda: error_analysis.plot_confusion(analysis, title)
        )
    }
    if kind in error_analysis.DRAWN_KINDS:
        plots["worst examples"] = run.save_figure(
            rundir.PLOT_WORST_EXAMPLES,
            lambda: error_analysis.plot_worst_examples(analysis, worst_inputs, kind, title),
        )
    return plots


def numeric_series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that logged a finite `key`."""
    rows = [
        (r["step"], r[key])
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    return [s for s, _ in rows], [v for _, v in rows]


def plot_error_curves(
    records: list[dict], goal: float, irreducible: float | None, title: str, kind: Any = None
):
    """Train/val loss and error against step, with the goal (and irreducible error) marked;
    `kind`: the task (engine/tasks.py), whose error the curves show (records log its score,
    1 - error, as `accuracy`)."""
    from workflow.reporting.plots import plt

    fmt, label = bias_variance.error_format(kind), error_label(kind)

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "o-")):
        steps, loss = numeric_series(records, f"{split}_loss")
        if steps:
            ax_loss.plot(steps, loss, style, label=split)
        steps, accuracy = numeric_series(records, f"{split}_accuracy")
        if steps:
            ax_err.plot(steps, [1.0 - a for a in accuracy], style, label=split)
    reporting.set_log_scale_if_positive(ax_loss, numeric_series(records, "train_loss")[1])
    ax_err.axhline(goal, color="tab:green", linestyle="--", label=f"goal {fmt(goal)}")
    if irreducible is not None:
        ax_err.axhline(
            irreducible, color="tab:gray", linestyle=":", label=f"irreducible {fmt(irreducible)}"
        )
    for ax, name in ((ax_loss, "loss"), (ax_err, label)):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return fig


def plot_train_size(
    points: list[bias_variance.SizePoint], goal: float, title: str, kind: Any = None
):
    """Train and val error against training-set size (log scale), with the goal marked."""
    from workflow.reporting.plots import plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    sizes = [p.train_size for p in points]
    ax.plot(sizes, [p.train_error for p in points], "o-", label="train")
    ax.plot(sizes, [p.val_error for p in points], "o-", label="val")
    ax.axhline(
        goal,
        color="tab:green",
        linestyle="--",
        label=f"goal {bias_variance.error_format(kind)(goal)}",
    )
    ax.set_xscale("log")
    ax.set_xticks(sizes, labels=[f"{size:,}" for size in sizes])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training examples")
    ax.set_ylabel(error_label(kind))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"error against training-set size: {title}")
    return fig


def error_label(kind: Any = None) -> str:
    """The error axis's label: 'error (1 - accuracy)', 'RMSE', 'per-label error'."""
    if kind is None or kind.name == tasks.CLASSIFICATION:
        return "error (1 - accuracy)"
    return kind.error_name


def report_sections(summary: Summary, plots: dict[str, str]) -> list[tuple[str, str]]:
    """report.md: the decomposition table, the verdict, next commands, curves, run and data."""
    bv, m, c = summary.bias_variance, summary.metrics, summary.config
    tol = bv["tolerances"]
    fmt = bias_variance.error_format(tasks.kind_of(c)())
    table = "\n\n".join(
        [
            f"{bv['decomposition']}.",
            reporting.markdown_table(["Error source", "Value", "Analysis"], bv["rows"]),
            f"Goal: {c['goal']['source']}. A gap is called when it reaches the larger of its "
            f"tolerance (underfit {tol['underfit']:g}, overfit {tol['overfit']:g}, val overfit "
            f"{tol['val_overfit']:g}) and {tol['noise_z']:g} standard errors of the difference "
            "of the two error rates on sets of their sizes.",
        ]
    )
    goal_met = summary.has_finding("goal_met")
    nothing = "Nothing further: the goal is met." if goal_met else "Nothing further."
    sections = [
        ("Bias-variance decomposition", table),
        ("Verdict", reporting.findings_markdown(summary.findings)),
        ("Next", reporting.next_markdown(summary.next, nothing)),
        ("Learning curves", f"![error curves]({plots['error curves']})"),
    ]
    if summary.error_analysis is not None:
        analysis = summary.error_analysis
        if analysis.get("task", tasks.CLASSIFICATION) != tasks.CLASSIFICATION:
            blocks = task_errors.report_blocks(analysis)
        else:
            blocks = error_analysis.report_blocks(analysis, summary.dataset["kind"])
        body = error_analysis.blocks_markdown(blocks)
        for name in ("confusion matrix", "worst examples", "residuals", "label errors"):
            if name in plots:
                body += f"\n\n![{name}]({plots[name]})"
        sections.append(("Error analysis", body))
    if summary.train_size is not None:
        ts = summary.train_size
        rows = [
            [f"{p['train_size']:,}", f"{p['fraction']:g}"]
            + [fmt(p[k]) for k in ("train_error", "val_error")]
            for p in ts["points"]
        ]
        sections.append(
            (
                "Error against training-set size",
                f"{ts.get('text', 'too few finished runs to read a trend')} "
                f"({ts['steps']:,} steps each).\n\n"
                + reporting.markdown_table(
                    ["examples", "fraction", "train error", "val error"], rows
                )
                + f"\n\n![train size]({plots['train size']})",
            )
        )
    run_rows = [
        ["model", f"`{c['model']['name']}` ({reporting.fmt(m['num_params'])} parameters)"],
        ["optimizer", f"{c['optimizer']['name']} lr={c['optimizer']['learning_rate']:g}"],
        [
            "steps",
            f"{m['steps']:,} at batch {c['batch_size']} ({m['trained_steps']:,} trained now)",
        ],
        ["device", summary.device],
    ]
    split_rows = [
        [
            split,
            f"{summary.dataset['splits'][split]['size']:,}",
            reporting.fmt(m[f"{split}_loss"]),
            fmt(m[f"{split}_error"]),
        ]
        for split in ("train", "val", "test")
    ]
    return [
        *sections,
        (
            "Results",
            reporting.markdown_table(
                ["split", "examples", "loss", error_label(tasks.kind_of(c)())], split_rows
            ),
        ),
        ("Run", reporting.markdown_table(["", ""], run_rows)),
    ]
