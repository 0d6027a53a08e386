"""python -m workflow.evaluate: flags, the stage, the verdict on the console."""

from absl import flags

from workflow import cli, experiment
from workflow.evaluate import run_evaluate
from workflow.reporting.summary import Summary

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    """Evaluate (training first when needed) and write the run directory; exit 1 if it diverged."""
    del argv
    setup = experiment.prepare(FLAGS.config)
    summary = run_evaluate(setup, FLAGS.workdir)
    print_evaluation(summary)
    return cli.EXIT_OK if summary.status == "ok" else cli.EXIT_FINDINGS


def print_evaluation(summary: Summary) -> None:
    """The decomposition table, the verdict and the next commands on the console."""
    if summary.bias_variance is None:  # diverged: no decomposition, only the run's findings
        experiment.print_summary(summary)
        return
    from rich.console import Console
    from rich.table import Table

    bv = summary.bias_variance
    table = Table(title=f"evaluate: {summary.status}", caption=bv["decomposition"])
    for column in ("Error source", "Value", "Analysis"):
        table.add_column(column)
    for row in bv["rows"]:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for f in summary.findings:
        console.print(f"{f.severity:7s} {f.id}: {f.message}", soft_wrap=True)
        for suggestion in f.suggestions[:1]:
            console.print(f"        try: {suggestion}", soft_wrap=True)
    for cmd in summary.next:
        console.print(f"next: {cmd}", soft_wrap=True)
    if not summary.next:
        console.print("next: nothing further")


if __name__ == "__main__":
    # Flags are defined only when run as a script: absl refuses a flag defined twice, so tests
    # and workflow.run can import this module next to another stage's.
    cli.define_flags("evaluate")
    cli.run(main)
