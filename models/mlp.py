"""Multi-layer perceptron: the 'start simple' model for any input (it is flattened)."""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models import _checks

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}


class MLP(nnx.Module):
    """Flatten → (Dense → activation → Dropout) per hidden size → Dense to logits."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        hidden_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        dropout_rate: float = 0.0,
    ) -> None:
        shape = _checks.input_shape(input_shape, "mlp", None, "a tuple")
        num_outputs = _checks.positive_int(num_outputs, "num_outputs")
        self.hidden_sizes = _checks.int_tuple(hidden_sizes, "hidden_sizes")
        self.activation = _checks.choice(activation, "activation", sorted(ACTIVATIONS))
        self.dropout_rate = _checks.dropout_rate(dropout_rate)
        self._act = ACTIVATIONS[self.activation]
        sizes = (math.prod(shape), *self.hidden_sizes)
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        # Only a model that uses dropout holds a Dropout and its RNG stream, so the default
        # model's split state has no RNG variables and train()/eval() leave it unchanged.
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs) if self.dropout_rate else None
        self.out = nnx.Linear(sizes[-1], num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, *input_shape) to logits (batch, num_outputs)."""
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = self._act(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.out(x)
