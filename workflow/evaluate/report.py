"""What the evaluate stage leaves for a person: error curves, the train-size plot,
report.md."""

import math
import os

from workflow import experiment, reporting
from workflow.diagnostics import bias_variance, error_analysis
from workflow.reporting import rundir


def write_plots(
    run: rundir.RunDir,
    setup: experiment.Setup,
    records: list[dict],
    points: list[bias_variance.SizePoint],
) -> dict[str, str]:
    """The error curves and, when measured, error against training-set size; paths relative to
    the run directory, as report.md links them."""
    goal, title = setup.config.goal.test_error, f"{setup.config.model.name} on {setup.dataset.name}"
    error_curves = os.path.join(run.plots, "error_curves.png")
    plots = {
        "error curves": plot_error_curves(
            records, error_curves, goal, setup.dataset.irreducible_error, title
        )
    }
    if points:
        train_size = os.path.join(run.plots, "train_size.png")
        plots["train size"] = plot_train_size(points, train_size, goal, title)
    return {name: os.path.relpath(path, run.path) for name, path in plots.items()}


def numeric_series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that logged a finite `key`."""
    rows = [
        (r["step"], r[key])
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    return [s for s, _ in rows], [v for _, v in rows]


def plot_error_curves(
    records: list[dict], path: str, goal: float, irreducible: float | None, title: str
) -> str:
    """Train/val loss and error against step, with the goal (and irreducible error) marked."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "o-")):
        steps, loss = numeric_series(records, f"{split}_loss")
        if steps:
            ax_loss.plot(steps, loss, style, label=split)
        steps, accuracy = numeric_series(records, f"{split}_accuracy")
        if steps:
            ax_err.plot(steps, [1.0 - a for a in accuracy], style, label=split)
    reporting.set_log_scale_if_positive(ax_loss, numeric_series(records, "train_loss")[1])
    ax_err.axhline(goal, color="tab:green", linestyle="--", label=f"goal {bias_variance.pct(goal)}")
    if irreducible is not None:
        ax_err.axhline(
            irreducible,
            color="tab:gray",
            linestyle=":",
            label=f"irreducible {bias_variance.pct(irreducible)}",
        )
    for ax, label in ((ax_loss, "loss"), (ax_err, "error (1 - accuracy)")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return reporting.save_figure(fig, path)


def plot_train_size(
    points: list[bias_variance.SizePoint], path: str, goal: float, title: str
) -> str:
    """Train and val error against training-set size (log scale), with the goal marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    sizes = [p.train_size for p in points]
    ax.plot(sizes, [p.train_error for p in points], "o-", label="train")
    ax.plot(sizes, [p.val_error for p in points], "o-", label="val")
    ax.axhline(goal, color="tab:green", linestyle="--", label=f"goal {bias_variance.pct(goal)}")
    ax.set_xscale("log")
    ax.set_xticks(sizes, labels=[f"{size:,}" for size in sizes])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("training examples")
    ax.set_ylabel("error (1 - accuracy)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"error against training-set size: {title}")
    return reporting.save_figure(fig, path)


def write_report(run: rundir.RunDir, summary: dict, plots: dict[str, str]) -> None:
    """report.md: the decomposition table, the verdict, next commands, curves, run and data."""
    bv, m, c = summary["bias_variance"], summary["metrics"], summary["config"]
    goal_met = any(f["id"] == "goal_met" for f in summary["findings"])
    tol = bv["tolerances"]
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
    if summary["next"]:
        next_md = "\n".join(f"```\n{cmd}\n```" for cmd in summary["next"])
    else:
        next_md = "Nothing further: the goal is met." if goal_met else "Nothing further."
    sections = [
        ("Bias-variance decomposition", table),
        ("Verdict", reporting.findings_markdown(summary["findings"])),
        ("Next", next_md),
        ("Learning curves", f"![error curves]({plots['error curves']})"),
    ]
    if "error_analysis" in summary:
        body = error_analysis.blocks_markdown(
            error_analysis.report_blocks(summary["error_analysis"], summary["dataset"]["kind"])
        )
        for name in ("confusion matrix", "worst examples"):
            if name in plots:
                body += f"\n\n![{name}]({plots[name]})"
        sections.append(("Error analysis", body))
    if "train_size" in summary:
        ts = summary["train_size"]
        rows = [
            [f"{p['train_size']:,}", f"{p['fraction']:g}"]
            + [bias_variance.pct(p[k]) for k in ("train_error", "val_error")]
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
        ["device", summary["device"]],
    ]
    split_rows = [
        [
            split,
            f"{summary['dataset']['splits'][split]['size']:,}",
            reporting.fmt(m[f"{split}_loss"]),
            bias_variance.pct(m[f"{split}_error"]),
        ]
        for split in ("train", "val", "test")
    ]
    sections += [
        ("Results", reporting.markdown_table(["split", "examples", "loss", "error"], split_rows)),
        ("Run", reporting.markdown_table(["", ""], run_rows)),
    ]
    reporting.write_report(
        run.file("report.md"),
        f"evaluate: {c['model']['name']} on {c['dataset']['name']} ({summary['status']})",
        sections,
    )
