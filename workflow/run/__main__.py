"""python -m workflow.run: flags, the whole workflow, its story on the console."""

import jax
from absl import flags

from workflow import cli, experiment
from workflow.engine import distributed
from workflow.errors import UsageError
from workflow.reporting import rundir
from workflow.run import Workflow, report, run_workflow

FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    """Run the whole workflow on the configured problem."""
    del argv
    config = FLAGS.config
    if distributed.multi_process():
        # Each step reads files the one before wrote (best_config.py, the workflow state), which
        # another host may not see yet: chaining is single-process for now.
        raise UsageError(
            f"workflow.run does not run as a multi-process job ({jax.process_count()} processes); "
            "run it as one process, or run its stages one by one on every host "
            "(start_simple, evaluate, tune and improve each run multi-process)"
        )
    from ml_collections import config_flags

    # Every check of the command line's setup before the run directory is touched.
    setup = experiment.prepare(config.copy_and_resolve_references())
    experiment.check_loss(setup)
    source = config_flags.get_config_filename(FLAGS["config"])
    workflow = Workflow(FLAGS.workdir, config, source)
    kind = rundir.KINDS["run"]
    with workflow.run.claimed(kind, "run", config, setup.dataset.fingerprint()):
        del setup  # each step prepares its own
        summary = run_workflow(workflow)
    report.print_summary(summary, FLAGS.workdir)
    return cli.EXIT_OK if summary.status == "ok" else cli.EXIT_FINDINGS


if __name__ == "__main__":
    cli.define_flags("run")
    cli.run(main)
