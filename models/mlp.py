"""Multi-layer perceptron: the 'start simple' model for any input (it is flattened)."""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models import validate

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}

NORMS = ("none", "batch", "layer")
# Running averages with a ~10-step horizon (PyTorch's default), not Flax's 0.99 (~100 steps):
# the workflow's short runs (debug, trials of a few epochs) would evaluate with statistics that
# still remember the initialization.
BATCH_NORM_MOMENTUM = 0.9


def make_norm(norm: str, num_features: int, rngs: nnx.Rngs, spatial_dims: int = 0) -> nnx.Module:
    """The normalization layer `norm` names ("batch" or "layer") over (batch, *spatial, features).

    BatchNorm normalizes each feature over the batch and spatial axes (running averages in eval
    mode); LayerNorm normalizes each example over its spatial and feature axes, as Ba et al.
    (2016) normalize a whole layer, with a scale and bias per feature. Shared by the zoo.
    """
    if norm == "batch":
        return nnx.BatchNorm(num_features, momentum=BATCH_NORM_MOMENTUM, rngs=rngs)
    if norm == "layer":
        axes = tuple(range(-spatial_dims - 1, 0))
        return nnx.LayerNorm(num_features, reduction_axes=axes, feature_axes=-1, rngs=rngs)
    raise ValueError(f"no normalization layer for norm={norm!r}")


def head_init(norm: str) -> dict:
    """Keyword arguments of the output Dense: a smaller initial scale behind normalized features.

    Normalized (unit-variance) features into a LeCun-initialized head give logits of std ~1 and
    an initial loss well above ln C, which the debug stage reports as `initial_loss_off`; a
    tenth of the variance keeps it near ln C. The default (norm="none") keeps Flax's init.
    """
    if norm == "none":
        return {}
    return {"kernel_init": jax.nn.initializers.variance_scaling(0.1, "fan_in", "truncated_normal")}


class MLP(nnx.Module):
    """Flatten → (Dense → [norm] → activation → Dropout) per hidden size → Dense to logits.

    norm: "none", "batch" (BatchNorm) or "layer" (LayerNorm) after each hidden Dense.
    """

    # How it grows (models/__init__.py): wider and deeper hidden layers.
    SIZE_OPTIONS = ("hidden_sizes",)
    DEPTH_OPTION = "hidden_sizes"

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        hidden_sizes: Sequence[int] = (100,),
        activation: str = "relu",
        dropout_rate: float = 0.0,
        norm: str = "none",
    ) -> None:
        shape = validate.input_shape(input_shape, "mlp", None, "a tuple")
        num_outputs = validate.positive_int(num_outputs, "num_outputs")
        self.hidden_sizes = validate.int_tuple(hidden_sizes, "hidden_sizes")
        self.activation = validate.choice(activation, "activation", sorted(ACTIVATIONS))
        self.dropout_rate = validate.dropout_rate(dropout_rate)
        self.norm = validate.choice(norm, "norm", NORMS)
        self._act = ACTIVATIONS[self.activation]
        sizes = (math.prod(shape), *self.hidden_sizes)
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        # Only a model that uses dropout holds a Dropout and its RNG stream, so the default
        # model's split state has no RNG variables and train()/eval() leave it unchanged.
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs) if self.dropout_rate else None
        self.out = nnx.Linear(sizes[-1], num_outputs, rngs=rngs, **head_init(self.norm))
        self.norms = (
            nnx.List([make_norm(self.norm, b, rngs) for b in self.hidden_sizes])
            if self.norm != "none"
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, *input_shape) to logits (batch, num_outputs)."""
        x = x.reshape(x.shape[0], -1)
        for i, layer in enumerate(self.hidden):
            x = layer(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = self._act(x)
            if self.dropout is not None:
                x = self.dropout(x)
        return self.out(x)
