"""CIFAR-style ResNet (He et al. 2016, section 4.2) for (H, W, C) images of any size.

A 3x3 stem conv, then 3 stages of n basic blocks with width, 2*width and 4*width filters (the
paper: 16/32/64), stride 2 at the start of stages 2 and 3, global average pooling, optional
dropout, and a dense layer to logits: depth = 6n + 2 layers (ResNet-20/32/56 for n = 3/5/9).

Shortcuts are the paper's option A: identity, subsampled by 2 and zero-padded in channels where a
stage starts. It is what the paper uses for its CIFAR results, it adds no parameters (ResNet-20 on
32x32x3 has the paper's 0.27M), and the shortcut stays a parameter-free identity path, so the
gradient reaches early layers unchanged; option B's 1x1 projections add parameters (and convs to
compile) for a gain the paper found small (table 3, on ImageNet).

`norm` switches the normalization: "batch" (the paper; statistics over the batch in train mode,
running averages after model.eval()), "layer" (per example over H, W and C, so no train/eval
difference) or "none". conv_impl picks the convolution formulation (see models.layers): on the
CPU, resnet_small trains on 8x8 digits far faster with im2col than with lax.conv.
"""

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from models import validate
from models.layers import conv_im2col, resolve_conv_impl
from models.validate import ModelOptionError

NORMS = ("batch", "layer", "none")

# PyTorch's BatchNorm momentum 0.1 (Flax counts the other way): the running averages catch up
# within tens of steps, so the workflow's short runs evaluate with settled statistics, where
# Flax's 0.99 would still be mostly the initial (0, 1) after a few hundred steps.
BATCH_NORM_MOMENTUM = 0.9
NORM_EPSILON = 1e-5


def _normal_init(gain: float) -> Callable[..., jax.Array]:
    """Initializer N(0, gain / fan_in) for a kernel whose last axis is the output (He: gain 2)."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        std = math.sqrt(gain / math.prod(shape[:-1]))
        # Drawn flat and reshaped: the same values as jax.random.normal(key, shape), but eager
        # initialization compiles one draw per shape, and on the CPU a 4-d draw compiles far
        # slower than a flat one.
        flat = jax.random.normal(key, (math.prod(shape),), dtype)
        return std * flat.reshape(tuple(shape))

    return init


def _depth(value: object) -> int:
    """Return `value` if it is a valid CIFAR ResNet depth 6n + 2 (n >= 1), else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 8 or (value - 2) % 6:
        raise ModelOptionError(
            f"depth={value!r} is invalid for model 'resnet'; expected 6n + 2 for an integer "
            "n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)"
        )
    return value


class Conv3x3(nnx.Module):
    """3x3 convolution with padding 1 and stride 1 or 2 over (batch, H, W, cin), He-initialized."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        stride: int = 1,
        use_bias: bool = True,
        conv_impl: str = "auto",
    ) -> None:
        self.stride = stride
        self.conv_impl = resolve_conv_impl(conv_impl)
        # He et al.'s Gaussian N(0, 2 / fan_in), fan_in = 9 * cin: the init for ReLU networks.
        shape = (3, 3, in_features, out_features)
        self.kernel = nnx.Param(_normal_init(2.0)(rngs.params(), shape))
        # A bias right before a normalization layer is cancelled by its mean subtraction and
        # would get zero gradient, so only the unnormalized model has one.
        self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, H, W, cin) to (batch, ceil(H / stride), ceil(W / stride), cout)."""
        kernel = self.kernel[...]
        # Mixed precision: a float32 input (after a float32-statistics BatchNorm) meets a
        # bfloat16 kernel; the conv runs in the kernel's (compute) dtype.
        x = x.astype(kernel.dtype)
        strides, padding = (self.stride, self.stride), ((1, 1), (1, 1))
        if self.conv_impl == "xla":
            y = jax.lax.conv_general_dilated(
                x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            y = conv_im2col(x, kernel, strides, padding)
        return y if self.bias is None else y + self.bias[...]


def _norm_layer(norm: str, features: int, rngs: nnx.Rngs) -> nnx.Module | None:
    """The normalization after a conv: BatchNorm, LayerNorm over (H, W, C), or None."""
    if norm == "batch":
        return nnx.BatchNorm(
            features, momentum=BATCH_NORM_MOMENTUM, epsilon=NORM_EPSILON, rngs=rngs
        )
    if norm == "layer":
        # Statistics over the whole feature map of one example, scale and shift per channel.
        return nnx.LayerNorm(
            features,
            reduction_axes=(-3, -2, -1),
            feature_axes=-1,
            epsilon=NORM_EPSILON,
            rngs=rngs,
        )
    return None


class BasicBlock(nnx.Module):
    """conv3x3 → norm → relu → conv3x3 → norm, plus the option-A shortcut, → relu."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rngs: nnx.Rngs,
        stride: int = 1,
        norm: str = "batch",
        conv_impl: str = "auto",
    ) -> None:
        use_bias = norm == "none"
        self.conv1 = Conv3x3(
            in_features,
            out_features,
            stride=stride,
            use_bias=use_bias,
            conv_impl=conv_impl,
            rngs=rngs,
        )
        self.norm1 = _norm_layer(norm, out_features, rngs)
        self.conv2 = Conv3x3(
            out_features, out_features, use_bias=use_bias, conv_impl=conv_impl, rngs=rngs
        )
        self.norm2 = _norm_layer(norm, out_features, rngs)
        self.stride = stride
        self.extra_channels = out_features - in_features

    def shortcut(self, x: jax.Array) -> jax.Array:
        """Option A: identity, subsampled by the stride and zero-padded to the output channels."""
        if self.stride > 1:
            # Picks the positions the strided, padding-1 conv is centred on: ceil(H / stride).
            x = x[:, :: self.stride, :: self.stride, :]
        if self.extra_channels:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.extra_channels)))
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, H, W, cin) to (batch, ceil(H / stride), ceil(W / stride), cout)."""
        y = self.conv1(x)
        if self.norm1 is not None:
            y = self.norm1(y)
        y = self.conv2(jax.nn.relu(y))
        if self.norm2 is not None:
            y = self.norm2(y)
        return jax.nn.relu(y + self.shortcut(x))


class ResNet(nnx.Module):
    """CIFAR ResNet: conv3x3 stem → 3 stages of (depth - 2) / 6 basic blocks → pool → logits."""

    SIZE_OPTIONS = ("width",)  # how it grows: models/__init__.py

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        """ResNet-32 (models/__init__.py)."""
        return ("resnet32",)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        depth: int = 20,
        width: int = 16,
        norm: str = "batch",
        dropout_rate: float = 0.0,
        conv_impl: str = "auto",
    ) -> None:
        _, _, channels = validate.input_shape(input_shape, "resnet", 3, "(H, W, C)")
        num_outputs = validate.positive_int(num_outputs, "num_outputs")
        self.depth = _depth(depth)
        self.width = validate.positive_int(width, "width")
        self.norm = validate.choice(norm, "norm", NORMS)
        self.dropout_rate = validate.dropout_rate(dropout_rate)
        # Resolved here ("auto" → backend choice) so equal models have equal graphdefs.
        self.conv_impl = resolve_conv_impl(conv_impl)
        self.stem = Conv3x3(
            channels,
            self.width,
            use_bias=self.norm == "none",
            conv_impl=self.conv_impl,
            rngs=rngs,
        )
        self.stem_norm = _norm_layer(self.norm, self.width, rngs)
        blocks, features = [], self.width
        for stage in range(3):
            out_features = self.width * 2**stage
            for i in range((self.depth - 2) // 6):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(
                    BasicBlock(
                        features,
                        out_features,
                        stride=stride,
                        norm=self.norm,
                        conv_impl=self.conv_impl,
                        rngs=rngs,
                    )
                )
                features = out_features
        self.blocks = nnx.List(blocks)
        # Only a model that uses dropout holds a Dropout and its RNG stream (as in LeNet), so the
        # default model's non-parameter state is just the BatchNorm statistics.
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs) if self.dropout_rate else None
        # LeCun normal, as nnx.Linear's default, but untruncated: fast to initialize (see above).
        self.out = nnx.Linear(features, num_outputs, kernel_init=_normal_init(1.0), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, H, W, C) to logits (batch, num_outputs)."""
        x = self.stem(x)
        if self.stem_norm is not None:
            x = self.stem_norm(x)
        x = jax.nn.relu(x)
        for block in self.blocks:
            x = block(x)
        x = jnp.mean(x, axis=(1, 2))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.out(x)


def _preset(**defaults: Any) -> Callable[[type[ResNet]], type[ResNet]]:
    """Class decorator: a ResNet subclass whose signature carries other keyword defaults.

    The config reads a model's options from its constructor's signature
    (config_lib.model_config), so a preset must change the defaults there, not only at call time.
    """
    signature = inspect.signature(ResNet.__init__)
    signature = signature.replace(
        parameters=[
            p.replace(default=defaults[p.name]) if p.name in defaults else p
            for p in signature.parameters.values()
        ]
    )

    def decorate(cls: type[ResNet]) -> type[ResNet]:
        def __init__(
            self: ResNet,
            input_shape: Sequence[int],
            num_outputs: int,
            *,
            rngs: nnx.Rngs,
            **kwargs: Any,
        ) -> None:
            ResNet.__init__(self, input_shape, num_outputs, rngs=rngs, **{**defaults, **kwargs})

        __init__.__signature__ = signature  # type: ignore[attr-defined]
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__
        return cls

    return decorate


@_preset(depth=20)
class ResNet20(ResNet):
    """ResNet-20: 3 blocks per stage; 0.27M parameters on CIFAR-10."""


@_preset(depth=32)
class ResNet32(ResNet):
    """ResNet-32: 5 blocks per stage; 0.46M parameters on CIFAR-10."""

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        """ResNet-56 (models/__init__.py)."""
        return ("resnet56",)


@_preset(depth=56)
class ResNet56(ResNet):
    """ResNet-56: 9 blocks per stage; 0.85M parameters on CIFAR-10."""

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        """None: the deepest preset (models/__init__.py)."""
        return ()


@_preset(depth=8, width=8)
class ResNetSmall(ResNet):
    """ResNet-8 with 8/16/32 filters for tiny images such as 8x8 digits (spatial 8 → 4 → 2)."""

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        """ResNet-20 for images larger than 16 px (models/__init__.py)."""
        # An 8x8 image is too small for the CIFAR ResNet-20's two downsamplings.
        return ("resnet20",) if min(input_shape[:2]) > 16 else ()
