"""Per-example losses, named by string or by import path ("pkg.module:function")."""

import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from workflow.errors import UsageError

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy of integer labels against logits, one value per example."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def squared_error(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Squared error against one-hot labels, one value per example."""
    targets = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    return jnp.sum((outputs - targets) ** 2, axis=-1)


LOSSES: dict[str, LossFn] = {
    "softmax_cross_entropy": softmax_cross_entropy,
    "squared_error": squared_error,
}


def get_loss(name: str) -> LossFn:
    """A loss by registered name or import path; UsageError names the valid choices."""
    if name in LOSSES:
        return LOSSES[name]
    valid = f"{', '.join(LOSSES)} or an import path 'module:function'"
    if ":" not in name:
        raise UsageError(f"unknown loss {name!r}; valid: {valid}")
    module_name, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"cannot load loss {name!r} ({e}); valid: {valid}") from None
    if not callable(fn):
        raise UsageError(f"loss {name!r} is not callable; valid: {valid}")
    return fn
