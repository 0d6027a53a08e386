"""The trainer: one pure `train_step(state, batch)` over split NNX state, run under `lax.scan`.

The step is kept a pure function of a pytree state so the same function is jitted, scanned over
K steps per host call, and later vmapped over trials and sharded over a mesh (see DESIGN.md).
"""

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
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
from workflow import losses
from workflow.errors import UsageError

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
    """The static half of training: graph definitions, optimizer and loss."""

    train_graphdef: Any
    eval_graphdef: Any
    tx: optax.GradientTransformation
    loss_fn: losses.LossFn


def build_optimizer(
    opt: ml_collections.ConfigDict, l2: float = 0.0
) -> optax.GradientTransformation:
    """The configured optimizer, with the L2 penalty applied as its gradient.

    The learning rate and the L2 weight live in the optimizer state (`inject_hyperparams`), so
    trials batched under `vmap` each carry their own. `l2 * sum(w**2)` added to the loss has the
    gradient `2 * l2 * w`, which `add_decayed_weights` adds before the optimizer sees it.
    """
    base = {
        "adam": lambda lr: optax.adam(lr),
        "adamw": lambda lr: optax.adamw(lr, weight_decay=opt.weight_decay),
        "sgd": lambda lr: optax.sgd(lr),
        "momentum": lambda lr: optax.sgd(lr, momentum=opt.momentum),
    }[opt.name]

    def make(learning_rate, l2):
        return optax.chain(optax.add_decayed_weights(2.0 * l2), base(learning_rate))

    return optax.inject_hyperparams(make)(learning_rate=opt.learning_rate, l2=l2)


def build_model(config: ml_collections.ConfigDict, input_shape, num_classes: int) -> nnx.Module:
    """The configured model, built as `Class(input_shape, num_outputs, *, rngs, **kwargs)`."""
    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return models.build_model(
        config.model.name,
        tuple(input_shape),
        num_classes,
        rngs=nnx.Rngs(config.seed, dropout=config.seed + 1),
        **kwargs,
    )


def check_output_shape(model: nnx.Module, input_shape, num_classes: int) -> None:
    """Catch a model whose outputs are not (batch, classes) before anything trains on them."""
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    graphdef, state = nnx.split(model)
    try:
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
        chex.assert_shape(out, (2, num_classes))
    except AssertionError as e:
        raise UsageError(
            f"model {type(model).__name__} returns shape {getattr(out, 'shape', None)} for "
            f"input (2, *{tuple(input_shape)}); expected (2, {num_classes}) logits ({e})"
        ) from None


def create_train_state(
    model: nnx.Module, config: ml_collections.ConfigDict
) -> tuple[Task, TrainState]:
    """Split the model once into train/eval graph definitions, parameters and other state."""
    model.train()
    train_graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    model.train()
    tx = build_optimizer(config.optimizer, float(config.l2))
    task = Task(
        train_graphdef=train_graphdef,
        eval_graphdef=eval_graphdef,
        tx=tx,
        loss_fn=losses.get_loss(config.loss),
    )
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
    )
    return task, state


def fresh_variables(tree: Any) -> Any:
    """New Variable objects over the same arrays: NNX refuses to mutate outer-trace Variables."""
    return jax.tree.map(lambda leaf: leaf, tree)


def make_train_step(task: Task) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure training step: forward, loss, gradient, optimizer update."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        def objective(params):
            # Fresh Variables at this trace level, so BatchNorm may update its statistics here.
            model = nnx.merge(task.train_graphdef, params, fresh_variables(state.model_state))
            logits = model(batch["x"])
            data_loss = jnp.mean(task.loss_fn(logits, batch["y"]))
            new_model_state = nnx.split(model, nnx.Param, ...)[2]
            return data_loss, (logits, new_model_state)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (data_loss, (logits, model_state)), grads = grad_fn(state.params)
        updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": data_loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"]),
            # One reduction over all gradients: a norm per parameter array costs ~10% of a small
            # model's step on the CPU (measured by benchmarks/train_throughput.py).
            "grad_norm": jnp.linalg.norm(
                jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
            ),
        }
        new_state = TrainState(state.step + 1, params, model_state, opt_state)
        return new_state, metrics

    return train_step


def make_multi_step(task: Task) -> Callable:
    """K training steps in one compiled call: batches gathered on device by example index."""
    train_step = make_train_step(task)

    def multi_step(state: TrainState, x: jax.Array, y: jax.Array, indices: jax.Array):
        def body(state, idx):
            return train_step(state, {"x": x[idx], "y": y[idx]})

        return jax.lax.scan(body, state, indices)

    return jax.jit(multi_step, donate_argnums=0)


def make_eval_batch(task: Task) -> Callable:
    """Summed loss and correct count of one padded batch in eval mode (mask marks real rows)."""

    def eval_batch(params, model_state, x, y, mask):
        model = nnx.merge(task.eval_graphdef, params, model_state)
        logits = model(x)
        loss = jnp.sum(task.loss_fn(logits, y) * mask)
        correct = jnp.sum((jnp.argmax(logits, -1) == y) * mask)
        return loss, correct

    return jax.jit(eval_batch)


def padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int) -> Iterator[tuple]:
    """Fixed-shape batches (one compile) with a mask over the padding of the last one."""
    n = len(x)
    batch_size = min(batch_size, n)
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        pad = batch_size - len(xb)
        mask = np.ones(batch_size, np.float32)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
            mask[-pad:] = 0
        yield xb, yb, mask


class Evaluator:
    """Loss and accuracy of the model over a whole split, in eval mode."""

    def __init__(self, task: Task, batch_size: int):
        self._eval_batch = make_eval_batch(task)
        self._batch_size = batch_size

    def __call__(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """{'loss', 'accuracy', 'error'} over all of (x, y)."""
        total_loss, total_correct = 0.0, 0.0
        for xb, yb, mask in padded_batches(x, y, self._batch_size):
            loss, correct = self._eval_batch(state.params, state.model_state, xb, yb, mask)
            total_loss += loss
            total_correct += correct
        loss = float(total_loss) / len(x)
        accuracy = float(total_correct) / len(x)
        return {"loss": loss, "accuracy": accuracy, "error": 1.0 - accuracy}


def first_nonfinite(values: np.ndarray) -> int | None:
    """Index of the first NaN/inf in a 1-D array, or None."""
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if bad.size else None


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(tree)]))


def params_finite(state: TrainState) -> bool:
    """Whether every parameter is finite (one compiled check, one host sync)."""
    return bool(_all_finite(state.params))


def schedule_chunks(start: int, stop: int, max_chunk: int, every: tuple[int, ...]) -> list[int]:
    """Chunk lengths from `start` to `stop` that end exactly on every multiple of `every`."""
    chunks, step = [], start
    while step < stop:
        end = min(stop, step + max_chunk)
        for period in every:
            if period > 0:
                end = min(end, (step // period + 1) * period)
        chunks.append(end - step)
        step = end
    return chunks


def format_rate(steps: int, seconds: float) -> float:
    """Steps per second, safe for a zero duration."""
    return steps / seconds if seconds > 0 else math.inf


def now() -> float:
    """Monotonic wall clock in seconds."""
    return time.perf_counter()


@dataclasses.dataclass
class FitResult:
    """What a training run produced: final state, status, logged records and timing."""

    state: TrainState
    status: str  # "ok" | "diverged"
    records: list[dict]
    step_losses: np.ndarray  # the training loss of every step run in this process
    divergence: dict | None
    wall_seconds: float
    steps_per_s: float
    compile_seconds: float
    start_step: int
    last_checkpoint: int | None


def window_records(step0: int, metrics: dict[str, np.ndarray], log_every: int, rate: float):
    """Mean train metrics of each log window that ends inside a chunk (steps are 1-based)."""
    records, k = [], len(metrics["loss"])
    ends = [s for s in range(step0 + 1, step0 + k + 1) if s % log_every == 0]
    if not ends or ends[-1] != step0 + k:
        ends.append(step0 + k)  # always log the chunk's last step
    lo = 0
    for end in ends:
        hi = end - step0
        lo = max(lo, hi - log_every)
        record = {"step": end}
        for name, values in metrics.items():
            record[f"train_{name}"] = float(np.mean(values[lo:hi]))
        record["steps_per_s"] = rate
        records.append(record)
        lo = hi
    return records


def fit(
    task: Task,
    state: TrainState,
    dataset,
    config: ml_collections.ConfigDict,
    *,
    log: Callable[[dict], None] = lambda record: None,
    checkpointer=None,
    progress: bool = True,
) -> FitResult:
    """Train from `state.step` to `config.num_steps`, logging, evaluating and checkpointing."""
    from tqdm.auto import tqdm

    from workflow import data

    multi_step = make_multi_step(task)
    evaluator = Evaluator(task, config.eval_batch_size)
    x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    start_step = step = int(state.step)
    last_checkpoint = checkpointer.latest_step() if checkpointer else None
    chunks = schedule_chunks(
        start_step,
        config.num_steps,
        config.steps_per_call,
        (config.eval_every, config.checkpoint_every),
    )
    records, step_losses, divergence = [], [], None
    compiled, compile_seconds, train_seconds, timed_steps = set(), 0.0, 0.0, 0
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        disable=not progress,
        unit="step",
        desc="train",
        leave=False,
    )
    t_start = now()
    for k in chunks:
        indices = data.batch_indices(len(dataset.x_train), config.batch_size, config.seed, step, k)
        t0 = now()
        state, metrics = multi_step(state, x_train, y_train, jnp.asarray(indices))
        metrics = jax.device_get(metrics)
        seconds = now() - t0
        if k in compiled:
            train_seconds, timed_steps = train_seconds + seconds, timed_steps + k
        else:  # the first call of each chunk length includes its compilation
            compiled.add(k)
            compile_seconds += seconds
        rate = format_rate(k, seconds)
        bad = first_nonfinite(np.asarray(metrics["loss"]))
        bad_grad = first_nonfinite(np.asarray(metrics["grad_norm"]))
        if bad is None and bad_grad is None and not params_finite(state):
            bad_grad = k - 1
        if bad is not None or bad_grad is not None:
            first = min(i for i in (bad, bad_grad) if i is not None)
            divergence = {
                "step": step + first + 1,  # steps count from 1, as in metrics.jsonl
                "quantity": "loss" if first == bad else "gradient",
                "last_finite_loss": float(metrics["loss"][first - 1]) if first else None,
            }
            metrics = {name: values[:first] for name, values in metrics.items()}
            k = first
        step_losses.append(np.asarray(metrics["loss"]))
        if k:
            for record in window_records(step, metrics, config.log_every, rate):
                records.append(record)
                log(record)
        step += k
        bar.update(k)
        if divergence:
            break
        bar.set_postfix(loss=f"{float(metrics['loss'][-1]):.4f}", steps_per_s=f"{rate:,.0f}")
        if step % config.eval_every == 0 or step == config.num_steps:
            val = evaluator(state, dataset.x_val, dataset.y_val)
            record = {"step": step, "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
            records.append(record)
            log(record)
        if checkpointer and (
            step == config.num_steps
            or (config.checkpoint_every and step % config.checkpoint_every == 0)
        ):
            checkpointer.save(step, state)
            last_checkpoint = step
    bar.close()
    losses_run = np.concatenate(step_losses) if step_losses else np.zeros(0, np.float32)
    return FitResult(
        state=state,
        status="diverged" if divergence else "ok",
        records=records,
        step_losses=losses_run,
        divergence=divergence,
        wall_seconds=now() - t_start,
        steps_per_s=format_rate(timed_steps, train_seconds) if timed_steps else 0.0,
        compile_seconds=compile_seconds,
        start_step=start_step,
        last_checkpoint=last_checkpoint,
    )
