"""Deliberately broken pieces, plugged in through the public extension points by tests."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.mlp import MLP


def log_of_margin_loss(logits, labels):
    """Cross-entropy plus 0 * log(loss - 0.5): NaN as soon as the loss drops below 0.5.

    The 'log of a value that reaches zero' bug: harmless early, NaN once training succeeds.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return ce + 0.0 * jnp.log(ce - 0.5)


# ----------------------------------------------------------------------------- user code that
# fails: each stage must say so in one line naming it (exit 2), before it writes anything.


def loss_without_labels(logits):
    """A loss with the wrong signature: it takes no labels."""
    return jnp.sum(logits, axis=-1)


def raising_loss(logits, labels):
    """A loss that raises when it is traced."""
    raise RuntimeError("the user's loss failed")


def per_class_loss(logits, labels):
    """Per-class terms (B, C) instead of one value per example."""
    return -jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, logits.shape[-1])


def mean_loss(logits, labels):
    """One scalar, already averaged over the batch, instead of one value per example."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


class RaisingModel(MLP):
    """An MLP whose forward pass raises."""

    def __call__(self, x):
        """Raises RuntimeError."""
        raise RuntimeError("the user's model failed")


class UnbuildableModel(MLP):
    """An MLP whose constructor raises something other than TypeError or ValueError."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("the user's model cannot be built")


def raising_loader():
    """A dataset loader that raises."""
    raise RuntimeError("the user's loader failed")


def arrays_from_file(path: str) -> dict:
    """A dataset loader reading an .npz file: the same config may then hold other data."""
    with np.load(path) as arrays:
        return {**{k: arrays[k] for k in arrays.files}, "kind": "tabular", "num_classes": 3}
