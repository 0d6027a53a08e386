"""What a person reads and what the next stage reads: the run directory, plots, reports.

    rundir          the run directory's files (declared once) and RunDir, which writes them all
    summary         summary.json's fields (declared once) as the Summary every stage returns
    plots           learning curves and saving a figure
    markdown        report.md tables, numbers and findings
    model_summary   the model's layers, shapes and parameter counts

The plotting and markdown helpers are re-exported here: `reporting.fmt`, `reporting.Summary`.
"""

from workflow.reporting.markdown import (
    findings_markdown,
    fmt,
    markdown_table,
    next_markdown,
    report_title,
)
from workflow.reporting.plots import plot_learning_curves, set_log_scale_if_positive
from workflow.reporting.summary import Summary

__all__ = [
    "Summary",
    "findings_markdown",
    "fmt",
    "markdown_table",
    "next_markdown",
    "plot_learning_curves",
    "report_title",
    "set_log_scale_if_positive",
]
