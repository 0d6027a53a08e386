"""Any TFDS image-classification dataset through `tfds.data_source` (no TensorFlow needed).

Command (the data must be prepared in --config.dataset.data_dir or TFDS's default dir):
    python -m workflow.start_simple --config=configs/tfds_image.py:mnist --workdir=runs/mnist
    python -m workflow.start_simple --config=configs/tfds_image.py:fashion_mnist,mlp \\
        --workdir=runs/fmnist

The argument is `name[,model]`; the model defaults to the LeNet-like CNN. Without the data
prepared offline the stage exits 2 saying where it looked.

Expected result: MNIST with LeNet ~99% test accuracy after a few epochs (accelerator).
"""

import models
from workflow import config_lib

GOALS = {"mnist": 0.01, "fashion_mnist": 0.10, "cifar10": 0.0875}


def get_config(arg: str | None = None):
    """TFDS image config for `name[,model]`."""
    name, _, model = (arg or "mnist").partition(",")
    model = model or models.default_model_for_kind("image")
    config = config_lib.base_config(f"tfds:{name}", config_lib.model_config(model))
    config.num_steps = 6000
    config.batch_size = 128
    config.goal.test_error = GOALS.get(name, 0.05)
    config.goal.source = "published results for this dataset" if name in GOALS else "unset"
    return config
