"""Models as a user writes them: only `flax.nnx` layers, in the style of the Flax docs.

Each is built as the workflow builds every model, `Class(input_shape, num_outputs, *, rngs)`,
so it plugs in unchanged as `--config.model.name=benchmarks.user_models:FlaxCNN`. They are the
user-style models of benchmarks/train_throughput.py and of the tests that hold the trainer's
loop forms equal (tests/test_loop_form.py).

    FlaxCNN   the Flax MNIST example's CNN: two 3x3 `nnx.Conv` (32, 64 channels), each followed
              by relu and 2x2 average pooling, then Linear 256 and the output layer
    FlaxMLP   the Flax NNX basics' MLP: Linear, BatchNorm, Dropout, gelu, Linear
    FlaxLSTM  `nnx.RNN` over an `nnx.LSTMCell`, read out at the last time step
"""

from collections.abc import Sequence
from functools import partial

import jax
from flax import nnx


class FlaxCNN(nnx.Module):
    """The Flax MNIST example's CNN on (H, W, C) images (28x28x1 there)."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        height, width, channels = input_shape
        self.conv1 = nnx.Conv(channels, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear((height // 4) * (width // 4) * 64, 256, rngs=rngs)
        self.linear2 = nnx.Linear(256, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.avg_pool(nnx.relu(self.conv1(x)))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)  # flatten
        x = nnx.relu(self.linear1(x))
        return self.linear2(x)


class FlaxMLP(nnx.Module):
    """The Flax NNX basics' MLP over the flattened input, with BatchNorm and Dropout."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int = 128,
    ):
        features = 1
        for size in input_shape:
            features *= size
        self.linear1 = nnx.Linear(features, hidden_size, rngs=rngs)
        self.dropout = nnx.Dropout(rate=0.1, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden_size, rngs=rngs)
        self.linear2 = nnx.Linear(hidden_size, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        x = nnx.gelu(self.dropout(self.bn(self.linear1(x))))
        return self.linear2(x)


class FlaxLSTM(nnx.Module):
    """`nnx.RNN` over an `nnx.LSTMCell` on (T, F) sequences, read out at the last step."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int = 32,
    ):
        self.rnn = nnx.RNN(nnx.LSTMCell(input_shape[-1], hidden_size, rngs=rngs))
        self.linear = nnx.Linear(hidden_size, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.linear(self.rnn(x)[:, -1])
