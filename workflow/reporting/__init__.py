"""What a person reads and what the next stage reads: the run directory, plots, reports.

    rundir          the run directory contract (config.json, metrics.jsonl, summary.json, ...)
    plots           learning curves and figure saving
    markdown        report.md tables, numbers and findings
    model_summary   the model's layers, shapes and parameter counts

The plotting and markdown helpers are re-exported here: `reporting.fmt`, `reporting.save_figure`.
"""

from workflow.reporting.markdown import findings_markdown, fmt, markdown_table, write_report
from workflow.reporting.plots import plot_learning_curves, save_figure, set_log_scale_if_positive

__all__ = [
    "findings_markdown",
    "fmt",
    "markdown_table",
    "plot_learning_curves",
    "save_figure",
    "set_log_scale_if_positive",
    "write_report",
]
