"""Models of the zoo as users write them: only `flax.nnx` layers, in the style of the Flax docs.

Each is built as the workflow builds every model, `Class(input_shape, num_outputs, *, rngs)`.
The clean ones are correct; the broken ones carry one fault a user really writes, named in its
docstring.
"""

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx


class Conv1DClassifier(nnx.Module):
    """A 1-D conv classifier on (T, C) sequences: two conv + relu + max-pool blocks, then a
    global average over time and the output layer."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        channels = input_shape[-1]
        self.conv1 = nnx.Conv(channels, 32, kernel_size=(5,), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(5,), rngs=rngs)
        self.pool = partial(nnx.max_pool, window_shape=(2,), strides=(2,))
        self.linear = nnx.Linear(64, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.pool(nnx.relu(self.conv1(x)))
        x = self.pool(nnx.relu(self.conv2(x)))
        return self.linear(x.mean(axis=1))


class FlatConv1D(nnx.Module):
    """A 1-D conv classifier that flattens its features (no pooling) into the output layer."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        length, channels = input_shape
        self.conv1 = nnx.Conv(channels, 16, kernel_size=(3,), rngs=rngs)
        self.conv2 = nnx.Conv(16, 16, kernel_size=(3,), rngs=rngs)
        self.linear = nnx.Linear(length * 16, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.linear(x.reshape(x.shape[0], -1))


class UserMLP(nnx.Module):
    """The Flax NNX basics' MLP without BatchNorm and Dropout: Linear, relu, Linear, relu,
    Linear; `head` is applied to the outputs (identity: a correct model)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int = 64,
    ):
        features = 1
        for size in input_shape:
            features *= size
        self.linear1 = nnx.Linear(features, hidden_size, rngs=rngs)
        self.linear2 = nnx.Linear(hidden_size, hidden_size, rngs=rngs)
        self.linear3 = nnx.Linear(hidden_size, num_outputs, rngs=rngs)

    def head(self, logits: jax.Array) -> jax.Array:
        return logits

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.linear2(nnx.relu(self.linear1(x))))
        return self.head(self.linear3(x))


class SigmoidHeadMLP(UserMLP):
    """Bug: a sigmoid on the outputs, fed to the logits cross-entropy (a multi-label habit)."""

    def head(self, logits: jax.Array) -> jax.Array:
        return nnx.sigmoid(logits)


class TanhHeadMLP(UserMLP):
    """Bug: a tanh on the outputs, fed to the logits cross-entropy."""

    def head(self, logits: jax.Array) -> jax.Array:
        return nnx.tanh(logits)


class DeepLinearMLP(UserMLP):
    """Bug: the activations were forgotten, so three Linear layers collapse into one linear map."""

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        return self.linear3(self.linear2(self.linear1(x)))


class ReluLogitsMLP(UserMLP):
    """Bug: a relu after the output layer, so negative logits are clipped to 0 (no gradient)."""

    def head(self, logits: jax.Array) -> jax.Array:
        return nnx.relu(logits)


class DropoutBatchNormCNN(nnx.Module):
    """A small CNN with BatchNorm and Dropout used as the Flax docs use them (the train/eval mode
    set by the workflow): conv, BatchNorm, relu, pool; Dropout before the output layer."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        height, width, channels = input_shape
        self.conv = nnx.Conv(channels, 16, kernel_size=(3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(16, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.linear = nnx.Linear((height // 2) * (width // 2) * 16, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.avg_pool(nnx.relu(self.bn(self.conv(x))), window_shape=(2, 2), strides=(2, 2))
        return self.linear(self.dropout(x.reshape(x.shape[0], -1)))


class FlaxMnistCNN(nnx.Module):
    """The Flax MNIST example's CNN exactly as the docs write it: its first Linear layer takes
    7 * 7 * 64 = 3136 features, so it accepts 28x28 images only."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
        self.linear2 = nnx.Linear(256, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.avg_pool(nnx.relu(self.conv1(x)))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.linear1(x))
        return self.linear2(x)


class Float16MLP(UserMLP):
    """Bug: the forward pass cast to float16 by hand (a mixed-precision attempt) on inputs in
    the thousands (raw counts: the pixels times 1000 here): the first layer's activations pass
    float16's largest value, 65504, and become inf."""

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1).astype(jnp.float16) * 1000
        h = nnx.relu(x @ self.linear1.kernel[...].astype(jnp.float16))
        h = nnx.relu(h @ self.linear2.kernel[...].astype(jnp.float16))
        return (h @ self.linear3.kernel[...].astype(jnp.float16)).astype(jnp.float32)
