"""LeNet-like CNN for (H, W, C) images of any size (pools are skipped on tiny feature maps).

conv_impl picks the convolution formulation (see models.layers): 'auto' is im2col on CPU.
"""

from collections.abc import Sequence

import jax
from flax import nnx

from models import validate
from models.layers import Conv2D, resolve_conv_impl
from models.mlp import NORMS, head_init, make_norm


def _pool_window(size: int) -> int:
    """2 if halving `size` keeps it at least 2, else 1 (no pooling along that axis)."""
    return 2 if size // 2 >= 2 else 1


class LeNet(nnx.Module):
    """(Conv 5x5 SAME → [norm] → relu → maxpool 2) per feature count → flatten → Dense layers
    (→ relu → Dropout) → logits.

    norm: "none", "batch" (BatchNorm per channel) or "layer" (LayerNorm over H, W, C) after each
    convolution; dropout_rate: Dropout after each hidden Dense layer, i.e. before the next Dense.
    """

    # How it grows (models/__init__.py); the dense sizes come first in a remedy's change.
    SIZE_OPTIONS = ("hidden_sizes", "features")

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        """The CIFAR ResNets, the smallest first (models/__init__.py)."""
        return ("resnet_small", "resnet20")

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        features: Sequence[int] = (6, 16),
        hidden_sizes: Sequence[int] = (120, 84),
        dropout_rate: float = 0.0,
        conv_impl: str = "auto",
        norm: str = "none",
    ) -> None:
        height, width, channels = validate.input_shape(input_shape, "lenet", 3, "(H, W, C)")
        num_outputs = validate.positive_int(num_outputs, "num_outputs")
        self.features = validate.int_tuple(features, "features")
        self.hidden_sizes = validate.int_tuple(hidden_sizes, "hidden_sizes")
        self.dropout_rate = validate.dropout_rate(dropout_rate)
        self.norm = validate.choice(norm, "norm", NORMS)
        # Resolved here ("auto" → backend choice) so equal models have equal graphdefs.
        self.conv_impl = resolve_conv_impl(conv_impl)
        convs, pools = [], []
        for f in self.features:
            convs.append(Conv2D(channels, f, (5, 5), conv_impl=self.conv_impl, rngs=rngs))
            window = (_pool_window(height), _pool_window(width))
            pools.append(window)
            height, width, channels = height // window[0], width // window[1], f
        self.convs = nnx.List(convs)
        self.pools = tuple(pools)
        sizes = (height * width * channels, *self.hidden_sizes)
        self.dense = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        # Only a model that uses dropout holds a Dropout and its RNG stream, so the default
        # model's split state has no RNG variables and train()/eval() leave it unchanged.
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs) if self.dropout_rate else None
        self.out = nnx.Linear(sizes[-1], num_outputs, rngs=rngs, **head_init(self.norm))
        self.norms = (
            nnx.List([make_norm(self.norm, f, rngs, spatial_dims=2) for f in self.features])
            if self.norm != "none"
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, H, W, C) to logits (batch, num_outputs)."""
        for i, (conv, window) in enumerate(zip(self.convs, self.pools, strict=True)):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = jax.nn.relu(x)
            if window != (1, 1):
                x = nnx.max_pool(x, window_shape=window, strides=window)
        x = x.reshape(x.shape[0], -1)
        for layer in self.dense:
            x = jax.nn.relu(layer(x))
            if self.dropout is not None:
                x = self.dropout(x)
        return self.out(x)
