"""Tasks beyond single-label classification (config.task), on offline data.

Command:
    python -m workflow.debug --config=configs/tasks.py:diabetes --workdir=runs/diabetes
    python -m workflow.evaluate --config=configs/tasks.py:regression --workdir=runs/reg
    python -m workflow.debug --config=configs/tasks.py:multilabel --workdir=runs/ml

The argument picks the setup:
  regression  synthetic regression data whose irreducible error (an RMSE of 0.3) is known
              (workflow/data/synthetic.py), an MLP, mean squared error;
  diabetes    scikit-learn's diabetes set (442 patients, target 25..346), an MLP, mean squared
              error; metrics (RMSE, MAE) in the target's units;
  multilabel  scikit-learn's digits with three yes/no labels each (even, > 4, prime), an MLP,
              sigmoid binary cross-entropy; per-label error and macro F1.
Each takes `,model` after it to pick another model (e.g. `diabetes,mlp`).
"""

import ml_collections

from workflow import config_lib
from workflow.data import synthetic
from workflow.errors import UsageError

SETUPS = ("regression", "diabetes", "multilabel")


def get_config(arg: str | None = None):
    """The config of setup `arg` (`setup[,model]`, default regression)."""
    setup, _, model = (arg or "regression").partition(",")
    if setup not in SETUPS:
        raise UsageError(f"unknown setup {setup!r} in configs/tasks.py; valid: {SETUPS}")
    model = model or "mlp"
    if setup == "regression":
        config = config_lib.base_config("synthetic", config_lib.model_config(model))
        options = synthetic.synthetic_options("regression")
        config.dataset.kwargs = ml_collections.ConfigDict(options)
        config.task = "regression"
        config.num_steps = 1500
        config.goal.test_error = round(options["target_noise"] + 0.05, 4)
        config.goal.source = "the generator's irreducible RMSE (target_noise) plus 0.05"
    elif setup == "diabetes":
        config = config_lib.base_config(
            "workflow.data.examples:diabetes", config_lib.model_config(model)
        )
        config.task = "regression"
        config.batch_size = 64
        config.num_steps = 1000
        config.eval_batch_size = 500
        config.goal.test_error = 55.0
        config.goal.source = "linear regression's test RMSE on this set is about 54"
    else:
        config = config_lib.base_config(
            "workflow.data.examples:digits_multilabel", config_lib.model_config(model)
        )
        config.task = "multilabel"
        config.num_steps = 1500
        config.goal.test_error = 0.02
        config.goal.source = "a digit classifier at 98% accuracy answers the three questions"
    return config
