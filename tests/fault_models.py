"""A model slowed down on purpose, so a test can kill a run in the middle of its training."""

import time

import jax

from models import mlp

SECONDS_PER_CALL = 0.01


def _pause() -> None:
    time.sleep(SECONDS_PER_CALL)


class SlowMLP(mlp.MLP):
    """The registered MLP with a host pause in every forward pass: same numbers, ~100 steps/s."""

    def __call__(self, x: jax.Array) -> jax.Array:
        """The MLP's outputs, after a pause on the host (a side effect jit keeps)."""
        jax.debug.callback(_pause)
        return super().__call__(x)
