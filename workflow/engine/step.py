"""The pure training step, K of them per call (engine.loop_form), and the eval pass of one batch."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from workflow.engine import augment as augmentation
from workflow.engine.loop_form import StepLoop
from workflow.engine.sharding import DATA_AXIS, batch_sharding, index_sharding, replicated
from workflow.engine.state import Batch, Metrics, Task, TrainState, forward


def fresh_variables(tree: Any) -> Any:
    """New Variable objects over the same arrays: NNX refuses to mutate outer-trace Variables."""
    return jax.tree.map(lambda leaf: leaf, tree)


def make_train_step(task: Task) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure training step: augmentation, forward, loss, gradient, optimizer update."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        x = batch["x"]
        if task.augment is not None:
            # A key from (seed, step) alone: resumed runs and vmapped trials draw the same.
            x = task.augment(augmentation.step_key(task.augment_seed, state.step), x)

        def objective(params):
            # Fresh Variables at this trace level, so BatchNorm may update its statistics here.
            logits, model = forward(
                task.train_graphdef,
                params,
                fresh_variables(state.model_state),
                x,
                task.compute_dtype,
            )
            data_loss = jnp.mean(task.loss_fn(logits, batch["y"]))
            new_model_state = nnx.split(model, nnx.Param, ...)[2]
            return data_loss, (logits, new_model_state)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (data_loss, (logits, model_state)), grads = grad_fn(state.params)
        updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": data_loss,
            # The task's score, 1 - its error (engine/tasks.py): accuracy for classification.
            "accuracy": task.kind.batch_score(logits, batch["y"]),
            # One reduction over all gradients: a norm per parameter array adds a reduction per
            # array to every step, which shows in a small model's step on the CPU.
            "grad_norm": jnp.linalg.norm(
                jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
            ),
        }
        new_state = TrainState(state.step + 1, params, model_state, opt_state)
        return new_state, metrics

    return train_step


def make_indexed_step(
    task: Task, mesh: Mesh | None = None, per_host: bool = False
) -> Callable[..., tuple[TrainState, Metrics]]:
    """One training step on the batch of example indices `idx`: (state, x, y, idx) -> (state,
    metrics), the batch gathered on device.

    With a mesh, the batch is split over its devices (the gather of a sharded index row yields a
    sharded batch) and jit partitions the pure step: the same program, gradients all-reduced by
    XLA, so the numbers are the one-device run's up to float summation order. `per_host`: x and
    y are split over the mesh in equal blocks (per-host data), and each device gathers its part
    of the batch from its own block by the local indices in its columns of idx
    (data.block_batch_indices), under shard_map.
    """
    train_step = make_train_step(task)
    gather_blocks = block_gather(mesh) if per_host else None

    def indexed_step(state: TrainState, x: jax.Array, y: jax.Array, idx: jax.Array):
        if gather_blocks is not None:
            xb, yb = gather_blocks(x, y, idx)
        else:
            xb, yb = x[idx], y[idx]
        if mesh is not None:
            xb = jax.lax.with_sharding_constraint(xb, batch_sharding(mesh))
            yb = jax.lax.with_sharding_constraint(yb, batch_sharding(mesh))
        return train_step(state, {"x": xb, "y": yb})

    return indexed_step


def make_train_loop(
    task: Task,
    mesh: Mesh | None = None,
    shardings: Any = None,
    per_host: bool = False,
    form: str = "auto",
) -> StepLoop:
    """K training steps per call, `(state, x, y, indices) -> (state, per-step metrics)`: under
    `lax.scan` or one compiled step per step, as `form` (config.loop) says or as measured faster
    (engine.loop_form). `indices` is (K, batch) example indices; the state is donated."""
    in_shardings = out_shardings = None
    if mesh is not None:
        whole = replicated(mesh)
        data = batch_sharding(mesh) if per_host else whole
        in_shardings = (shardings, data, data, index_sharding(mesh))
        out_shardings = (shardings, whole)
    return StepLoop(
        make_indexed_step(task, mesh, per_host),
        num_shared=2,
        form=form,
        in_shardings=in_shardings,
        out_shardings=out_shardings,
    )


def make_batch_step(
    task: Task, mesh: Mesh | None = None
) -> Callable[..., tuple[TrainState, Metrics]]:
    """One training step on a batch the host read, `(state, x, y) -> (state, metrics)` (the
    grain pipeline, workflow.data.pipeline); with a mesh, the batch split over its devices."""
    train_step = make_train_step(task)

    def batch_step(state: TrainState, xb: jax.Array, yb: jax.Array):
        if mesh is not None:
            xb = jax.lax.with_sharding_constraint(xb, batch_sharding(mesh))
            yb = jax.lax.with_sharding_constraint(yb, batch_sharding(mesh))
        return train_step(state, {"x": xb, "y": yb})

    return batch_step


def make_batch_train_loop(
    task: Task, mesh: Mesh | None = None, shardings: Any = None, form: str = "auto"
) -> StepLoop:
    """K training steps per call on host-read batches, `(state, xs, ys) -> (state, per-step
    metrics)`: xs (K, batch, ...) and ys (K, batch), each row one step's batch (with a mesh,
    every row split over the devices as index rows are); the state is donated."""
    in_shardings = out_shardings = None
    if mesh is not None:
        rows = index_sharding(mesh)  # (K, batch, ...): the batch axis split, as for indices
        in_shardings = (shardings, rows, rows)
        out_shardings = (shardings, replicated(mesh))
    return StepLoop(
        make_batch_step(task, mesh),
        num_shared=0,
        form=form,
        in_shardings=in_shardings,
        out_shardings=out_shardings,
    )


def make_multi_step(
    task: Task, mesh: Mesh | None = None, shardings: Any = None, per_host: bool = False
) -> StepLoop:
    """K training steps in one compiled call under `lax.scan`, batches gathered on device by
    example index (make_indexed_step): the scanned form of make_train_loop."""
    return make_train_loop(task, mesh, shardings, per_host, form="scan")


def block_gather(mesh: Mesh) -> Callable:
    """(x, y, idx) -> (x[idx], y[idx]) per device: each device indexes its own block of x and y
    with its part of idx (all three split over the mesh's data axis); the result is the
    concatenation of the devices' parts, split the same way."""
    spec = PartitionSpec(DATA_AXIS)
    return jax.shard_map(
        lambda x, y, idx: (x[idx], y[idx]), mesh=mesh, in_specs=(spec,) * 3, out_specs=(spec,) * 2
    )


def make_eval_batch(task: Task) -> Callable:
    """Summed loss and the task's metric sums (tasks.TaskKind.batch_sums) of one padded batch in
    eval mode (mask marks real rows)."""

    def eval_batch(params, model_state, x, y, mask):
        logits, _ = forward(task.eval_graphdef, params, model_state, x, task.compute_dtype)
        loss = jnp.sum(task.loss_fn(logits, y) * mask)
        return loss, task.kind.batch_sums(logits, y, mask)

    return jax.jit(eval_batch)
