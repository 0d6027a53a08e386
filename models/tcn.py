"""Temporal CNN for (T, F) sequences; defaults reproduce the MNIST-1D paper's CNN on T=40."""

from collections.abc import Sequence

import jax
from flax import nnx

from models import validate
from models.layers import Conv1D, conv_output_length, resolve_conv_impl
from models.mlp import NORMS, head_init, make_norm
from models.validate import ModelOptionError


class TCN(nnx.Module):
    """(Conv1D → [norm] → relu) per layer → flatten → Dropout → Dense to logits.

    norm: "none", "batch" (BatchNorm per channel) or "layer" (LayerNorm over T, C) after each
    convolution; dropout_rate: Dropout on the flattened features of the last convolution.
    """

    SIZE_OPTIONS = ("channels",)  # how it grows: models/__init__.py

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        """WaveNet, then the Transformer, as from the LSTM (models/lstm.py, models/__init__.py)."""
        return ("wavenet", "transformer")

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        channels: Sequence[int] = (25, 25, 25),
        kernel_sizes: Sequence[int] = (5, 3, 3),
        strides: Sequence[int] = (2, 2, 2),
        padding: int = 1,
        conv_impl: str = "auto",
        norm: str = "none",
        dropout_rate: float = 0.0,
    ) -> None:
        length, features = validate.input_shape(input_shape, "tcn", 2, "(T, F)")
        num_outputs = validate.positive_int(num_outputs, "num_outputs")
        self.channels = validate.int_tuple(channels, "channels", allow_empty=False)
        self.kernel_sizes = validate.int_tuple(kernel_sizes, "kernel_sizes", allow_empty=False)
        self.strides = validate.int_tuple(strides, "strides", allow_empty=False)
        if not len(self.channels) == len(self.kernel_sizes) == len(self.strides):
            raise ModelOptionError(
                f"channels={self.channels}, kernel_sizes={self.kernel_sizes} and "
                f"strides={self.strides} are invalid; they must have the same length"
            )
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ModelOptionError(f"padding={padding!r} is invalid; expected an integer >= 0")
        self.padding = padding
        self.norm = validate.choice(norm, "norm", NORMS)
        self.dropout_rate = validate.dropout_rate(dropout_rate)
        # Resolved here ("auto" → backend choice) so equal models have equal graphdefs.
        self.conv_impl = resolve_conv_impl(conv_impl)
        convs, lengths = [], [length]
        for cout, k, s in zip(self.channels, self.kernel_sizes, self.strides, strict=True):
            out_len = conv_output_length(lengths[-1], k, s, (padding, padding))
            if out_len < 1:
                raise ModelOptionError(
                    f"input_shape={tuple(input_shape)} is too short for kernel_sizes="
                    f"{self.kernel_sizes}, strides={self.strides}, padding={padding}; "
                    f"lengths would be {tuple(lengths)} then {out_len}"
                )
            convs.append(
                Conv1D(
                    features,
                    cout,
                    k,
                    stride=s,
                    padding=padding,
                    conv_impl=self.conv_impl,
                    rngs=rngs,
                )
            )
            lengths.append(out_len)
            features = cout
        self.lengths = tuple(lengths)
        self.convs = nnx.List(convs)
        self.out = nnx.Linear(
            lengths[-1] * features, num_outputs, rngs=rngs, **head_init(self.norm)
        )
        self.norms = (
            nnx.List([make_norm(self.norm, c, rngs, spatial_dims=1) for c in self.channels])
            if self.norm != "none"
            else None
        )
        # Only a model that uses dropout holds a Dropout and its RNG stream, so the default
        # model's split state has no RNG variables and train()/eval() leave it unchanged.
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs) if self.dropout_rate else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, T, F) to logits (batch, num_outputs)."""
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = jax.nn.relu(x)
        x = x.reshape(x.shape[0], -1)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.out(x)
