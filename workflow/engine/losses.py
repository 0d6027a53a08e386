"""Per-example losses, named by string or by import path ("pkg.module:function")."""

import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from workflow.engine import tasks
from workflow.errors import UsageError, import_user_object, user_code

LossFn = Callable[[jax.Array, jax.Array], jax.Array]


# The losses live with their task (workflow/engine/tasks.py); these names stay importable here.
softmax_cross_entropy = tasks.softmax_cross_entropy
squared_error = tasks.squared_error

LOSSES: dict[str, LossFn] = {
    name: fn for kind in tasks.KINDS.values() for name, fn in kind.losses.items()
}


def get_loss(name: str, task: str = tasks.CLASSIFICATION) -> LossFn:
    """A loss of `task` by registered name ("auto": the task's default) or import path; a
    UsageError names the task's valid choices."""
    kind = tasks.KINDS[task]
    if name == "auto":
        name = kind.default_loss
    if kind.loss(name) is not None:
        return kind.loss(name)
    valid = f"{', '.join(['auto', *kind.losses])} or an import path 'module:function'"
    if name in LOSSES:
        raise UsageError(f"loss {name!r} is not a {task} loss; valid for task={task}: {valid}")
    if ":" not in name:
        raise UsageError(f"unknown loss {name!r}; valid: {valid}")
    return import_user_object(name, "loss", valid)


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
