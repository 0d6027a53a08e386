"""The default config every problem starts from, and the checks that reject invalid values."""

import inspect
import math

import ml_collections
from ml_collections import config_dict

import models
from workflow.errors import UsageError

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """Config for a registered model: its name and every keyword default, so each is overridable."""
    cls = models.get_model_class(name)
    kwargs = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.kind is param.KEYWORD_ONLY and param.name != "rngs":
            if param.default is not param.empty:
                kwargs[param.name] = param.default
    unknown = sorted(set(overrides) - set(kwargs))
    if unknown:
        raise UsageError(
            f"model {name!r} has no option {unknown[0]!r}; valid options: {', '.join(kwargs)}"
        )
    kwargs.update(overrides)
    return ml_collections.ConfigDict({"name": name, **kwargs})


def base_config(dataset: str, model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The workflow's 'start simple' defaults: Adam 3e-4, no regularization, inputs normalized."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.dataset = ml_collections.ConfigDict(
        {
            "name": dataset,
            "train_size": config_dict.placeholder(int),
            "val_fraction": 0.1,
            "normalize": True,
            "data_dir": config_dict.placeholder(str),
            "kwargs": ml_collections.ConfigDict(),
        }
    )
    config.model = model
    config.loss = "softmax_cross_entropy"
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adam", "learning_rate": 3e-4, "momentum": 0.9, "weight_decay": 0.0}
    )
    # L2 penalty on the parameters, added to the loss: the workflow's "reg" hyperparameter.
    config.l2 = 0.0
    config.batch_size = 100
    config.num_steps = 3000
    config.steps_per_call = 100  # training steps per host call, run under lax.scan
    config.log_every = 50
    config.eval_every = 250
    config.checkpoint_every = 1000
    config.eval_batch_size = 1000
    # Target error on the test set, for the evaluate stage's bias-variance table.
    config.goal = ml_collections.ConfigDict({"test_error": 0.05, "source": "unset"})
    config.progress = True
    # The debug stage: overfit one small batch, then a short real run whose curve is diagnosed.
    config.debug = ml_collections.ConfigDict(
        {
            "batch_size": 32,
            "overfit_steps": 1000,
            # "Near zero": the batch loss must fall below this fraction of its initial value.
            "overfit_loss_fraction": 0.05,
            "train_steps": 300,
        }
    )
    return config


def _require(condition: bool, key: str, value, valid: str) -> None:
    if not condition:
        raise UsageError(f"invalid value {key}={value!r}: {valid}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Reject values that cannot be trained on, naming the key and what is valid."""
    for key in ("batch_size", "num_steps", "steps_per_call", "log_every", "eval_every"):
        value = config[key]
        _require(isinstance(value, int) and value > 0, key, value, "must be a positive integer")
    _require(
        isinstance(config.checkpoint_every, int) and config.checkpoint_every >= 0,
        "checkpoint_every",
        config.checkpoint_every,
        "must be an integer >= 0 (0 saves only the final checkpoint)",
    )
    _require(config.eval_batch_size > 0, "eval_batch_size", config.eval_batch_size, "must be > 0")
    opt = config.optimizer
    _require(opt.name in OPTIMIZERS, "optimizer.name", opt.name, f"one of {', '.join(OPTIMIZERS)}")
    lr = opt.learning_rate
    _require(
        isinstance(lr, int | float) and math.isfinite(lr) and lr > 0,
        "optimizer.learning_rate",
        lr,
        "must be a finite number > 0",
    )
    _require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "must be >= 0")
    _require(math.isfinite(config.l2) and config.l2 >= 0, "l2", config.l2, "must be a number >= 0")
    vf = config.dataset.val_fraction
    _require(0 < vf < 1, "dataset.val_fraction", vf, "must lie strictly between 0 and 1")
    ts = config.dataset.train_size
    _require(ts is None or ts > 0, "dataset.train_size", ts, "must be a positive integer or None")
    dbg = config.debug
    for key in ("batch_size", "overfit_steps", "train_steps"):
        value = dbg[key]
        _require(isinstance(value, int) and value > 0, f"debug.{key}", value, "must be > 0")
    frac = dbg.overfit_loss_fraction
    _require(0 < frac < 1, "debug.overfit_loss_fraction", frac, "must lie in (0, 1)")
    goal = config.goal.test_error
    _require(0 <= goal < 1, "goal.test_error", goal, "must lie in [0, 1)")
