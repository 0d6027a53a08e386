"""Per-layer statistics of one training batch, for TensorBoard's histograms at evaluation points.

One compiled program computes, in train mode as the training step does, every parameter's
gradient and every module's output (`nnx.capture` with `method_outputs`: any NNX model, a
user's too, without changes to it), and reduces each to a histogram on the device: only
NUM_BINS counts and a few sums per tensor reach the host. It runs only when asked (engine.fit's
`log_layers`, at each evaluation), so the training step itself carries none of it.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workflow.engine.state import Task, TrainState
from workflow.engine.step import fresh_variables

NUM_BINS = 30
# Examples of the batch the statistics are taken on: enough for activation histograms, small
# enough to cost a fraction of one evaluation.
MAX_EXAMPLES = 64


def _histogram(values: jax.Array) -> dict[str, jax.Array]:
    """TensorBoard's histogram statistics of the finite values of one tensor."""
    v = values.astype(jnp.float32).ravel()
    finite = jnp.isfinite(v)
    lo = jnp.min(jnp.where(finite, v, jnp.inf))
    hi = jnp.max(jnp.where(finite, v, -jnp.inf))
    width = jnp.maximum(hi - lo, 1e-12) / NUM_BINS
    index = jnp.clip(jnp.floor((v - lo) / width), 0, NUM_BINS - 1).astype(jnp.int32)
    counts = jnp.zeros(NUM_BINS, jnp.float32).at[index].add(finite.astype(jnp.float32))
    zeroed = jnp.where(finite, v, 0.0)
    return {
        "min": lo,
        "max": hi,
        "num": jnp.sum(finite),
        "sum": jnp.sum(zeroed),
        "sum_squares": jnp.sum(zeroed**2),
        "bucket_limits": lo + width * jnp.arange(1, NUM_BINS + 1),
        "bucket_counts": counts,
    }


def _name(path: tuple) -> str:
    """'convs/1/kernel', 'encoder/features' from a tree path: NNX's `value` (and the index of
    a sown output in its tuple) and `__call__` dropped, other method names kept."""
    parts = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path]
    if len(parts) >= 2 and parts[-2] == "value" and isinstance(parts[-1], int):
        parts = parts[:-2]
    return "/".join(str(p) for p in parts if p not in ("__call__", "value")) or "output"


def _statistics(
    graphdef: Any, loss_fn: Callable, capture: bool, params: Any, model_state: Any, x, y
):
    def objective(params):
        model = nnx.merge(graphdef, params, fresh_variables(model_state))
        if not capture:
            return jnp.mean(loss_fn(model(x).astype(jnp.float32), y)), {}
        captured_call = nnx.capture(model, nnx.Intermediate, method_outputs=nnx.Intermediate)
        outputs, captured = captured_call(x)
        return jnp.mean(loss_fn(outputs.astype(jnp.float32), y)), captured

    (_, captured), grads = jax.value_and_grad(objective, has_aux=True)(params)
    floating = lambda a: jnp.issubdtype(a.dtype, jnp.floating)  # noqa: E731
    gradients = {
        _name(p): g for p, g in jax.tree_util.tree_flatten_with_path(grads)[0] if floating(g)
    }
    activations = {
        _name(p): a for p, a in jax.tree_util.tree_flatten_with_path(captured)[0] if floating(a)
    }
    return {
        "histograms": {
            **{f"gradients/{k}": _histogram(g) for k, g in gradients.items()},
            **{f"activations/{k}": _histogram(a) for k, a in activations.items()},
        },
        "scalars": {f"gradient_norm/{k}": jnp.linalg.norm(g.ravel()) for k, g in gradients.items()},
    }


_compiled = jax.jit(_statistics, static_argnums=(0, 1, 2))
# Models whose method outputs cannot be captured: a module that runs its submodules inside a
# transform (nnx.RNN's scan over its cell) gets captures in its carry, which the scan refuses.
# Their histograms are the gradients' alone.
_UNCAPTURABLE: set = set()


def layer_statistics(task: Task, state: TrainState, x: np.ndarray, y: np.ndarray) -> dict:
    """{"histograms": {tag: statistics}, "scalars": {tag: value}} of one batch at `state`:
    `gradients/<parameter>`, `activations/<module>` (where the model's method outputs can be
    captured) and `gradient_norm/<parameter>`."""
    x, y = x[:MAX_EXAMPLES], y[:MAX_EXAMPLES]
    graphdef, args = task.train_graphdef, (state.params, state.model_state, x, y)
    if graphdef not in _UNCAPTURABLE:
        try:
            result = _compiled(graphdef, task.loss_fn, True, *args)
            return jax.tree.map(np.asarray, jax.device_get(result))
        except (TypeError, ValueError):  # tracing the captures failed: see _UNCAPTURABLE
            _UNCAPTURABLE.add(graphdef)
    result = _compiled(graphdef, task.loss_fn, False, *args)
    return jax.tree.map(np.asarray, jax.device_get(result))
