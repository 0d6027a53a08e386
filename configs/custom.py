"""Your own data: a file, a folder of images or a loader, with the workflow's start-simple defaults.

Command:
    python -m workflow.debug --config=configs/custom.py:data/wine.csv --workdir=runs/wine
    python -m workflow.debug --config=configs/custom.py:my_pkg.data:load --workdir=runs/mine

The argument is `dataset.name`: a data file (.npz, .npy, .csv, .parquet), a folder of images
(<class>/*.png), or a loader `module:function` (workflow/data/readers.py, docs/configs.md). The
model is the workflow's choice for the data's kind ("auto": MLP for tables, LeNet for images,
LSTM for sequences); `--config.model.name=pkg.module:Class` swaps in your own, and
`--config.model.kwargs.<name>=value` gives it its options. The goal is a placeholder (5% test
error): set yours with `--config.goal.test_error`.
"""

import ml_collections

from workflow import config_lib
from workflow.errors import UsageError


def get_config(arg: str | None = None):
    """A config for the data `arg` names (a path or module:function)."""
    if not arg:
        raise UsageError(
            "configs/custom.py needs your data as its argument: --config=configs/custom.py:PATH "
            "(a .npz, .npy, .csv or .parquet file, or a folder of images) or "
            "--config=configs/custom.py:module:function (a loader)"
        )
    model = ml_collections.ConfigDict({"name": "auto"})  # the default for the data's kind
    config = config_lib.base_config(arg, model)
    config.num_steps = 1000
    config.goal.source = "unset: a placeholder; set --config.goal.test_error for your problem"
    return config
