"""Synthetic data with a known irreducible error, one generator per kind (offline).

Command:
    python -m workflow.start_simple --config=configs/synthetic.py:tabular --workdir=runs/syn
    python -m workflow.start_simple --config=configs/synthetic.py:image,mlp --workdir=runs/syn2

The argument is `kind[,model]` with kind in tabular, image, sequence (default tabular), or one
of the demos `underfit`, `overfit` (below); the model defaults to the workflow's choice for the
kind (MLP, LeNet, LSTM). The goal is the generator's irreducible error plus one point; the
dataset records the exact value.

Expected result and time on the 2-core CPU (1,500 steps, Adam 3e-4, measured with another job
on the second core): tabular (mlp) 97.4% test accuracy in 12 s; image (lenet) 92.8% in 28 s;
sequence (lstm) 75.8% in 34 s; against 1 - irreducible error = 95.5%.

The two branches of the workflow, each a whole `workflow.run` on a small budget (300-step runs, a
12-trial search, one round of tune → evaluate → improve → evaluate):

    python -m workflow.run --config=configs/synthetic.py:underfit --workdir=runs/underfit
    python -m workflow.run --config=configs/synthetic.py:overfit --workdir=runs/overfit

underfit: the sequence task with the start-simple LSTM underfits (42% test); the search's
learning rate (2e-3) leaves it underfit (73%); improve escalates to the next architecture,
WaveNet, which meets the goal (94%). overfit: 50 training examples of a 200-dimensional tabular
task: the MLP memorizes them and overfits (70% test); the search's L2 weight (0.08) helps (88%);
improve adds data (train_size 50 → 100: 91%). On the 2-core CPU with other jobs loading it:
underfit 145 s, overfit 60 s with a cold compilation cache; 75 s and 37 s with it warm.
"""

import ml_collections

import models
from workflow import config_lib
from workflow.data import synthetic
from workflow.errors import UsageError

KINDS = ("tabular", "image", "sequence")
# workflow.run demos of the underfit and the overfit branch (see the docstring).
DEMOS = ("underfit", "overfit")


def get_config(arg: str | None = None):
    """Synthetic config for `kind[,model]`, or the `underfit` / `overfit` workflow demo."""
    kind, _, model = (arg or "tabular").partition(",")
    if kind in DEMOS and not model:
        return demo_config(kind)
    if kind not in KINDS:
        valid = ", ".join(KINDS + DEMOS)
        raise UsageError(f"unknown synthetic kind {kind!r}; valid: {valid}")
    model = model or models.default_model_for_kind(kind)
    config = config_lib.base_config("synthetic", config_lib.model_config(model))
    # Every generator option is in the config, so each is overridable from the command line.
    options = synthetic.synthetic_options(kind)
    options["label_noise"] = 0.05
    config.dataset.kwargs = ml_collections.ConfigDict(options)
    config.num_steps = 1500
    classes = options["num_classes"]
    config.goal.test_error = round(options["label_noise"] * (classes - 1) / classes + 0.01, 4)
    config.goal.source = "the generator's irreducible error (label noise) plus one point"
    return config


def demo_config(branch: str) -> ml_collections.ConfigDict:
    """The underfit or overfit demo: a problem that lands in the branch, sized to run in minutes."""
    if branch == "underfit":
        # A random-phase frequency: the LSTM learns it slowly, WaveNet's dilated convolutions fast.
        config = get_config("sequence")
        config.dataset.kwargs.num_train = 800
    else:
        # 50 examples of 200 noisy dimensions: the MLP memorizes them and generalizes poorly.
        config = get_config("tabular")
        config.dataset.kwargs.update({"num_train": 2000, "dims": 200, "separation": 8.0})
        config.dataset.train_size = 50
    config.dataset.kwargs.num_test = 400
    config.num_steps = 300
    config.batch_size = 32
    config.eval_every = 100
    config.checkpoint_every = 100
    config.debug.train_steps = 100
    config.search.update({"num_trials": 8, "refine_trials": 4, "rounds": 2})
    config.search.range_test.update({"num_steps": 60, "repeats": 1})
    config.improve.max_candidates = 4
    config.budget.update({"minutes": 5.0, "max_rounds": 1})
    return config
