"""Deliberately broken pieces, plugged in through the public extension points by tests."""

import jax.numpy as jnp
import optax


def log_of_margin_loss(logits, labels):
    """Cross-entropy plus 0 * log(loss - 0.5): NaN as soon as the loss drops below 0.5.

    The 'log of a value that reaches zero' bug: harmless early, NaN once training succeeds.
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return ce + 0.0 * jnp.log(ce - 0.5)
