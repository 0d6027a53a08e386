"""python -m workflow.debug: flags, the stage, the verdict on the console."""

from absl import flags

from workflow import cli, engine, experiment
from workflow.debug import run_debug
from workflow.reporting.summary import Summary

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    """Debug the configured setup; exit 1 when an error-severity finding stands."""
    del argv
    started = engine.now()
    setup = experiment.prepare(FLAGS.config)
    summary = run_debug(setup, FLAGS.workdir, started)
    print_findings(summary)
    return cli.EXIT_OK if summary.status == "ok" else cli.EXIT_FINDINGS


def print_findings(summary: Summary) -> None:
    """The verdict on the console: each finding with its first suggestion."""
    from rich.console import Console

    console = Console()
    console.print(f"[bold]debug: {summary.status}[/bold]")
    if not summary.findings:
        console.print("all checks passed")
    for f in summary.findings:
        console.print(f"{f.severity:7s} {f.id}: {f.message}", soft_wrap=True)
        for s in f.suggestions[:1]:
            console.print(f"        try: {s}", soft_wrap=True)


if __name__ == "__main__":
    cli.define_flags("debug")
    cli.run(main)
