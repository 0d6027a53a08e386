"""python -m workflow.improve: flags, the stage, the decision on the console."""

from absl import flags

from workflow import cli, experiment
from workflow.improve import run_improve
from workflow.reporting.summary import Summary

FLAGS = flags.FLAGS


def print_decision(summary: Summary) -> None:
    """The decision and the next commands on the console."""
    from rich.console import Console

    console = Console()
    decision = summary.decision
    console.print(f"[bold]improve: {decision['chosen'] or 'nothing to change'}[/bold]")
    console.print(decision["why"], soft_wrap=True)
    for note in decision["notes"]:
        console.print(f"info: {note}", soft_wrap=True)
    for cmd in summary.next:
        console.print(f"next: {cmd}", soft_wrap=True)


def main(argv: list[str]) -> int:
    """Improve the configured setup by the verdict's remedies."""
    del argv
    from ml_collections import config_flags

    setup = experiment.prepare(FLAGS.config)
    source = config_flags.get_config_filename(FLAGS["config"])
    summary = run_improve(setup, FLAGS.workdir, source)
    if summary.decision is not None:
        print_decision(summary)
    else:  # the starting point diverged: its evaluation is the summary
        experiment.print_summary(summary)
    return cli.EXIT_OK if summary.status == "ok" else cli.EXIT_FINDINGS


if __name__ == "__main__":
    cli.define_flags("improve")
    cli.run(main)
