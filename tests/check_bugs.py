"""Broken models, losses and loaders for the pre-training check tests (plugged in by config)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models import MLP
from workflow.data.synthetic import make_synthetic, synthetic_options

# ----------------------------------------------------------------------------- models


class SoftmaxMLP(MLP):
    """An MLP that ends in softmax: probabilities fed to a logits loss."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.softmax(super().__call__(x))


class _TwoLayer(nnx.Module):
    """Dense → relu → Dense → relu → Dense, with a hook between the hidden layers."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        d = int(np.prod(input_shape))
        self.hidden = nnx.List([nnx.Linear(d, 32, rngs=rngs), nnx.Linear(32, 32, rngs=rngs)])
        self.out = nnx.Linear(32, num_outputs, rngs=rngs)

    def between(self, h: jax.Array) -> jax.Array:
        return h

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.hidden[0](x.reshape(x.shape[0], -1)))
        h = jax.nn.relu(self.hidden[1](self.between(h)))
        return self.out(h)


class BatchAxisNormMLP(_TwoLayer):
    """Hidden activations standardized over axis 0 (the batch) instead of the features."""

    def between(self, h: jax.Array) -> jax.Array:
        return (h - h.mean(axis=0)) / (h.std(axis=0) + 1e-5)


class StopGradientMLP(_TwoLayer):
    """A stop_gradient after the first layer: it never learns."""

    def between(self, h: jax.Array) -> jax.Array:
        return jax.lax.stop_gradient(h)


class PinnedBatchNormMLP(nnx.Module):
    """BatchNorm called with use_running_average=False: batch statistics even in eval."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        d = int(np.prod(input_shape))
        self.dense = nnx.Linear(d, 32, rngs=rngs)
        self.norm = nnx.BatchNorm(32, rngs=rngs)
        self.out = nnx.Linear(32, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.norm(self.dense(x.reshape(x.shape[0], -1)), use_running_average=False)
        return self.out(jax.nn.relu(h))


class DropoutBatchNormMLP(nnx.Module):
    """Dense → BatchNorm → relu → Dropout → Dense: both layers used correctly (quiet)."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        d = int(np.prod(input_shape))
        self.dense = nnx.Linear(d, 32, rngs=rngs)
        self.norm = nnx.BatchNorm(32, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(32, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.norm(self.dense(x.reshape(x.shape[0], -1))))
        return self.out(self.dropout(h))


class PinnedDropoutMLP(nnx.Module):
    """nnx.Dropout always called deterministic: train and eval behave the same."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        d = int(np.prod(input_shape))
        self.dense = nnx.Linear(d, 32, rngs=rngs)
        self.dropout = nnx.Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(32, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.out(self.dropout(h, deterministic=True))


class TrainFlagDropoutMLP(PinnedDropoutMLP):
    """Linen's habit: a `train` argument of __call__ decides dropout; the workflow calls
    model(x), so it keeps its default and dropout never acts."""

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        h = jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))
        return self.out(self.dropout(h, deterministic=not train))


class AlwaysDropout(nnx.Module):
    """A hand-written dropout that has `deterministic` (so model.eval() sets it) but ignores it."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        self.rate = rate
        self.deterministic = False
        self.rngs = rngs.dropout.fork()

    def __call__(self, x: jax.Array) -> jax.Array:
        keep = jax.random.bernoulli(self.rngs(), 1.0 - self.rate, x.shape)
        return jnp.where(keep, x / (1.0 - self.rate), 0.0)


class AlwaysDropoutMLP(nnx.Module):
    """Dense → relu → AlwaysDropout → Dense: eval is random."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        d = int(np.prod(input_shape))
        self.dense = nnx.Linear(d, 32, rngs=rngs)
        self.dropout = AlwaysDropout(0.3, rngs=rngs)
        self.out = nnx.Linear(32, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.dropout(jax.nn.relu(self.dense(x.reshape(x.shape[0], -1)))))


class DeadReluMLP(MLP):
    """An MLP whose first hidden layer starts with bias -100 on `dead_fraction` of its units."""

    def __init__(self, input_shape, num_outputs, *, rngs, dead_fraction: float = 1.0, **kwargs):
        super().__init__(input_shape, num_outputs, rngs=rngs, **kwargs)
        bias = self.hidden[0].bias
        dead = int(round(dead_fraction * bias.shape[0]))
        bias[...] = bias[...].at[:dead].set(-100.0)


class ScaledInitMLP(MLP):
    """An MLP whose every weight matrix starts `scale` times too large (exploding init)."""

    def __init__(self, input_shape, num_outputs, *, rngs, scale: float = 100.0, **kwargs):
        super().__init__(input_shape, num_outputs, rngs=rngs, **kwargs)
        for layer in [*self.hidden, self.out]:
            layer.kernel[...] = layer.kernel[...] * scale


class HugeBiasMLP(MLP):
    """An MLP whose output bias starts at `bias` for class 0: a confidently wrong start."""

    def __init__(self, input_shape, num_outputs, *, rngs, bias: float = 20.0, **kwargs):
        super().__init__(input_shape, num_outputs, rngs=rngs, **kwargs)
        self.out.bias[...] = self.out.bias[...].at[0].set(bias)


class LogSoftmaxMLP(HugeBiasMLP):
    """An MLP that ends in log_softmax: log-probabilities where logits are expected."""

    def __init__(self, input_shape, num_outputs, *, rngs, bias: float = 0.0, **kwargs):
        super().__init__(input_shape, num_outputs, rngs=rngs, bias=bias, **kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.log_softmax(super().__call__(x))


class DeepSigmoidMLP(nnx.Module):
    """`depth` sigmoid layers: each multiplies the backward signal by <= 1/4, so it vanishes."""

    def __init__(
        self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs, depth: int = 16
    ):
        d = int(np.prod(input_shape))
        sizes = [d] + [32] * depth
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.out = nnx.Linear(32, num_outputs, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            h = jax.nn.sigmoid(layer(h))
        return self.out(h)


class HalfPrecisionLayerMLP(_TwoLayer):
    """The first layer's parameters created in bfloat16: float32 inputs silently promote them."""

    def __init__(self, input_shape: Sequence[int], num_outputs: int, *, rngs: nnx.Rngs):
        super().__init__(input_shape, num_outputs, rngs=rngs)
        d = int(np.prod(input_shape))
        self.hidden[0] = nnx.Linear(d, 32, param_dtype=jnp.bfloat16, rngs=rngs)


class IntegerOutputMLP(MLP):
    """An MLP whose logits are rounded to integers: no gradient flows through them."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.round(super().__call__(x)).astype(jnp.int32)


class Float64ConstantMLP(MLP):
    """An MLP scaled by a float64 constant: with jax_enable_x64 on, it computes in float64."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x) * jnp.asarray(1.0, dtype=jnp.float64)


# ----------------------------------------------------------------------------- losses


def broadcasting_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy with the label logit kept as (N, 1): (N,) - (N, 1) gives (N, N)."""
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)  # forgot [:, 0]
    return jax.nn.logsumexp(logits, axis=-1) - label_logit


def batch_mixing_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The (N, N) broadcast above averaged back to (N,): right shape, wrong values."""
    return jnp.mean(broadcasting_cross_entropy(logits, labels), axis=-1)


def naive_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """-log(softmax(logits)[label]): log(0) = -inf once a probability underflows."""
    probs = jax.nn.softmax(logits)
    return -jnp.log(jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0])


def class_weighted_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """A correct loss that broadcasts (N, C) against (C,) class weights on purpose."""
    weights = jnp.linspace(0.5, 1.5, logits.shape[-1])
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    return -jnp.sum(onehot * weights * jax.nn.log_softmax(logits), axis=-1)


def summed_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Returns the batch total, a scalar, instead of one loss per example."""
    return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def sqrt_norm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy plus the norm of a zero vector: finite value, NaN gradient (sqrt'(0))."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return ce + jnp.sqrt(jnp.sum(jnp.square(logits - logits), axis=-1))


def transposed_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Logits transposed to (C, N): the loss cannot even run on (N, C) outputs."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)


# ----------------------------------------------------------------------------- loaders


def _synthetic(kind: str, num_train: int, num_test: int, seed: int = 0) -> dict:
    options = {**synthetic_options(kind), "num_train": num_train, "num_test": num_test}
    return make_synthetic(options, seed=seed)


def pixel_images(num_train: int = 400, num_test: int = 100) -> dict:
    """Synthetic images mapped to raw 0..255 pixel values (never divided by 255)."""
    raw = _synthetic("image", num_train, num_test)
    lo, hi = raw["x_train"].min(), raw["x_train"].max()
    for split in ("train", "test"):
        x = (raw[f"x_{split}"] - lo) / (hi - lo)
        raw[f"x_{split}"] = np.clip(np.round(255 * x), 0, 255).astype(np.float32)
    return raw


def constant_labels(num_train: int = 400, num_test: int = 100) -> dict:
    """Synthetic tabular data whose labels were all overwritten with class 0."""
    raw = _synthetic("tabular", num_train, num_test)
    raw["y_train"] = np.zeros_like(raw["y_train"])
    raw["y_test"] = np.zeros_like(raw["y_test"])
    raw.pop("irreducible_error", None)
    return raw


def shifted_test_labels(num_train: int = 400, num_test: int = 200) -> dict:
    """Test labels in another encoding (y % 2): train has 10 classes, test only 0 and 1."""
    raw = _synthetic("tabular", num_train, num_test)
    raw["y_test"] = raw["y_test"] % 2
    raw.pop("irreducible_error", None)
    return raw


def float64_inputs(num_train: int = 400, num_test: int = 100) -> dict:
    """Synthetic tabular data whose loader returns float64 inputs (numpy's default dtype)."""
    raw = _synthetic("tabular", num_train, num_test)
    for split in ("train", "test"):
        raw[f"x_{split}"] = raw[f"x_{split}"].astype(np.float64)
    return raw


def float64_timestamps(num_train: int = 400, num_test: int = 100) -> dict:
    """float64 inputs far from zero that vary little, like Unix timestamps: the informative
    feature becomes 1.7e9 + seconds, which float32 rounds to steps of 128."""
    raw = float64_inputs(num_train, num_test)
    for split in ("train", "test"):
        raw[f"x_{split}"][:, 0] = 1.7e9 + raw[f"x_{split}"][:, 0] * 30.0
    return raw


def uint8_images(num_train: int = 400, num_test: int = 100) -> dict:
    """The raw 0..255 pixels above as uint8: integers where floats are expected."""
    raw = pixel_images(num_train, num_test)
    for split in ("train", "test"):
        raw[f"x_{split}"] = raw[f"x_{split}"].astype(np.uint8)
    return raw


def float_labels(num_train: int = 400, num_test: int = 100) -> dict:
    """Synthetic tabular data whose labels are float32 class numbers (0.0, 1.0, ...)."""
    raw = _synthetic("tabular", num_train, num_test)
    for split in ("train", "test"):
        raw[f"y_{split}"] = raw[f"y_{split}"].astype(np.float32)
    return raw
