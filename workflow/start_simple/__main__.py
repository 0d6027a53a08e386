"""python -m workflow.start_simple: flags, the stage, the results on the console."""

from absl import flags

from workflow import cli, experiment, start_simple

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    """Train the simple default and write the run directory; exit 1 if it diverged."""
    del argv
    setup = experiment.prepare(FLAGS.config)
    summary = start_simple.run_start_simple(setup, FLAGS.workdir)
    experiment.print_summary(summary)
    return cli.EXIT_OK if summary.status == "ok" else cli.EXIT_FINDINGS


if __name__ == "__main__":
    cli.define_flags("start_simple")
    cli.run(main)
