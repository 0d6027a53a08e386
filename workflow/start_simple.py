"""Stage 1, start simple: train the default model for the data kind and look at the curves.

python -m workflow.start_simple --config=configs/mnist1d.py --workdir=runs/start_simple
"""

from absl import flags

from workflow import cli, experiment

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    """Train the simple default and write the run directory; exit 1 if it diverged."""
    del argv
    setup = experiment.prepare(FLAGS.config)
    summary = experiment.train_and_report(setup, FLAGS.workdir, "start_simple", "debug")
    experiment.print_summary(summary)
    return cli.EXIT_OK if summary["status"] == "ok" else cli.EXIT_FINDINGS


if __name__ == "__main__":
    cli.define_flags("start_simple")  # only as a script: stages can then be imported side by side
    cli.run(main)
