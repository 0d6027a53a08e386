"""Convolution layers with an im2col formulation, because XLA's CPU convolution is slow here.

On the CPU the MNIST-1D CNN and LeNet on 8x8 digits train several times faster as patches + one
matmul than through lax.conv; on accelerators lax.conv is the better choice, so conv_impl='auto'
picks per backend.
"""

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from models import validate

CONV_IMPLS = ("auto", "xla", "im2col")

# lax.conv dimension-number strings by number of spatial dims.
_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def resolve_conv_impl(conv_impl: str) -> str:
    """'auto' → 'im2col' on CPU, 'xla' elsewhere; 'xla' and 'im2col' pass through."""
    conv_impl = validate.choice(conv_impl, "conv_impl", CONV_IMPLS)
    if conv_impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return conv_impl


def conv_output_length(length: int, kernel_size: int, stride: int, padding: tuple[int, int]) -> int:
    """Output length of a convolution along one axis with (low, high) zero padding."""
    return (length + padding[0] + padding[1] - kernel_size) // stride + 1


# Jitted so an eager call (debugging, notebooks) compiles the tap slices as one program
# instead of one small program per slice; inside an outer jit it is simply inlined.
@partial(jax.jit, static_argnums=(2, 3))
def conv_im2col(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, ...],
    padding: tuple[tuple[int, int], ...],
) -> jax.Array:
    """Convolution (no bias) of (batch, *spatial, cin) with kernel (*k, cin, cout) via im2col."""
    batch, *lengths, _ = x.shape
    kernel_size = kernel.shape[:-2]
    dims = zip(lengths, kernel_size, strides, padding, strict=True)
    out = [conv_output_length(n, k, s, p) for n, k, s, p in dims]
    patches = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    # One spatial axis at a time: stack its k strided shifts on a new tap axis just before the
    # channels. Taps end up ordered (*kernel_size, cin) like the kernel, and this takes
    # sum(kernel_size) slices instead of prod(kernel_size).
    for axis, (k, s, n) in enumerate(zip(kernel_size, strides, out, strict=True)):
        taps = [
            jax.lax.slice_in_dim(patches, j, j + s * (n - 1) + 1, s, axis=axis + 1)
            for j in range(k)
        ]
        patches = jnp.stack(taps, axis=-2)
    patches = patches.reshape(batch, *out, -1)
    return patches @ kernel.reshape(patches.shape[-1], -1)


class ConvND(nnx.Module):
    """N-d convolution on channels-last input (batch, *spatial, cin) with explicit zero padding.

    The kernel is an nnx.Param of shape (*kernel_size, cin, cout), so both formulations share
    parameters and checkpoints: 'xla' uses lax.conv_general_dilated, 'im2col' gathers patches of
    prod(kernel_size) * cin values from shifted strided slices and does one matmul.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: Sequence[int],
        *,
        rngs: nnx.Rngs,
        strides: Sequence[int] | None = None,
        padding: Sequence[tuple[int, int]] | None = None,
        conv_impl: str = "auto",
    ) -> None:
        self.kernel_size = tuple(kernel_size)
        nd = len(self.kernel_size)
        if nd not in _SPATIAL:
            raise ValueError(f"ConvND supports 1 to 3 spatial dims, got kernel_size={kernel_size}")
        self.strides = tuple(strides) if strides is not None else (1,) * nd
        self.padding = tuple(tuple(p) for p in padding) if padding is not None else ((0, 0),) * nd
        self.conv_impl = resolve_conv_impl(conv_impl)
        # LeCun normal over fan_in = prod(kernel_size) * cin, as nnx.Conv does.
        init = jax.nn.initializers.lecun_normal(in_axis=tuple(range(nd + 1)), out_axis=nd + 1)
        shape = (*self.kernel_size, in_features, out_features)
        self.kernel = nnx.Param(init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, *spatial, cin) to (batch, *spatial_out, cout)."""
        kernel = self.kernel[...]
        x = x.astype(kernel.dtype)  # mixed precision: the conv runs in the compute dtype
        if self.conv_impl == "xla":
            spatial = _SPATIAL[len(self.kernel_size)]
            y = jax.lax.conv_general_dilated(
                x,
                kernel,
                self.strides,
                self.padding,
                dimension_numbers=(f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"),
            )
        else:
            y = conv_im2col(x, kernel, self.strides, self.padding)
        return y + self.bias[...]


class Conv1D(ConvND):
    """1-D convolution over (batch, T, cin), symmetric zero padding; kernel (k, cin, cout)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int,
        *,
        rngs: nnx.Rngs,
        stride: int = 1,
        padding: int = 0,
        conv_impl: str = "auto",
    ) -> None:
        super().__init__(
            in_features,
            out_features,
            (kernel_size,),
            strides=(stride,),
            padding=((padding, padding),),
            conv_impl=conv_impl,
            rngs=rngs,
        )


class Conv2D(ConvND):
    """2-D stride-1 'SAME' convolution over (batch, H, W, cin); kernel (kh, kw, cin, cout)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: tuple[int, int],
        *,
        rngs: nnx.Rngs,
        conv_impl: str = "auto",
    ) -> None:
        # lax's SAME for stride 1: k - 1 zeros in total, the extra one (even k) at the end.
        padding = tuple(((k - 1) // 2, k // 2) for k in kernel_size)
        super().__init__(
            in_features, out_features, kernel_size, padding=padding, conv_impl=conv_impl, rngs=rngs
        )
