"""The training state and the static task: what one training step reads and writes.

The step is kept a pure function of a pytree state (`TrainState`) and a static `Task`, so
the same function is jitted, scanned over K steps per host call, vmapped over trials and
sharded over a mesh."""

import dataclasses
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import models
from workflow.engine import augment as augmentation
from workflow.engine import losses, tasks
from workflow.engine.optimizer import build_optimizer
from workflow.engine.programs import initialize, run_setup_program
from workflow.errors import UsageError, as_usage_error, user_code

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training: the step, parameters, model state, optimizer."""

    step: jax.Array
    params: Any
    model_state: Any  # non-parameter NNX state: RNG counters, BatchNorm statistics
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Task:
    """The static half of training: graph definitions, optimizer, loss and augmentation."""

    train_graphdef: Any
    eval_graphdef: Any
    tx: optax.GradientTransformation
    loss_fn: losses.LossFn
    # (key, x) -> x applied to training batches only; None: no augmentation.
    augment: augmentation.AugmentFn | None = None
    # The augmentation key of step s is augmentation.step_key(augment_seed, s) (config.seed).
    augment_seed: int = 0
    # Forward/backward dtype (config.dtype); parameters and the loss stay float32.
    compute_dtype: str = "float32"
    # What the outputs mean (config.task): the metrics and error measure (engine/tasks.py).
    kind: tasks.TaskKind = tasks.Classification()


def compute_cast(tree: Any, dtype: str) -> Any:
    """The floating leaves of `tree` in the compute dtype: mixed precision's one cast.

    Parameters stay float32 in the state and the optimizer; the step differentiates through
    this cast, so gradients arrive in float32 too.
    """
    if dtype == "float32":
        return tree
    target = jnp.dtype(dtype)

    def cast(leaf):
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(target)
        return leaf

    return jax.tree.map(cast, tree)


def forward(
    graphdef: Any, params: Any, model_state: Any, x: jax.Array, dtype: str = "float32"
) -> tuple[jax.Array, nnx.Module]:
    """The model's float32 outputs on x, computed in `dtype`, and the merged model."""
    model = nnx.merge(graphdef, compute_cast(params, dtype), model_state)
    return model(compute_cast(x, dtype)).astype(jnp.float32), model


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
    """The model's keyword options from config.model (JSON lists back to tuples): every key but
    `name`; a `kwargs` block a config file writes (`config.model.kwargs = {...}`) is merged in."""
    kwargs = {k: v for k, v in config.model.items() if k not in ("name", "kwargs")}
    extra = config.model.get("kwargs")
    if isinstance(extra, dict | ml_collections.ConfigDict):
        extra = dict(extra)
        both = sorted(set(extra) & set(kwargs))
        if both:
            raise UsageError(
                f"model option {both[0]!r} is set twice, as model.{both[0]} and "
                f"model.kwargs.{both[0]}; keep one"
            )
        kwargs.update(extra)
    elif extra is not None:
        kwargs["kwargs"] = extra
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def init_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of the model's initialization and dropout stream: config.init_seed, else
    config.seed."""
    seed = config.get("init_seed")
    return int(config.seed if seed is None else seed)


def build_model(config: ml_collections.ConfigDict, input_shape, num_classes: int) -> nnx.Module:
    """The configured model, built as `Class(input_shape, num_outputs, *, rngs, **kwargs)` or,
    for any other constructor, `Class(**kwargs, rngs)` (models.build_model); a bad model name,
    option or input shape is a UsageError."""
    kwargs = model_kwargs(config)
    name = config.model.name
    seed = init_seed(config)
    with as_usage_error(models.ModelOptionError):
        cls = models.get_model_class(name)
    # The model's own code raising (not a bad option) is named in one line too.
    with user_code(f"model {name!r}", cls), as_usage_error(models.ModelOptionError):
        return initialize(
            lambda: models.build_model(
                name,
                tuple(input_shape),
                num_classes,
                rngs=nnx.Rngs(seed, dropout=seed + 1),
                **kwargs,
            )
        )


def check_output_shape(
    model: nnx.Module, input_shape, num_classes: int, task: str = tasks.CLASSIFICATION
) -> None:
    """Catch a model whose outputs are not (batch, outputs) before anything trains on them."""
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    graphdef, state = nnx.split(model)
    try:
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
        chex.assert_shape(out, (2, num_classes))
    except AssertionError as e:
        raise UsageError(
            f"model {type(model).__name__} returns shape {getattr(out, 'shape', None)} for "
            f"input (2, *{tuple(input_shape)}); expected (2, {num_classes}) "
            f"{OUTPUTS_MEANING[task]} ({e})"
        ) from None


# What a model's (batch, outputs) array holds, per task, for messages.
OUTPUTS_MEANING = {
    tasks.CLASSIFICATION: "logits",
    tasks.REGRESSION: "predictions (one per target)",
    tasks.MULTILABEL: "logits (one per label)",
}


def build_augment(
    config: ml_collections.ConfigDict, kind: str | None = None
) -> augmentation.AugmentFn | None:
    """The configured augmentation for data of `kind` (default config.augment.kind), or None."""
    cfg = config.get("augment")
    if cfg is None or not cfg.enabled:
        return None
    kind = kind or cfg.get("kind")
    if kind not in augmentation.KINDS:
        raise UsageError(
            f"invalid value augment.kind={kind!r}: augmentation needs the data kind, one of "
            f"{', '.join(augmentation.KINDS)} (experiment.prepare sets it from the dataset)"
        )
    return augmentation.make_augment(kind, cfg)


def create_train_state(
    model: nnx.Module,
    config: ml_collections.ConfigDict,
    kind: str | None = None,
    task_kind: tasks.TaskKind | None = None,
) -> tuple[Task, TrainState]:
    """Split the model once into train/eval graph definitions, parameters and other state.

    `kind` (image, sequence, tabular) picks the augmentation block; without it
    config.augment.kind does, which experiment.prepare fills in from the dataset, so callers
    that only pass the config (trials.TrialRunner) augment like the single run. `task_kind`:
    the dataset's (Dataset.task, which carries regression's target statistics); by default
    config.task's with none.
    """
    task_name = tasks.check_task_name(config.get("task", tasks.CLASSIFICATION))
    if task_kind is None:
        task_kind = tasks.KINDS[task_name]()
    model.train()
    train_graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    model.train()
    tx = build_optimizer(config.optimizer, float(config.l2), int(config.num_steps))
    task = Task(
        train_graphdef=train_graphdef,
        eval_graphdef=eval_graphdef,
        tx=tx,
        loss_fn=losses.get_loss(config.loss, task_kind.name),
        augment=build_augment(config, kind),
        augment_seed=int(config.seed),
        compute_dtype=config.get("dtype", "float32"),
        kind=task_kind,
    )
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        # Eagerly, each zeros_like would compile once per parameter shape.
        opt_state=run_setup_program(tx.init, params),
    )
    return task, state


def copy_state(state: TrainState) -> TrainState:
    """A copy in new buffers: the multi-step donates (invalidates) the state it is given."""
    return jax.tree.map(jnp.copy, state)
