"""python -m workflow.tune: flags, the stage, the trials and the best on the console."""

from absl import flags

from workflow import cli, experiment
from workflow.search import random_search
from workflow.tune import report, run_tune

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    """Tune the learning rate and the L2 weight of the configured setup."""
    del argv
    from ml_collections import config_flags

    config = FLAGS.config
    random_search.validate_search_config(config.search)
    setup = experiment.prepare(config)
    source = config_flags.get_config_filename(FLAGS["config"])
    summary = run_tune(setup, FLAGS.workdir, source)
    report.print_summary(summary)
    return cli.EXIT_OK if summary.status == "ok" else cli.EXIT_FINDINGS


if __name__ == "__main__":
    cli.define_flags("tune")
    cli.run(main)
