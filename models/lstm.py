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

from models import validate
from models.mlp import head_init
from models.validate import PAD_ID

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


def _cell(h: jax.Array, c: jax.Array, z_x: jax.Array, w_rec: jax.Array) -> tuple:
    """One LSTM step: (new hidden, new cell, sigmoid gates (i, f, o), cell input g, tanh(cell))."""
    size = h.shape[-1]
    z = z_x + h @ w_rec
    gates = jax.nn.sigmoid(z[:, : 3 * size])
    g = jnp.tanh(z[:, 3 * size :])
    cell = gates[:, size : 2 * size] * c + gates[:, :size] * g
    tanh_cell = jnp.tanh(cell)
    return gates[:, 2 * size :] * tanh_cell, cell, gates, g, tanh_cell


def _run(xs: jax.Array, w_rec: jax.Array, mask: jax.Array | None) -> tuple:
    """The recurrence over time-major xs: (hidden states (T, B, H), what the backward needs)."""
    zeros = jnp.zeros((xs.shape[1], w_rec.shape[0]), xs.dtype)

    def step(carry, inputs):
        h, c = carry
        z_x, keep = inputs
        new_h, new_c, gates, g, tanh_cell = _cell(h, c, z_x, w_rec)
        if keep is not None:  # a padding step carries the state through unchanged
            new_h, new_c = jnp.where(keep, new_h, h), jnp.where(keep, new_c, c)
        return (new_h, new_c), (new_h, h, c, gates, g, tanh_cell)

    _, (hs, *saved) = jax.lax.scan(step, (zeros, zeros), (xs, mask))
    return hs, saved


@jax.custom_vjp
def recurrence(xs: jax.Array, w_rec: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Hidden states (T, B, H) of the LSTM over time-major gate inputs xs (T, B, 4H).

    Autodiff of the scan would accumulate the recurrent weights' gradient inside the backward
    loop, one small (H, B) x (B, 4H) matmul per step; this backward keeps only the sequential
    part in the loop and forms that gradient after it as one (H, T*B) x (T*B, 4H) matmul, which
    makes the whole training step of the MNIST-1D LSTM faster.
    """
    return _run(xs, w_rec, mask)[0]


def _recurrence_forward(xs, w_rec, mask):
    hs, saved = _run(xs, w_rec, mask)
    return hs, (saved, w_rec, mask)


def _recurrence_backward(residuals, d_hs):
    (h_prev, c_prev, gates, g, tanh_cell), w_rec, mask = residuals
    size = w_rec.shape[0]
    w_rec_t = w_rec.T

    def step(carry, inputs):
        dh_next, dc_next = carry
        dh_out, c, gate, gi, tc, keep = inputs
        dh = dh_out + dh_next
        i, f, o = gate[:, :size], gate[:, size : 2 * size], gate[:, 2 * size :]
        dc = dc_next + dh * o * (1 - tc * tc)
        dz = jnp.concatenate(
            [
                dc * gi * i * (1 - i),
                dc * c * f * (1 - f),
                dh * tc * o * (1 - o),
                dc * i * (1 - gi * gi),
            ],
            axis=-1,
        )
        dh_prev, dc_prev = dz @ w_rec_t, dc * f
        if keep is not None:  # a padding step passed the state through: so do its gradients
            dz = jnp.where(keep, dz, 0)
            dh_prev, dc_prev = jnp.where(keep, dh_prev, dh), jnp.where(keep, dc_prev, dc_next)
        return (dh_prev, dc_prev), dz

    zeros = jnp.zeros_like(h_prev[0])
    inputs = (d_hs, c_prev, gates, g, tanh_cell, mask)
    _, d_xs = jax.lax.scan(step, (zeros, zeros), inputs, reverse=True)
    d_w_rec = jnp.einsum("tbh,tbg->hg", h_prev, d_xs).astype(w_rec.dtype)
    return d_xs, d_w_rec, None


recurrence.defvjp(_recurrence_forward, _recurrence_backward)


class LSTM(nnx.Module):
    """[Embed →] LSTM (tanh) over time, readout of the last or mean hidden state, [LayerNorm],
    Dropout, Dense to logits.

    norm: "none" or "layer" (LayerNorm of the readout); dropout_rate: Dropout on the readout;
    vocab_size > 0: inputs are (T, 1) token ids, embedded to embed_size, padding (id 0) masked.

    Gates are fused and ordered (input, forget, output, cell) so one sigmoid covers three of
    them; the input projection for all time steps is a single matmul before the scan, leaving
    one (batch, H) x (H, 4H) matmul per step.
    """

    SIZE_OPTIONS = ("hidden_size",)  # how it grows: models/__init__.py

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        """WaveNet, then the Transformer (models/__init__.py)."""
        # WaveNet first: on MNIST-1D it reached 93% test at the defaults (3,000 steps, Adam 3e-4)
        # where the Transformer reached 78% (it overfits) and the LSTM 54%.
        return ("wavenet", "transformer")

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
        _, features = validate.input_shape(input_shape, "lstm", 2, "(T, F)")
        num_outputs = validate.positive_int(num_outputs, "num_outputs")
        self.vocab_size, features = validate.token_inputs(vocab_size, embed_size, features, "lstm")
        self.hidden_size = h = validate.positive_int(hidden_size, "hidden_size")
        self.readout = validate.choice(readout, "readout", READOUTS)
        self.norm = validate.choice(norm, "norm", NORMS)
        self.dropout_rate = validate.dropout_rate(dropout_rate)
        self.w_in = nnx.Param(
            jax.nn.initializers.glorot_uniform()(rngs.params(), (features, 4 * h), jnp.float32)
        )
        self.w_rec = nnx.Param(_block_orthogonal(rngs.params(), h, 4))
        # Forget-gate bias 1 so the cell starts out remembering (Jozefowicz et al., 2015).
        self.bias = nnx.Param(jnp.zeros((4 * h,), jnp.float32).at[h : 2 * h].set(1.0))
        self.out = nnx.Linear(h, num_outputs, rngs=rngs, **head_init(self.norm))
        self.layer_norm = nnx.LayerNorm(h, rngs=rngs) if self.norm == "layer" else None
        # Only a model that uses dropout holds a Dropout and its RNG stream, so the default
        # model's split state has no RNG variables and train()/eval() leave it unchanged.
        self.dropout = nnx.Dropout(self.dropout_rate, rngs=rngs) if self.dropout_rate else None
        self.embed = nnx.Embed(self.vocab_size, features, rngs=rngs) if self.vocab_size else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, T, F) to logits (batch, num_outputs); token ids (batch, T, 1) when
        vocab_size is set."""
        w_rec = self.w_rec[...]
        mask = None
        if self.embed is not None:
            # Ids may arrive as floats (shape checks trace float32 inputs); exact below 2**24.
            ids = x[..., 0].astype(jnp.int32)
            mask = (ids != PAD_ID).T[..., None]  # (T, batch, 1), time-major like xs
            x = self.embed(ids)
        # Time-major input projection, computed once for every step.
        xs = jnp.einsum("btf,fg->tbg", x, self.w_in[...]) + self.bias[...]
        hs = recurrence(xs, w_rec, mask)  # (T, batch, H): the hidden state after each step
        if self.readout == "last":
            features = hs[-1]  # padding steps carry the state: the last real token's
        elif mask is None:
            features = hs.mean(0)
        else:  # mean over the real tokens; an all-padding example reads zeros
            total = jnp.where(mask, hs, 0).sum(0)
            features = total / jnp.maximum(mask.sum(0), 1).astype(total.dtype)
        if self.layer_norm is not None:
            features = self.layer_norm(features)
        if self.dropout is not None:
            features = self.dropout(features)
        return self.out(features)
