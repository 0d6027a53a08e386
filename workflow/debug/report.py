"""What the debug stage leaves for a person: the checklist, the plots, report.md."""

import numpy as np

from workflow import reporting
from workflow.diagnostics import findings
from workflow.diagnostics.findings import Finding
from workflow.diagnostics.overfit import OverfitResult
from workflow.engine import tasks
from workflow.engine.loop_form import describe_loop
from workflow.reporting import model_summary
from workflow.reporting.summary import Summary


def plot_overfit(result: OverfitResult, score_label: str = "accuracy"):
    """The overfit-one-batch loss and accuracy (the task's score, `score_label`) against step."""
    from workflow.reporting.plots import plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = np.arange(1, len(result.losses) + 1)
    ax_loss.plot(steps, result.losses)
    reporting.set_log_scale_if_positive(ax_loss, result.losses.tolist())
    ax_loss.set_ylabel("batch loss")
    ax_acc.plot(steps, result.accuracies)
    ax_acc.set_ylabel(f"batch {score_label}")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"overfit one batch: {'passed' if result.passed else 'FAILED'}")
    return fig


def checklist_rows(found: list[Finding], task: str = tasks.CLASSIFICATION) -> list[list[str]]:
    """The checklist (findings.checklist()): [check, result, evidence] per row, each row in the
    terms of `task` (config.task; tasks.TaskKind.checklist_terms), "not applicable" where a row
    has none."""
    by_id = {f.id: f for f in found}
    kind = tasks.KINDS[task]
    rows = []
    for row, ids in findings.checklist():
        if row in kind.not_applicable:
            rows.append([row, "not applicable", f"task={task}: {kind.not_applicable[row]}"])
            continue
        name = kind.checklist_terms.get(row, row)
        hits = [by_id[i] for i in ids if i in by_id]
        status = "passed" if not hits else ", ".join(f"{h.severity}: `{h.id}`" for h in hits)
        evidence = "; ".join(
            ", ".join(f"{k}={reporting.fmt(v)}" for k, v in list(h.evidence.items())[:4])
            for h in hits
        )
        rows.append([name, status, evidence])
    return rows


def report_sections(summary: Summary, overfit_plot: str, curve_plot: str) -> list[tuple[str, str]]:
    """report.md: the checklist, findings with fixes, and the two plots."""
    rows = checklist_rows(summary.findings, summary.config.get("task", tasks.CLASSIFICATION))
    m = summary.metrics
    return [
        ("Checks", reporting.markdown_table(["check", "result", "evidence"], rows)),
        (
            "Findings (most likely root cause first)",
            reporting.findings_markdown(summary.findings),
        ),
        (
            "Overfit one batch",
            f"{'Passed' if m['overfit_passed'] else 'Failed'} after {m['overfit_steps']} "
            f"steps (final loss {m['overfit_final_loss']:.3g}, {overfit_score(summary)}).\n\n"
            f"![overfit one batch]({overfit_plot})",
        ),
        ("Short run", f"{short_run_line(summary)}\n\n![short run]({curve_plot})"),
        ("Model", model_summary.markdown(summary.model_summary, summary.config["batch_size"])),
        ("Time to verdict", f"{m['seconds_to_verdict']:.1f} s"),
        ("Training loops", loops_table(summary.loops or {})),
    ]


def overfit_score(summary: Summary) -> str:
    """'accuracy 100%', 'RMSE 0.0123', 'per-label error 0.00%': the overfit batch's score."""
    kind = tasks.kind_of(summary.config)()
    if kind.name == tasks.CLASSIFICATION:
        return f"accuracy {summary.metrics['overfit_final_accuracy']:.0%}"
    error = 1.0 - summary.metrics["overfit_final_accuracy"]
    return f"{kind.error_name} {kind.format_error(error)}"


def short_run_line(summary: Summary) -> str:
    """How many steps the short run trained, and why fewer than planned when a budget cut it."""
    cut = next((f for f in summary.findings if f.id == "time_budget_cut"), None)
    runs = [r for r in (cut.evidence["runs"] if cut else []) if r["run"] == "short run"]
    steps = summary.metrics["short_run_steps"]
    if not runs:
        return f"{steps} steps."
    return (
        f"{steps} of {runs[0]['planned_steps']} steps: stopped at its time budget "
        f"(`{runs[0]['config_key']}`, see `time_budget_cut`)."
    )


def loops_table(loops: dict[str, dict]) -> str:
    """How the overfit and the short run ran their steps (engine.loop_form)."""
    rows = [
        [label, describe_loop(loops.get(name))]
        for name, label in (("overfit", "overfit one batch"), ("train", "short run"))
    ]
    return reporting.markdown_table(["loop", "how its steps ran"], rows)
