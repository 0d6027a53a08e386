"""Broken pieces of the zoo that tests/check_bugs.py and tests/curve_bugs.py lack."""

import jax
import jax.numpy as jnp


def expected_class_regression(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Squared error of the expected class index: predictions (N,) against targets (N, 1).

    The targets keep a trailing axis, so `prediction - target` broadcasts to (N, N) and the mean
    over the last axis silently averages every example's error against every other target.
    """
    classes = jnp.arange(outputs.shape[-1], dtype=outputs.dtype)
    prediction = jax.nn.softmax(outputs) @ classes  # (N,)
    target = labels.astype(outputs.dtype).reshape(-1, 1)  # (N, 1): the bug
    return jnp.mean((prediction - target) ** 2, axis=-1)
