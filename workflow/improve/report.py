"""What the improve stage leaves for a person: the candidates plot and report.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workflow import reporting
from workflow.engine import tasks
from workflow.reporting.plots import plt
from workflow.reporting.summary import Summary

if TYPE_CHECKING:
    from workflow.improve import Outcome


def plot_outcomes(outcomes: list[Outcome]) -> plt.Figure:
    """Validation and test error per candidate, the baseline first."""
    names = [o.remedy.name for o in outcomes]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.8))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [o.val_error for o in outcomes], 0.4, label="val error")
    ax.bar([x + 0.2 for x in xs], [o.test_error for o in outcomes], 0.4, label="test error")
    ax.axhline(outcomes[0].val_error, color="gray", lw=0.8, ls="--")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("error")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return fig


def report_sections(summary: Summary, plot: str | None) -> list[tuple[str, str]]:
    """report.md: the verdict, the candidates table, the decision and why, next commands."""
    sections = []
    bv = summary.bias_variance
    if bv:
        table = reporting.markdown_table(["Error source", "Value", "Analysis"], bv["rows"])
        sections.append(("Starting point", f"{table}\n\n{bv['decomposition']}"))
    rows = []
    base = summary.candidates[0] if summary.candidates else None
    kind = tasks.kind_of(summary.config)
    # Errors as the task reads them: rates as %, a regression's RMSE in the targets' units.
    fmt, signed = ("{:.2%}", "{:+.2%}") if kind.error_is_rate else ("{:.4g}", "{:+.4g}")
    for c in summary.candidates:
        delta = c["val_error"] - base["val_error"]
        rows.append(
            [
                c["name"],
                c["change"],
                fmt.format(c["val_error"]),
                signed.format(delta) if c is not base else "",
                fmt.format(c["test_error"]),
                f"{c['num_params']:,}",
                f"{c['seconds']:.1f} s",
                (c.get("loop") or {}).get("form", "-"),
                c["reason"],
            ]
        )
    if rows:
        name = kind.error_name  # error; a regression's RMSE; per-label error
        headers = ["candidate", "change", f"val {name}", "Δ val", f"test {name}", "params", "time"]
        # loop: scan or step, how the run's steps ran (engine.loop_form)
        body = reporting.markdown_table([*headers, "loop", "why tried"], rows)
        if plot:
            body += f"\n\n![candidates]({plot})"
        sections.append(("Candidates (runs of equal length)", body))
    decision = summary.decision
    notes = "".join(f"\n\ninfo: {note}" for note in decision["notes"])
    sections.append(("Decision", f"**{decision['chosen'] or 'none'}**: {decision['why']}{notes}"))
    sections.append(
        ("Findings of the starting point", reporting.findings_markdown(summary.findings))
    )
    sections.append(("Next", reporting.next_markdown(summary.next)))
    return sections
