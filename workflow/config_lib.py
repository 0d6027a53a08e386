"""The default config every problem starts from, and the checks that reject invalid values."""

import inspect
import json
import math
import os
import sys

import ml_collections
from ml_collections import config_dict

import models
from workflow.data import pipeline, readers
from workflow.engine import augment, loop_form, tasks
from workflow.engine.distributed import DATA_LAYOUTS
from workflow.errors import UsageError, as_usage_error, user_code

# The train state counts steps in int32.
MAX_STEPS = 2**31 - 1
# The loop plans its host calls, evaluations and checkpoints up front: more than this many is
# a typo (num_steps=10**20), not a run.
MAX_PLANNED_CALLS = 10**7
# Examples in one batch; the evaluator pads every batch to its batch size.
MAX_BATCH = 2**20
# Config values that name code to import ("module:object"): a model, a loss, a dataset loader.
# By design the workflow runs the code a command line names; never code a file names (a run
# directory is data): see apply_saved_values.
IMPORT_PATH_KEYS = ("model.name", "loss", "dataset.name")
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where a non-editable install keeps configs/: pip installs them as data files under the
# environment's prefix (pyproject.toml's [tool.setuptools.data-files]).
INSTALLED_DATA = os.path.join(sys.prefix, "share", "dnn-troubleshooting")

OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
COMPUTE_DTYPES = ("float32", "bfloat16")
SCHEDULES = ("constant", "piecewise", "cosine")
PARAM_LAYOUTS = ("replicated", "sharded")
EARLY_STOPPING_METRICS = ("val_accuracy", "val_loss")


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """Config for a model: its name and every keyword default, so each is overridable.

    A class with the zoo's contract (`models.takes_input_shape`) lists its keyword-only
    options; any other constructor every parameter with a default but rngs.
    """
    with as_usage_error(models.ModelOptionError):
        cls = models.get_model_class(name)
    contract = models.takes_input_shape(cls)
    kwargs = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        keyword = param.kind is param.KEYWORD_ONLY or (
            not contract and param.kind is param.POSITIONAL_OR_KEYWORD
        )
        if keyword and param.name not in ("self", "rngs") and param.default is not param.empty:
            kwargs[param.name] = param.default
    unknown = sorted(set(overrides) - set(kwargs))
    if unknown:
        raise UsageError(
            f"model {name!r} has no option {unknown[0]!r}; valid options: {', '.join(kwargs)}"
        )
    kwargs.update(overrides)
    return ml_collections.ConfigDict({"name": name, **kwargs})


# The model's own options, from the command line or the Python API: `model.kwargs.<name>` is
# the spelling for an option the config does not list yet (a user's model), and it lands as
# `model.<name>` beside the others, the one home of a model's options.
MODEL_OPTIONS_PREFIX = "model.kwargs."
DATASET_KWARGS_PREFIX = "dataset.kwargs."


def apply_overrides(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
    """Apply dotted `key: value` overrides as a user means them, in place; return `config`.

    `model.name` swaps the model: the block becomes the new model's defaults (model_config),
    so the previous model's options are never passed to it. `model.<option>` and
    `model.kwargs.<option>` set one of its options, new ones included. `dataset.name`
    naming another dataset empties `dataset.kwargs` (the previous loader's options);
    `dataset.kwargs.<key>` sets any loader option. Any other key must exist: an unknown one
    is a UsageError listing the keys its block has.
    """
    values = dict(values)
    with config.unlocked():
        if "model.name" in values:
            _swap_model(config, values.pop("model.name"))
        if "dataset.name" in values:
            name = values.pop("dataset.name")
            if name != config.dataset.name:
                config.dataset.kwargs = ml_collections.ConfigDict()
            config.dataset.name = name
        for key, value in values.items():
            if key.startswith(MODEL_OPTIONS_PREFIX) or key.startswith("model."):
                option = key.removeprefix(MODEL_OPTIONS_PREFIX).removeprefix("model.")
                _set_value(config.model, option, value, f"model.{option}")
            elif key.startswith(DATASET_KWARGS_PREFIX):
                option = key.removeprefix(DATASET_KWARGS_PREFIX)
                _set_value(config.dataset.kwargs, option, value, key)
            else:
                *parents, leaf = key.split(".")
                node = config
                for depth, parent in enumerate(parents):
                    if not isinstance(node, ml_collections.ConfigDict) or parent not in node:
                        _unknown_key(node, ".".join(parents[: depth + 1]))
                    node = node[parent]
                if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
                    _unknown_key(node, key)
                _set_value(node, leaf, value, key)
    return config


def _swap_model(config: ml_collections.ConfigDict, name: str) -> None:
    """config.model as model `name` at its defaults, unless it names the model already."""
    if name == config.model.get("name"):
        return
    config.model = (
        ml_collections.ConfigDict({"name": name}) if name == "auto" else model_config(name)
    )


def _set_value(node: ml_collections.ConfigDict, key: str, value, where: str) -> None:
    """node[key] = value, a scalar given for a tuple option as a 1-tuple, lists as tuples."""
    if "." in key or not key:
        raise UsageError(f"invalid key {where!r}: a model option or loader option is one name")
    value = _from_json(value)
    if isinstance(node.get(key), tuple) and not isinstance(value, tuple):
        value = (value,)
    try:
        node[key] = value
    except (TypeError, ValueError) as e:
        raise UsageError(
            f"invalid value {where}={value!r}: it must have the type of {node.get(key)!r} "
            f"({' '.join(str(e).split())[:200]})"
        ) from None


def _unknown_key(node, key: str) -> None:
    parent = key.rpartition(".")[0] or "config"
    keys = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
    raise UsageError(f"unknown config key {key!r}; {parent} has: {keys or '(no keys)'}")


def open_override(key: str, model_name_given: bool) -> bool:
    """Whether a command line's `--config.<key>` is applied by apply_overrides (names that swap
    a block, options a locked config does not list yet) rather than by config_flags."""
    return (
        key in ("model.name", "dataset.name")
        or key.startswith(MODEL_OPTIONS_PREFIX)
        or key.startswith(DATASET_KWARGS_PREFIX)
        or (model_name_given and key.startswith("model."))
    )


def base_config(dataset: str, model: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The workflow's 'start simple' defaults: Adam 3e-4, no regularization, inputs normalized."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    # The model's initialization (and dropout stream) alone, when not config.seed: tune's
    # best_config.py sets the best trial's, so training it again starts where that trial did.
    config.init_seed = config_dict.placeholder(int)
    config.dataset = ml_collections.ConfigDict(
        {
            "name": dataset,
            "train_size": config_dict.placeholder(int),
            "val_fraction": 0.1,
            # A data file without a test split: this share of its examples is carved as one.
            "test_fraction": readers.DEFAULT_TEST_FRACTION,
            "normalize": True,
            "data_dir": config_dict.placeholder(str),
            "kwargs": ml_collections.ConfigDict(),
            # Where training batches are assembled (workflow/data/pipeline.py): "memory" (the
            # split on the devices, batches gathered there) or "grain" (read on the host and
            # streamed, for data larger than device memory or decoded on the host).
            "pipeline": "memory",
            "grain": pipeline.default_config(),
        }
    )
    config.model = model
    # What the model predicts (workflow/engine/tasks.py): "classification" (one class per
    # example), "regression" (float targets) or "multilabel" (multi-hot 0/1 targets).
    config.task = "classification"
    # "auto": the task's own loss (softmax_cross_entropy, mse, sigmoid_binary_cross_entropy).
    config.loss = "auto"
    config.optimizer = ml_collections.ConfigDict(
        {"name": "adam", "learning_rate": 3e-4, "momentum": 0.9, "weight_decay": 0.0}
    )
    # Gradient clipping to this global norm (0: off) and gradient accumulation over this many
    # batches per update (1: off), engine.build_optimizer.
    config.optimizer.clip_norm = 0.0
    config.optimizer.accumulate_steps = 1
    # A factor on the learning rate over training (engine.lr_multiplier): "constant";
    # "piecewise" multiplies by `scale` at each of `boundaries` (steps); "cosine" decays to 0
    # at num_steps after `warmup_steps` of linear warm-up.
    config.optimizer.schedule = ml_collections.ConfigDict(
        {"name": "constant", "boundaries": (), "scale": 0.1, "warmup_steps": 0}
    )
    # L2 penalty on the parameters, added to the loss: the workflow's "reg" hyperparameter.
    config.l2 = 0.0
    # Data augmentation of training batches (workflow/engine/augment.py), one block per data kind.
    config.augment = augment.default_config()
    # Stop when the validation metric has not improved for `patience` evaluations, and report
    # the best evaluated state (engine.fit).
    config.early_stopping = ml_collections.ConfigDict(
        {"enabled": False, "metric": "val_accuracy", "patience": 5, "min_delta": 0.0}
    )
    config.batch_size = 100
    config.num_steps = 3000
    config.steps_per_call = 100  # training steps per host call
    # How a call runs its steps (workflow/engine/loop_form.py): "scan" (all under one lax.scan),
    # "step" (one compiled step per step, dispatched from Python), or "auto": the faster of the
    # two, timed on a few steps at the start (a 2-D convolution runs far slower under a CPU scan).
    config.loop = "auto"
    config.log_every = 50
    config.eval_every = 250
    config.checkpoint_every = 1000
    config.eval_batch_size = 1000
    # Target error on the test set, for the evaluate stage's bias-variance table.
    config.goal = ml_collections.ConfigDict({"test_error": 0.05, "source": "unset"})
    config.progress = True
    # TensorBoard (workflow/reporting/tensorboard.py): per-layer gradient and activation
    # histograms of one training batch at each evaluation (one more compiled program).
    config.tensorboard = ml_collections.ConfigDict({"histograms": True})
    # Compute dtype of the forward and backward pass; parameters, optimizer state and the loss
    # stay float32 (mixed precision). One of COMPUTE_DTYPES.
    config.dtype = "float32"
    # Data parallelism over a Mesh of local devices: the batch is split over `data_devices`
    # devices (0: all of them); parameters are "replicated" on each or "sharded" over them.
    # `data`: where the training split lives (workflow/engine/distributed.py): "replicated" (every
    # process and device holds all of it), "per_host" (each process loads only its shard, each
    # device one block of it), "auto" (per_host with several processes, else replicated).
    config.parallel = ml_collections.ConfigDict(
        {"data_devices": 0, "params": "replicated", "data": "auto"}
    )
    # The debug stage: overfit one small batch, then a short real run whose curve is diagnosed.
    config.debug = ml_collections.ConfigDict(
        {
            "batch_size": 32,
            "overfit_steps": 1000,
            # "Near zero": the batch loss must fall below this fraction of its initial value.
            "overfit_loss_fraction": 0.05,
            "train_steps": 300,
            # Time budgets (seconds of training steps, compilation excluded) of the overfit run
            # and the short run: a slower model runs fewer steps, and a `time_budget_cut`
            # finding says so and what it means for the verdict (workflow/diagnostics/budget.py).
            "overfit_seconds": 5.0,
            "train_seconds": 8.0,
            # Apply the top finding's first config-level suggestion, rerun the checks on it and
            # report whether it repaired the setup (a `config_fix` finding).
            "fix": False,
            # Run every stage without jit (jax.disable_jit), op by op: a breakpoint in a model's
            # __call__ then sees concrete values. Far slower; for stepping through a few steps.
            "disable_jit": False,
        }
    )
    # Out of memory (workflow/diagnostics/memory.py): on XLA's resource-exhausted error a stage
    # reports an `out_of_memory` finding; retry_halving reruns it at half the batch size until it
    # fits. step_limit_mb (None: off) treats a training step estimated above it as out of memory.
    config.memory = ml_collections.ConfigDict(
        {"retry_halving": False, "step_limit_mb": config_dict.placeholder(float)}
    )
    # The evaluate stage: bias-variance verdicts against the goal, and error vs. training size.
    config.evaluate = ml_collections.ConfigDict(
        {
            # A gap (train - goal, val - train, test - val) smaller than its tolerance is "ok";
            # the tolerance used is the larger of this and the sampling-noise floor below.
            "underfit_tolerance": 0.01,
            "overfit_tolerance": 0.01,
            "val_overfit_tolerance": 0.01,
            # Standard errors of a difference of two error rates below which a gap is noise.
            "noise_z": 2.0,
            # Fractions of the training set for the error-vs-size curve; () skips it.
            "train_sizes": (),
            # Steps of each train-size run (None: num_steps, the main run's budget).
            "train_size_steps": config_dict.placeholder(int),
            # Metrics beside loss and accuracy on every split (workflow/evaluate/metrics.py):
            # "top<k>_accuracy", "macro_f1", "auc" (two classes).
            "metrics": ("macro_f1",),
        }
    )
    # The tune stage: LR range test, then coarse-to-fine random search
    # (workflow/search/random_search.py).
    config.search = ml_collections.ConfigDict(
        {
            # Log-uniform ranges as the workflow writes them: lr = 10^U(-6, -3), widened to the
            # range test's band; reg (the L2 weight, config.l2) = 10^U(-5, 5).
            "lr_range": (1e-6, 1e-3),
            "reg_range": (1e-5, 1e5),
            # Any config keys with their ranges (workflow/search/space.py), e.g.
            # "optimizer.learning_rate=log:1e-5:1e-1,model.hidden_sizes=cat:(64,):(128,)";
            # "": the learning rate and the L2 weight over the two ranges above.
            "space": "",
            "sampler": "halton",  # scrambled Halton (quasi-random), sobol, or random
            "metric": "val_accuracy",  # or val_loss
            # Sized by benchmarks/time_to_goal.py (docs/benchmarks.md): with pruning, fewer and
            # longer trials found as good a model sooner than many short ones.
            "num_trials": 32,  # the coarse round
            "epochs": 9.0,  # trial length of the coarse round (short runs first)
            "rounds": 2,  # the coarse round and the refined ones
            "refine_trials": 16,
            "refine_epochs_factor": 3.0,  # each refined round trains this much longer
            "last_round_full_length": True,  # the last round trains config.num_steps steps
            "top_fraction": 0.25,  # the best trials a refined range is drawn around
            "trials_per_program": 64,  # trials vmapped into one compiled program
            # Rung pruning (workflow/search/pruning.py): each round's trials are cut at
            # prune_rungs lengths, each prune_factor times the one before (the last the round's
            # trial length); at each only the best 1/prune_factor train on, by val loss (and any
            # trial clearly more accurate than one of them: Search.clearly_better). 1: off.
            # Four: the first cut at 1/27 of the length (where it is a whole host call), as
            # Hyperband's most aggressive bracket; benchmarks/time_to_goal.py measures it.
            "prune_rungs": 4,
            "prune_factor": 3,
            # Slots one worker claims and one program trains with pruning (None: the round's
            # all); smaller groups share a round between workers, each cutting in its own group.
            "group_trials": config_dict.placeholder(int),
            # None: sqlite:///<workdir>/study.db; any SQLAlchemy URL shares a study between
            # workers on several machines (postgresql://user:password@host/database).
            "storage": config_dict.placeholder(str),
            "heartbeat_seconds": 30,  # a trial whose worker is silent 3x this long is rerun
            "poll_seconds": 2.0,
            "range_test": ml_collections.ConfigDict(
                {
                    "enabled": True,
                    "min_lr": 1e-7,
                    "max_lr": 10.0,
                    "num_steps": 200,
                    "repeats": 3,
                    "divergence_factor": 4.0,
                }
            ),
            "retrain_best": True,  # train the best trial at the config's full num_steps
            # Stop the search at the first trial whose val error beats goal.test_error by
            # goal_noise_z standard errors of the val set (False: every round runs to its end).
            "stop_at_goal": True,
            "goal_noise_z": 1.0,
        }
    )
    # The improve stage: the remedies the verdict calls for, each a run of this many steps.
    config.improve = ml_collections.ConfigDict(
        {
            "num_steps": config_dict.placeholder(int),  # None: num_steps, the baseline's length
            "max_candidates": 8,  # remedies tried per round, in the workflow's order
        }
    )
    # workflow.run: rounds of tune → evaluate → improve → evaluate until the goal is met, or
    # until this budget is spent (checked between steps; None: no time limit).
    config.budget = ml_collections.ConfigDict({"minutes": 10.0, "max_rounds": 2})
    return config


def _require(condition: bool, key: str, value, valid: str) -> None:
    if not condition:
        raise UsageError(f"invalid value {key}={value!r}: {valid}")


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Reject values that cannot be trained on, naming the key and what is valid."""
    for key in ("batch_size", "num_steps", "steps_per_call", "log_every", "eval_every"):
        value = config[key]
        _require(isinstance(value, int) and value > 0, key, value, "must be a positive integer")
    _validate_bounds(config)
    _require(
        isinstance(config.checkpoint_every, int) and config.checkpoint_every >= 0,
        "checkpoint_every",
        config.checkpoint_every,
        "must be an integer >= 0 (0 saves only the final checkpoint)",
    )
    _require(config.eval_batch_size > 0, "eval_batch_size", config.eval_batch_size, "must be > 0")
    init_seed = config.get("init_seed")
    _require(
        init_seed is None or (isinstance(init_seed, int) and init_seed >= 0),
        "init_seed",
        init_seed,
        "an integer >= 0, or None (config.seed)",
    )
    loop = config.get("loop", "auto")
    _require(loop in loop_form.CHOICES, "loop", loop, f"one of {', '.join(loop_form.CHOICES)}")
    dtype = config.get("dtype", "float32")
    _require(dtype in COMPUTE_DTYPES, "dtype", dtype, f"one of {', '.join(COMPUTE_DTYPES)}")
    if "parallel" in config:
        _validate_parallel(config.parallel)
    opt = config.optimizer
    _require(
        opt.name in OPTIMIZERS or _import_path(opt.name),
        "optimizer.name",
        opt.name,
        f"one of {', '.join(OPTIMIZERS)} or an import path 'module:function'",
    )
    lr = opt.learning_rate
    _require(
        isinstance(lr, int | float) and math.isfinite(lr) and lr > 0,
        "optimizer.learning_rate",
        lr,
        "must be a finite number > 0",
    )
    _require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "must be >= 0")
    clip = opt.get("clip_norm", 0.0)
    _require(
        isinstance(clip, int | float) and math.isfinite(clip) and clip >= 0,
        "optimizer.clip_norm",
        clip,
        "must be a finite number >= 0 (0: no clipping)",
    )
    every = opt.get("accumulate_steps", 1)
    _require(
        isinstance(every, int) and not isinstance(every, bool) and every >= 1,
        "optimizer.accumulate_steps",
        every,
        "must be an integer >= 1 (1: no accumulation)",
    )
    if "schedule" in opt:
        _validate_schedule(opt.schedule)
    _require(math.isfinite(config.l2) and config.l2 >= 0, "l2", config.l2, "must be a number >= 0")
    vf = config.dataset.val_fraction
    _require(0 < vf < 1, "dataset.val_fraction", vf, "must lie strictly between 0 and 1")
    tf = config.dataset.get("test_fraction", readers.DEFAULT_TEST_FRACTION)
    _require(_is_number(tf) and 0 < tf < 1, "dataset.test_fraction", tf, "must lie in (0, 1)")
    ts = config.dataset.train_size
    _require(ts is None or ts > 0, "dataset.train_size", ts, "must be a positive integer or None")
    pipeline.validate_config(config.dataset)
    if "augment" in config:
        _validate_augment(config.augment)
    if "early_stopping" in config:
        _validate_early_stopping(config.early_stopping)
    dbg = config.debug
    for key in ("batch_size", "overfit_steps", "train_steps"):
        value = dbg[key]
        _require(isinstance(value, int) and value > 0, f"debug.{key}", value, "must be > 0")
    _require(isinstance(dbg.fix, bool), "debug.fix", dbg.fix, "must be True/False")
    for key in ("overfit_seconds", "train_seconds"):
        value = dbg[key]
        _require(_is_number(value) and value > 0, f"debug.{key}", value, "must be a number > 0")
    frac = dbg.overfit_loss_fraction
    _require(0 < frac < 1, "debug.overfit_loss_fraction", frac, "must lie in (0, 1)")
    validate_debug_and_memory(config)
    task = config.get("task", tasks.CLASSIFICATION)
    tasks.check_task_name(task)
    goal = config.goal.test_error
    if task == tasks.REGRESSION:  # an RMSE in the targets' units
        _require(_is_number(goal) and goal >= 0, "goal.test_error", goal, "must be an RMSE >= 0")
    else:
        _require(0 <= goal < 1, "goal.test_error", goal, "must lie in [0, 1)")
    if config.get("search") is not None and config.search.get("space"):
        from workflow.search import space

        space.parse_space(config)  # every entry a key of this config, with values it takes
    ev = config.evaluate
    for key in ("underfit_tolerance", "overfit_tolerance", "val_overfit_tolerance", "noise_z"):
        value = ev[key]
        _require(
            isinstance(value, int | float) and math.isfinite(value) and value >= 0,
            f"evaluate.{key}",
            value,
            "must be a finite number >= 0",
        )
    for fraction in ev.train_sizes:
        _require(
            isinstance(fraction, int | float) and 0 < fraction <= 1,
            "evaluate.train_sizes",
            tuple(ev.train_sizes),
            "every fraction must lie in (0, 1]",
        )
    steps = ev.train_size_steps
    _require(
        steps is None or (isinstance(steps, int) and steps > 0),
        "evaluate.train_size_steps",
        steps,
        "must be a positive integer or None (None: num_steps)",
    )


def _validate_bounds(config: ml_collections.ConfigDict) -> None:
    """Step counts within the int32 step counter, batches within MAX_BATCH, and no more planned
    host calls than MAX_PLANNED_CALLS."""
    steps = {
        "num_steps": config.num_steps,
        "debug.overfit_steps": config.debug.overfit_steps,
        "debug.train_steps": config.debug.train_steps,
        "evaluate.train_size_steps": config.evaluate.train_size_steps,
        "improve.num_steps": config.get("improve", {}).get("num_steps"),
    }
    for key, value in steps.items():
        _require(
            not isinstance(value, int) or value <= MAX_STEPS,
            key,
            value,
            f"must be at most {MAX_STEPS:,} (the step counter is int32)",
        )
    batches = {
        "batch_size": config.batch_size,
        "eval_batch_size": config.eval_batch_size,
        "debug.batch_size": config.debug.batch_size,
    }
    for key, value in batches.items():
        _require(
            not isinstance(value, int) or value <= MAX_BATCH,
            key,
            value,
            f"must be at most {MAX_BATCH:,} examples",
        )
    periods = [config.steps_per_call, config.eval_every]
    if isinstance(config.checkpoint_every, int) and config.checkpoint_every > 0:
        periods.append(config.checkpoint_every)
    calls = config.num_steps // min(periods)
    _require(
        calls <= MAX_PLANNED_CALLS,
        "num_steps",
        config.num_steps,
        f"at most {MAX_PLANNED_CALLS:,} times the smallest of steps_per_call, eval_every and "
        f"checkpoint_every ({min(periods):,}): the run plans every host call up front",
    )


def validate_debug_and_memory(config: ml_collections.ConfigDict) -> None:
    """debug.disable_jit and the memory block, checked before a stage starts (cli.run)."""
    disable_jit = (config.get("debug") or {}).get("disable_jit", False)
    _require(isinstance(disable_jit, bool), "debug.disable_jit", disable_jit, "must be True/False")
    memory = config.get("memory")
    if memory is None:
        return
    retry = memory.get("retry_halving", False)
    _require(isinstance(retry, bool), "memory.retry_halving", retry, "must be True/False")
    limit = memory.get("step_limit_mb")
    _require(
        limit is None or (_is_number(limit) and limit > 0),
        "memory.step_limit_mb",
        limit,
        "must be a number > 0 (MiB) or None (no limit)",
    )


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _validate_augment(aug: ml_collections.ConfigDict) -> None:
    """config.augment: booleans, kinds, shifts >= 0, noise >= 0, known padding modes."""
    _require(isinstance(aug.enabled, bool), "augment.enabled", aug.enabled, "must be True/False")
    kind = aug.get("kind")
    _require(
        kind is None or kind in augment.KINDS,
        "augment.kind",
        kind,
        f"one of {', '.join(augment.KINDS)} or None (the dataset's kind)",
    )
    for block in augment.KINDS:
        opts = aug[block]
        if "max_shift" in opts:
            value = opts.max_shift
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                f"augment.{block}.max_shift",
                value,
                "must be an integer >= 0",
            )
        if "pad_mode" in opts:
            _require(
                opts.pad_mode in augment.PAD_MODES,
                f"augment.{block}.pad_mode",
                opts.pad_mode,
                f"one of {', '.join(augment.PAD_MODES)}",
            )
        if "flip" in opts:
            flip = opts.flip
            _require(isinstance(flip, bool), f"augment.{block}.flip", flip, "must be True/False")
        value = opts.noise_std
        _require(
            _is_number(value) and value >= 0,
            f"augment.{block}.noise_std",
            value,
            "must be a finite number >= 0",
        )


def _import_path(name: object) -> bool:
    """Whether `name` has the form of an import path, "module:function"."""
    module, _, attr = str(name).partition(":")
    return bool(module) and attr.isidentifier()


def _validate_schedule(schedule: ml_collections.ConfigDict) -> None:
    name = schedule.name
    _require(
        name in SCHEDULES or _import_path(name),
        "optimizer.schedule.name",
        name,
        f"one of {', '.join(SCHEDULES)} or an import path 'module:function'",
    )
    bounds = tuple(schedule.boundaries)
    _require(
        all(isinstance(b, int) and b > 0 for b in bounds) and list(bounds) == sorted(set(bounds)),
        "optimizer.schedule.boundaries",
        bounds,
        "must be increasing positive step numbers",
    )
    _require(schedule.scale > 0, "optimizer.schedule.scale", schedule.scale, "must be > 0")
    warmup = schedule.warmup_steps
    _require(
        isinstance(warmup, int) and warmup >= 0,
        "optimizer.schedule.warmup_steps",
        warmup,
        "must be an integer >= 0",
    )


def _validate_parallel(parallel: ml_collections.ConfigDict) -> None:
    n = parallel.data_devices
    _require(
        isinstance(n, int) and n >= 0,
        "parallel.data_devices",
        n,
        "must be an integer >= 0 (0: all local devices)",
    )
    layout = parallel.params
    _require(
        layout in PARAM_LAYOUTS, "parallel.params", layout, f"one of {', '.join(PARAM_LAYOUTS)}"
    )
    data = parallel.get("data", "auto")
    _require(data in DATA_LAYOUTS, "parallel.data", data, f"one of {', '.join(DATA_LAYOUTS)}")


def _validate_early_stopping(es: ml_collections.ConfigDict) -> None:
    """config.early_stopping: a known metric, an integer patience >= 0, min_delta >= 0."""
    _require(
        isinstance(es.enabled, bool), "early_stopping.enabled", es.enabled, "must be True/False"
    )
    _require(
        es.metric in EARLY_STOPPING_METRICS,
        "early_stopping.metric",
        es.metric,
        f"one of {', '.join(EARLY_STOPPING_METRICS)}",
    )
    _require(
        isinstance(es.patience, int) and not isinstance(es.patience, bool) and es.patience >= 0,
        "early_stopping.patience",
        es.patience,
        "must be an integer >= 0 (evaluations without improvement before stopping)",
    )
    _require(
        _is_number(es.min_delta) and es.min_delta >= 0,
        "early_stopping.min_delta",
        es.min_delta,
        "must be a finite number >= 0",
    )


def resolve_config_path(path: str) -> str:
    """A config file's path as given when it exists there, else the workflow's own file of that
    name (`configs/mnist1d.py` from any directory, or from an installed package)."""
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    own = project_file(path)
    return own if os.path.isfile(own) else path


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, as `--config=path:arg` loads it.

    A config file is Python: loading it runs it. Only a file the user names on a command line
    is loaded so; workflow.run reads what its run directory holds as JSON (apply_saved_values).
    """
    import importlib.util

    spec = importlib.util.spec_from_file_location("loaded_config", path)
    if spec is None or not os.path.isfile(path):
        raise UsageError(f"config file {path!r} does not exist")
    module = importlib.util.module_from_spec(spec)
    with user_code(f"config file {path!r}", module):
        spec.loader.exec_module(module)
        config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise UsageError(
            f"config file {path!r}: get_config() returned {type(config).__name__}; it must "
            "return an ml_collections.ConfigDict"
        )
    return config


def is_import_path(key: str, value) -> bool:
    """Whether config value `key=value` names code to import (a 'module:object' path)."""
    if key not in IMPORT_PATH_KEYS or not isinstance(value, str) or ":" not in value:
        return False
    return not (key == "dataset.name" and value.startswith("tfds:"))  # a TFDS name: data


def apply_saved_values(
    base: ml_collections.ConfigDict, values: dict, where: str
) -> ml_collections.ConfigDict:
    """A copy of `base` (a command line's config) with flattened `values` read from the file
    `where` (JSON) applied. A file is data: a value that would import code other than the
    command line's (IMPORT_PATH_KEYS) is refused, and so is a key `base` does not have."""
    flat = flatten(values)
    base_flat = flatten(json.loads(base.to_json_best_effort()))
    # Blocks replaced whole (another model's options), and empty ones the base leaves open.
    open_blocks = [k for k, v in values.items() if isinstance(v, dict)]
    open_blocks += [k for k, v in base_flat.items() if v == {}]
    for key, value in flat.items():
        if is_import_path(key, value) and base_flat.get(key) != value:
            raise UsageError(
                f"{where} sets {key}={value!r}, an import path: code, which is never run from "
                f"a file; name it on the command line instead (--config.{key}=...)"
            )
        if key not in base_flat and not any(key.startswith(f"{b}.") for b in open_blocks):
            raise UsageError(
                f"{where} sets {key}, which this config does not have: it was written for "
                "another config; use a new --workdir"
            )
    config = base.copy_and_resolve_references()
    try:
        return apply_values(config, values)
    except (KeyError, AttributeError, TypeError, ValueError) as e:
        raise UsageError(
            f"{where} holds config values this config cannot take ({type(e).__name__}: "
            f"{str(e)[:200]}); it was written for another config: use a new --workdir"
        ) from None


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_values(base: ml_collections.ConfigDict, resolved: dict) -> dict:
    """The flattened keys whose value in `resolved` (plain JSON data) differs from `base`."""
    base_plain = json.loads(base.to_json_best_effort())
    base_flat = flatten(base_plain)
    changed = {k: v for k, v in flatten(resolved).items() if base_flat.get(k, object()) != v}
    model = resolved.get("model")
    if isinstance(model, dict) and model.get("name") != base_plain.get("model", {}).get("name"):
        # Another architecture takes other options: its whole block replaces the base's.
        changed = {k: v for k, v in changed.items() if not k.startswith("model.")}
        changed["model"] = model
    return changed


def apply_values(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
    """Set flattened `key.sub: value` pairs (JSON lists become the tuples configs hold; a dict
    replaces the whole block)."""
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = _from_json(value)
    return config


def _from_json(value):
    if isinstance(value, dict):
        return ml_collections.ConfigDict({k: _from_json(v) for k, v in value.items()})
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value


def project_root() -> str:
    """The folder that holds the workflow's configs/: the checkout, or an installed package's
    data files."""
    if os.path.isdir(os.path.join(PROJECT_ROOT, "configs")):
        return PROJECT_ROOT
    return INSTALLED_DATA


def project_file(relative: str) -> str:
    """A file of the workflow's own folder (configs/...), wherever it is installed."""
    return os.path.join(project_root(), relative)


def _base_reference(base_path: str, path: str) -> str:
    """Python source for the base config's path in a file written at `path`: a file of the
    workflow's configs/ through project_file, any other relative to the written file, so the
    file holds no absolute path of the machine that wrote it."""
    base = os.path.realpath(base_path)
    root = os.path.realpath(project_root())
    if base.startswith(os.path.join(root, "configs") + os.sep):
        return f"config_lib.project_file({os.path.relpath(base, root)!r})"
    here = os.path.dirname(os.path.realpath(path))
    return f"os.path.join(os.path.dirname(__file__), {os.path.relpath(base, here)!r})"


def config_file_text(
    path: str, base_source: str, config: ml_collections.ConfigDict, about: str
) -> str:
    """The text of a config file at `path` that every stage accepts as --config: `base_source`
    (the `path[:arg]` it came from) with each value of `config` that differs from it. The file
    names its base relative to itself or to the workflow, so it can be moved with its base."""
    import pprint

    base_path, _, arg = base_source.partition(":")
    base = load_config_file(base_path, arg or None)
    values = changed_values(base, json.loads(config.to_json_best_effort()))
    return f'''"""{about}

This file is Python: loading it (--config=...) runs it, as any config file.

    python -m workflow.evaluate --config=<this file> --workdir=runs/evaluate
"""

import os

from workflow import config_lib

BASE_CONFIG = {_base_reference(base_path, path)}
BASE_ARG = {arg or None!r}
VALUES = {pprint.pformat(values, indent=4, sort_dicts=True)}


def get_config(arg=None):
    """{os.path.basename(base_path)} with the values above applied."""
    del arg
    return config_lib.apply_values(config_lib.load_config_file(BASE_CONFIG, BASE_ARG), VALUES)
'''
