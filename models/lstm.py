"""One-layer LSTM classifier for (T, F) sequences, written for speed under jit/scan.

With `vocab_size` > 0 the inputs are token ids shaped (T, 1) (workflow.data's text path: 0 is
padding, 1 unknown), embedded by an nnx.Embed of `embed_size` features before the recurrence.
Padding steps are masked: they leave the hidden and cell state unchanged, so "last" reads the
state after the last real token (as the Flax SST-2 example does) wherever the padding sits, and
"mean" averages over real tokens only.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from models import _checks
from models._checks import PAD_ID
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
    """[Embed →] LSTM (tanh) over time, readout of the last or mean hidden state, [LayerNorm],
    Dropout, Dense to logits.

    norm: "none" or "layer" (LayerNorm of the readout); dropout_rate: Dropout on the readout;
    vocab_size > 0: inputs are (T, 1) token ids, embedded to embed_size, padding (id 0) masked.

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
        vocab_size: int = 0,
        embed_size: int = 128,
    ) -> None:
        _, features = _checks.input_shape(input_shape, "lstm", 2, "(T, F)")
        num_outputs = _checks.positive_int(num_outputs, "num_outputs")
        self.vocab_size, features = _checks.token_inputs(vocab_size, embed_size, features, "lstm")
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
        # Last again, so models without an embedding initialize exactly as before it existed.
        self.embed = nnx.Embed(self.vocab_size, features, rngs=rngs) if self.vocab_size else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, T, F) to logits (batch, num_outputs); token ids (batch, T, 1) when
        vocab_size is set."""
        h = self.hidden_size
        w_rec = self.w_rec[...]
        mask = None
        if self.embed is not None:
            # Ids may arrive as floats (shape checks trace float32 inputs); exact below 2**24.
            ids = x[..., 0].astype(jnp.int32)
            mask = (ids != PAD_ID).T[..., None]  # (T, batch, 1), time-major like xs
            x = self.embed(ids)
        # Time-major input projection, computed once for every step.
        xs = jnp.einsum("btf,fg->tbg", x, self.w_in[...]) + self.bias[...]
        zeros = jnp.zeros((x.shape[0], h), xs.dtype)

        def step(carry, inputs):
            hidden, cell, total = carry
            z_x, keep = inputs
            z = z_x + hidden @ w_rec
            gates = jax.nn.sigmoid(z[:, : 3 * h])
            new_cell = gates[:, h : 2 * h] * cell + gates[:, :h] * jnp.tanh(z[:, 3 * h :])
            new_hidden = gates[:, 2 * h :] * jnp.tanh(new_cell)
            if keep is not None:  # a padding step carries the state through unchanged
                new_cell = jnp.where(keep, new_cell, cell)
                new_hidden = jnp.where(keep, new_hidden, hidden)
            if self.readout == "mean":
                total = total + (new_hidden if keep is None else jnp.where(keep, new_hidden, 0))
            return (new_hidden, new_cell, total), None

        (hidden, _, total), _ = jax.lax.scan(step, (zeros, zeros, zeros), (xs, mask))
        if self.readout == "last":
            features = hidden
        elif mask is None:
            features = total / x.shape[1]
        else:  # mean over the real tokens; an all-padding example reads zeros
            features = total / jnp.maximum(mask.sum(0), 1).astype(total.dtype)
        if self.layer_norm is not None:
            features = self.layer_norm(features)
        if self.dropout is not None:
            features = self.dropout(features)
        return self.out(features)
