"""The model passes the checks share: jitted, pure functions of the split state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workflow import engine
from workflow.engine import Task, TrainState

Batch = dict[str, np.ndarray]

# Examples per check batch: enough for batch statistics and dead-unit evidence, small enough
# that the eager NaN localization stays fast.
CHECK_BATCH_SIZE = 64


# ----------------------------------------------------------------------------- helpers


def path_name(path: tuple) -> str:
    """'hidden/0/kernel' from a tree_flatten_with_path key path (the Variable's .value dropped)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def named_leaves(tree: Any) -> dict[str, Any]:
    """{path name: leaf} of a parameter or gradient tree, in flattening order."""
    return {path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def output_scale(outputs: np.ndarray) -> float:
    """The magnitude that output differences are judged against: max(1, max |output|)."""
    finite = np.abs(outputs[np.isfinite(outputs)])
    return max(1.0, float(finite.max())) if finite.size else 1.0


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; inf where only one side is finite."""
    with np.errstate(invalid="ignore"):
        d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    d = np.where(same, 0.0, np.nan_to_num(d, nan=np.inf))
    return float(d.max()) if d.size else 0.0


@engine.jit_for_few_runs(static_argnums=0)
def forward_in_mode(
    graphdef: Any, params: Any, model_state: Any, x: jax.Array
) -> tuple[jax.Array, Any]:
    """Outputs of the model in the mode `graphdef` was split in, and its updated state."""
    model = nnx.merge(graphdef, params, model_state)
    outputs = model(x)
    return outputs, nnx.split(model, nnx.Param, ...)[2]


@engine.jit_for_few_runs(static_argnums=0)
def input_gradient(graphdef: Any, params: Any, model_state: Any, x: jax.Array) -> jax.Array:
    """The gradient of the outputs (in the mode `graphdef` was split in), projected on fixed
    random weights so that no output cancels another, with respect to the inputs `x`."""

    def projected(inputs):
        outputs = nnx.merge(graphdef, params, model_state)(inputs)
        weights = jax.random.normal(jax.random.key(0), outputs.shape, outputs.dtype)
        return jnp.sum(outputs * weights)

    return jax.grad(projected)(jnp.asarray(x))


def data_loss(
    graphdef: Any, loss_fn: Callable, params: Any, model_state: Any, x: jax.Array, y: jax.Array
):
    """(mean data loss in train mode as the training step computes it, outputs); no L2 term."""
    # Fresh Variables at this trace level: BatchNorm may update its statistics under grad.
    model = nnx.merge(graphdef, params, engine.fresh_variables(model_state))
    outputs = model(x)
    return jnp.mean(loss_fn(outputs, y)), outputs


# Static (graphdef, loss): setups of the same architecture and loss share one compiled program.
@engine.jit_for_few_runs(static_argnums=(0, 1))
def loss_outputs_grads(
    graphdef: Any, loss_fn: Callable, params: Any, model_state: Any, x: jax.Array, y: jax.Array
):
    """((mean data loss, train-mode outputs), gradients): one program for three checks."""
    grad_fn = jax.value_and_grad(data_loss, argnums=2, has_aux=True)
    return grad_fn(graphdef, loss_fn, params, model_state, x, y)


def loss_and_grads(task: Task, state: TrainState, batch: Batch) -> tuple[jax.Array, Any]:
    """Mean data loss and its gradients at `state` on `batch`."""
    x, y = jnp.asarray(batch["x"]), jnp.asarray(batch["y"])
    (loss, _), grads = loss_outputs_grads(
        task.train_graphdef, task.loss_fn, state.params, state.model_state, x, y
    )
    return loss, grads


def reseed(model_state: Any) -> Any:
    """`model_state` with every RNG key folded with a constant: other randomness, same values."""

    def fold(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.fold_in(leaf, 12345)
        return leaf

    return jax.tree.map(fold, model_state)


def sample_batch(dataset: Any, size: int = CHECK_BATCH_SIZE, seed: int = 0) -> Batch:
    """A fixed random batch {'x', 'y'} of the training split (loaders may sort by class)."""
    n = len(dataset.y_train)
    idx = np.sort(np.random.default_rng(seed).permutation(n)[: min(size, n)])
    return {"x": dataset.x_train[idx], "y": dataset.y_train[idx]}
