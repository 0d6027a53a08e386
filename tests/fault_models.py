"""Models with a fault on purpose: slowed down, so a test can kill a run in the middle of its
training; good early and bad at the end, so a search must take a trial where it was good."""

import time

import jax
import jax.numpy as jnp
from flax import nnx

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


class TrainingSteps(nnx.Variable):
    """How many training steps a model has taken (state, not a parameter)."""


class LateCollapseMLP(mlp.MLP):
    """The registered MLP whose eval-mode outputs turn to noise after COLLAPSE_AFTER training
    steps: a run that is good early and bad at its end, as a high learning rate's late collapse
    (the search must take such a trial where it was good)."""

    COLLAPSE_AFTER = 30

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = TrainingSteps(jnp.zeros((), jnp.int32))
        self.deterministic = False  # set by model.eval()/.train()

    def __call__(self, x: jax.Array) -> jax.Array:
        """The MLP's outputs; in eval mode, once collapsed, a fixed mix of the inputs instead."""
        logits = super().__call__(x)
        if not self.deterministic:
            self.steps.value = self.steps.value + 1
            return logits
        noise = jnp.sin(
            37.0 * jnp.sum(x, axis=-1, keepdims=True) * jnp.arange(1, logits.shape[-1] + 1)
        )
        return jnp.where(self.steps.value > self.COLLAPSE_AFTER, 10.0 * noise, logits)
