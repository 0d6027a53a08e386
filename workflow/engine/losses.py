"""Per-example losses, named by string or by import path ("pkg.module:function")."""

import importlib
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from workflow.errors import UsageError, UserCodeError, one_line, user_code

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
    except Exception as e:  # the module's own code raising as it is imported
        raise UserCodeError(f"loss {name!r}: importing it raised {one_line(e)}") from e
    if not callable(fn):
        raise UsageError(f"loss {name!r} is not callable; valid: {valid}")
    return fn


def check_loss(loss_fn: LossFn, name: str, logits: jax.ShapeDtypeStruct, labels) -> None:
    """A loss takes (logits, labels) and returns one float per example: checked on one batch's
    shapes under jax.eval_shape (nothing runs) before a training stage writes anything.

    UsageError naming the loss otherwise; UserCodeError when the loss itself raises. The debug
    stage does not call it: it diagnoses such a loss as a `shape_mismatch` finding instead.
    """
    try:
        signature = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        signature = None  # not introspectable: the call below decides
    if signature is not None:
        try:
            signature.bind(logits, labels)
        except TypeError:
            raise UsageError(
                f"loss {name!r} must take (logits, labels) and return one value per example; "
                f"it takes {signature}"
            ) from None
    with user_code(f"loss {name!r}", loss_fn):
        out = jax.eval_shape(loss_fn, logits, labels)
    n = logits.shape[0]
    shape = getattr(out, "shape", None)
    if shape != (n,):
        raise UsageError(
            f"loss {name!r} returns shape {shape} for a batch of {n}; expected ({n},), one value "
            "per example (the workflow averages them); workflow.debug shows what it computes"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise UsageError(f"loss {name!r} returns {out.dtype} values; expected floats")
