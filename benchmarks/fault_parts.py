"""Broken pieces the fault campaign (benchmarks/faults.py) plugs into the stages through their
public extension points (`--config.loss=module:function`, `--config.model.name=module:Class`,
`--config.dataset.name=module:function`), each one way a user's own code can be wrong."""

import jax
import jax.numpy as jnp
import optax

from models import mlp


def loss_of_one_argument(logits):
    """A loss with the wrong signature: the labels are missing."""
    return jnp.mean(logits, axis=-1)


def raising_loss(logits, labels):
    """A loss that raises as soon as it is traced."""
    raise RuntimeError("this loss is broken on purpose")


def scalar_loss(logits, labels):
    """The batch mean instead of one value per example."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def per_class_loss(logits, labels):
    """A (batch, classes) array instead of one value per example."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)[:, None] * jnp.ones_like(
        logits
    )


class RaisingMLP(mlp.MLP):
    """The registered MLP, raising in its forward pass."""

    def __call__(self, x: jax.Array) -> jax.Array:
        """Raise (on purpose) instead of computing the outputs."""
        raise RuntimeError("this model is broken on purpose")


def raising_loader(**kwargs):
    """A dataset loader that raises."""
    raise OSError("the data server is unreachable (on purpose)")
