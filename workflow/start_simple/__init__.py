"""Stage 1, start simple: train the default model for the data kind and look at the curves.

    python -m workflow.start_simple --config=configs/mnist1d.py --workdir=runs/start_simple

The workflow's default architecture for the data kind (images: LeNet-like, sequences: a one-layer
LSTM, other: an MLP), Adam 3e-4, no regularization, inputs normalized; the learning curves are
read like any other run's, and the next stage named is debug.
"""

from workflow import experiment
from workflow.reporting.summary import Summary


def run_start_simple(setup: experiment.Setup, workdir: str) -> Summary:
    """Train `setup` in `workdir` (resuming a killed run) and write its run directory."""
    return experiment.train_and_report(setup, workdir, "start_simple", "debug")
