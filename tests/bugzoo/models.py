"""Models of the zoo as users write them: only `flax.nnx` layers, in the style of the Flax docs.

Each is built as the workflow builds every model, `Class(input_shape, num_outputs, *, rngs)`.
The clean ones are correct; the broken ones carry one fault a user really writes, named in its
docstring.
"""

import math
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
        self.linear1 = nnx.Linear(math.prod(input_shape), hidden_size, rngs=rngs)
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


# ----------------------------------------------------------------------------- randomness
# Dropout written by hand, as users port it from other frameworks: `keep` share of the units,
# rescaled by 1/keep, in train mode only (`deterministic` is set by model.train()/model.eval()).


def hand_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
    """Inverted dropout with an explicit key."""
    keep = 1.0 - rate
    return jnp.where(jax.random.bernoulli(key, keep, x.shape), x / keep, 0.0)


class SplitKeyDropoutMLP(UserMLP):
    """Hand-written dropout after both hidden layers, done right: a new key per call from the
    model's nnx.Rngs, split into one key per layer."""

    rate = 0.3

    def __init__(self, input_shape, num_outputs, *, rngs: nnx.Rngs, **kwargs):
        super().__init__(input_shape, num_outputs, rngs=rngs, **kwargs)
        self.rngs = rngs
        self.deterministic = False

    def keys(self) -> tuple[jax.Array, jax.Array]:
        return tuple(jax.random.split(self.rngs.dropout()))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        h1 = nnx.relu(self.linear1(x))
        if not self.deterministic:
            key1, key2 = self.keys()
            h1 = hand_dropout(h1, self.rate, key1)
        h2 = nnx.relu(self.linear2(h1))
        if not self.deterministic:
            h2 = hand_dropout(h2, self.rate, key2)
        return self.linear3(h2)


class SharedKeyDropoutMLP(SplitKeyDropoutMLP):
    """Bug: one key drawn per call but passed to both dropout layers unsplit: both layers drop
    the same units (the hidden layers are equally wide)."""

    def keys(self) -> tuple[jax.Array, jax.Array]:
        key = self.rngs.dropout()
        return key, key


class FixedKeyDropoutMLP(SplitKeyDropoutMLP):
    """Bug: the dropout keys drawn once, in __init__, and reused at every call: the same units
    are dropped at every step of training."""

    def __init__(self, input_shape, num_outputs, *, rngs: nnx.Rngs, **kwargs):
        super().__init__(input_shape, num_outputs, rngs=rngs, **kwargs)
        self.dropout_key = nnx.Variable(rngs.dropout())  # NNX wants arrays in Variables

    def keys(self) -> tuple[jax.Array, jax.Array]:
        return tuple(jax.random.split(self.dropout_key[...]))


class TwinRngsDropoutMLP(UserMLP):
    """Bug: each nnx.Dropout given its own `nnx.Rngs(dropout=0)`: their counters advance in
    step, so both layers draw the same mask at every step."""

    def __init__(self, input_shape, num_outputs, *, rngs: nnx.Rngs, **kwargs):
        super().__init__(input_shape, num_outputs, rngs=rngs, **kwargs)
        self.dropout1 = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=0))
        self.dropout2 = nnx.Dropout(0.3, rngs=nnx.Rngs(dropout=0))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        h = self.dropout1(nnx.relu(self.linear1(x)))
        return self.linear3(self.dropout2(nnx.relu(self.linear2(h))))


# ----------------------------------------------------------------------------- capacity


class HighDropoutMLP(UserMLP):
    """Bug: nnx.Dropout(0.9) after each hidden layer (a keep probability of 0.1 passed as the
    rate, which is the share dropped)."""

    def __init__(self, input_shape, num_outputs, *, rngs: nnx.Rngs, **kwargs):
        super().__init__(input_shape, num_outputs, rngs=rngs, **kwargs)
        self.dropout = nnx.Dropout(0.9, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        h = self.dropout(nnx.relu(self.linear1(x)))
        return self.linear3(self.dropout(nnx.relu(self.linear2(h))))


class BatchNormMLP(nnx.Module):
    """An MLP of three hidden Linear layers, each followed by nnx.BatchNorm and relu, as the
    Flax docs place BatchNorm (a correct model; at batch size 2, the zoo's
    batchnorm_batch_size_2)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int = 64,
        depth: int = 3,
    ):
        sizes = [math.prod(input_shape)] + [hidden_size] * depth
        self.linears = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.norms = nnx.List([nnx.BatchNorm(hidden_size, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(hidden_size, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for linear, norm in zip(self.linears, self.norms, strict=True):
            x = nnx.relu(norm(linear(x)))
        return self.out(x)


class TinyMLP(UserMLP):
    """Not a bug: an MLP two units wide, far too small for ten classes (a true underfit)."""

    def __init__(self, input_shape, num_outputs, *, rngs: nnx.Rngs, hidden_size: int = 2):
        super().__init__(input_shape, num_outputs, rngs=rngs, hidden_size=hidden_size)


# ----------------------------------------------------------------------------- token ids
# Token ids (N, T, 1) of tests/bugzoo/pieces.py:token_topics, whose vocabulary holds
# VOCAB_SIZE ids (padding and unknown included).
VOCAB_SIZE = 202


class TokenBagClassifier(nnx.Module):
    """A bag-of-embeddings text classifier: nnx.Embed of the vocabulary, mean over the
    sequence, a hidden layer and the output layer (correct when `vocab_size` is the data's)."""

    vocab_size = VOCAB_SIZE

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(self.vocab_size, 32, rngs=rngs)
        self.hidden = nnx.Linear(32, 64, rngs=rngs)
        self.out = nnx.Linear(64, num_outputs, rngs=rngs)

    def embed_ids(self, ids: jax.Array) -> jax.Array:
        return self.embed(ids)

    def __call__(self, x: jax.Array) -> jax.Array:
        vectors = self.embed_ids(x[..., 0].astype(jnp.int32))  # (N, T, 32)
        return self.out(nnx.relu(self.hidden(vectors.mean(axis=1))))


class SmallEmbedTokenClassifier(TokenBagClassifier):
    """Bug: the embedding table sized 100 while the vocabulary holds 202 ids (a vocabulary
    size from another run); nnx.Embed's jnp.take fills NaN for the ids past it."""

    vocab_size = 100


class ClampedTableTokenClassifier(TokenBagClassifier):
    """Bug: a hand-written embedding table of 128 rows (a constant from another dataset)
    indexed as table[ids]: every id past it is clamped to the last row, silently."""

    def __init__(self, input_shape, num_outputs, *, rngs: nnx.Rngs):
        self.table = nnx.Param(jax.random.normal(rngs.params(), (128, 32)) * 0.1)
        self.hidden = nnx.Linear(32, 64, rngs=rngs)
        self.out = nnx.Linear(64, num_outputs, rngs=rngs)

    def embed_ids(self, ids: jax.Array) -> jax.Array:
        return self.table[...][ids]
