"""One-layer LSTM classifier for (T, F) sequences, written for speed under jit/scan."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models import _checks
from models.mlp import head_init

READOUTS = ("last", "mean")
# LayerNorm only: BatchNorm statistics of a recurrent state differ per time step, and a
# LayerNorm inside the recurrence (Ba et al.'s LN-LSTM) would put three more reductions in
# every step of the scan; the readout is normalized instead.
NORMS = ("none", "layer")


def _block_orthogonal(key: jax.Array, hidden: int, blocks: int) -> jax.Array:
    """(hidden, blocks*hidden) matrix of independent orthogonal (hidden, hidden) blocks."""
    init = jax.nn.initializers.orthogonal()
    keys = jax.random.split(key, blocks)
    return jnp.concatenate([init(k, (hidden, hidden), jnp.float32) for k in keys], axis=1)


class LSTM(nnx.Module):
    """LSTM (tanh) over time, readout of the last or mean hidden state, [LayerNorm], Dropout,
    Dense to logits.

    norm: "none" or "layer" (LayerNorm of the readout); dropout_rate: Dropout on the readout.

    Gates are fused and ordered (input, forget, output, cell) so one sigmoid covers three of
    them; the input projection for all time steps is a single matmul before the scan, leaving
    one (batch, H) x (H, 4H) matmul per step.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int = 32,
        readout: str = "last",
        norm: str = "none",
        dropout_rate: float = 0.0,
    ) -> None:
        _, features = _checks.input_shape(input_shape, "lstm", 2, "(T, F)")
        num_outputs = _checks.positive_int(num_outputs, "num_outputs")
        self.hidden_size = h = _checks.positive_int(hidden_size, "hidden_size")
        self.readout = _checks.choice(readout, "readout", READOUTS)
        self.norm = _checks.choice(norm, "norm", NORMS)
        self.dropout_rate = _checks.dropout_rate(dropout_rate)
        self.w_in = nnx.Param(
            jax.nn.initializers.glorot_uniform()(rngs.params(), (features, 4 * h), jnp.float32)
        )
        self.w_rec = nnx.Param(_block_orthogonal(rngs.params(), h, 4))
        # Forget-gate bias 1 so the cell starts out remembering (Jozefowicz et al., 2015).
        self.bias = nnx.Param(jnp.zeros((4 * h,), jnp.float32).at[h : 2 * h].set(1.0))
        self.out = nnx.Linear(h, num_outputs, rngs=rngs, **head_init(self.norm))
        # Built last, so the default (norm="none") initializes exactly as before norms existed.
        self.layer_norm = nnx.LayerNorm(h, rngs=rngs) if self.norm == "layer" else None
        # Only a model that uses dropout holds a Dropout and its RNG stream, so the default
        # model's split state has no RNG variables and train()/eval() leave it unchanged.
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs) if self.dropout_rate else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, T, F) to logits (batch, num_outputs)."""
        h = self.hidden_size
        w_rec = self.w_rec[...]
        # Time-major input projection, computed once for every step.
        xs = jnp.einsum("btf,fg->tbg", x, self.w_in[...]) + self.bias[...]
        zeros = jnp.zeros((x.shape[0], h), xs.dtype)

        def step(carry, z_x):
            hidden, cell, total = carry
            z = z_x + hidden @ w_rec
            gates = jax.nn.sigmoid(z[:, : 3 * h])
            cell = gates[:, h : 2 * h] * cell + gates[:, :h] * jnp.tanh(z[:, 3 * h :])
            hidden = gates[:, 2 * h :] * jnp.tanh(cell)
            if self.readout == "mean":
                total = total + hidden
            return (hidden, cell, total), None

        (hidden, _, total), _ = jax.lax.scan(step, (zeros, zeros, zeros), xs)
        features = hidden if self.readout == "last" else total / x.shape[1]
        if self.layer_norm is not None:
            features = self.layer_norm(features)
        if self.dropout is not None:
            features = self.dropout(features)
        return self.out(features)
