"""Transformer encoder classifier for (T, F) sequences, one token per patch of time steps.

Pre-LayerNorm blocks (Xiong et al., 2020) train stably without a learning-rate warmup, which the
workflow's plain Adam runs do not have. Defaults (patches of 4 steps, d_model 64, 2 layers, 4
heads, MLP 128; 68k parameters) reach, in 3,000 MNIST-1D steps, 78% test accuracy at Adam 3e-4
and 82% at 1e-3 (it overfits: 100% train). Patches matter there: one token per step ran several
times slower and reached 46% at 3e-4 (local shapes become token features instead of attention
patterns that must be learned from scratch).

With `vocab_size` > 0 the inputs are token ids shaped (T, 1) (workflow.data's text path: 0 is
padding): each id is embedded to `embed_size` features first, patches of embedded tokens follow
as above, and a patch of padding alone is masked out of attention and of the mean pooling.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models import validate
from models.validate import PAD_ID, ModelOptionError

POSITIONS = ("learned", "sinusoidal")
POOLINGS = ("mean", "cls")


def sinusoidal_positions(length: int, d_model: int) -> np.ndarray:
    """(length, d_model) fixed encodings: sines then cosines of geometric frequencies."""
    half = (d_model + 1) // 2
    # Wavelengths from 2*pi to 10000*2*pi, as in Vaswani et al. (2017).
    freqs = 1.0 / 10000.0 ** (np.arange(half) / half)
    angles = np.arange(length)[:, None] * freqs[None, :]
    table = np.concatenate([np.sin(angles), np.cos(angles)], axis=-1)
    return table[:, :d_model].astype(np.float32)


class EncoderBlock(nnx.Module):
    """x + Dropout(SelfAttention(LN(x))), then h + Dropout(MLP(LN(h))) with a GELU MLP."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        mlp_dim: int,
        dropout_rate: float,
        *,
        rngs: nnx.Rngs,
    ) -> None:
        self.attention_norm = nnx.LayerNorm(d_model, rngs=rngs)
        # No q/k/v/out biases: softmax is invariant to the key bias (it adds the same q·b to
        # every logit of a query), so that bias would be a parameter that never gets a
        # gradient; the LayerNorm offsets and the MLP biases keep the block affine.
        self.attention = nnx.MultiHeadAttention(
            num_heads,
            d_model,
            use_bias=False,
            dropout_rate=dropout_rate,
            # One (T, T) attention-dropout mask per step, shared by the batch and the heads
            # (Flax's default): a mask per example and head compiles slower on the CPU.
            broadcast_dropout=True,
            # Train mode from construction on, like nnx.Dropout; model.eval() flips it.
            deterministic=False,
            decode=False,
            rngs=rngs,
        )
        self.mlp_norm = nnx.LayerNorm(d_model, rngs=rngs)
        self.mlp_in = nnx.Linear(d_model, mlp_dim, rngs=rngs)
        self.mlp_out = nnx.Linear(mlp_dim, d_model, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate else None

    def _drop(self, x: jax.Array) -> jax.Array:
        return self.dropout(x) if self.dropout is not None else x

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Map (batch, T, d_model) to (batch, T, d_model); `mask` (batch, 1, 1, T) drops keys."""
        x = x + self._drop(self.attention(self.attention_norm(x), mask=mask))
        h = jax.nn.gelu(self.mlp_in(self.mlp_norm(x)))
        return x + self._drop(self.mlp_out(h))


class TransformerClassifier(nnx.Module):
    """Patches → Linear to d_model + positions → pre-LN encoder blocks → LayerNorm → pool → Dense.

    A token is `patch_size` consecutive steps (patch_size * F values; the last patch is
    zero-padded), so attention costs (T / patch_size)**2. `positions="learned"` adds an
    nnx.Param table of one row per token of input_shape's T; "sinusoidal" adds fixed encodings
    (no parameters, any length). `pooling="mean"` averages the
    tokens; "cls" prepends a learned token (which needs no position: it is itself learned) and
    reads it out. Attention is unmasked: every step sees the whole sequence. `dropout_rate`
    drops attention weights and the output of each residual branch (attention and MLP).
    """

    # How it grows (models/__init__.py): d_model stays divisible among the heads.
    SIZE_OPTIONS = ("d_model", "mlp_dim")
    SIZE_DIVISIBLE_BY = {"d_model": "num_heads"}

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        """WaveNet (models/__init__.py)."""
        return ("wavenet",)

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        d_model: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_dim: int = 128,
        dropout_rate: float = 0.0,
        positions: str = "learned",
        pooling: str = "mean",
        patch_size: int = 4,
        vocab_size: int = 0,
        embed_size: int = 64,
    ) -> None:
        length, features = validate.input_shape(input_shape, "transformer", 2, "(T, F)")
        num_outputs = validate.positive_int(num_outputs, "num_outputs")
        self.vocab_size, features = validate.token_inputs(
            vocab_size, embed_size, features, "transformer"
        )
        self.d_model = validate.positive_int(d_model, "d_model")
        self.num_layers = validate.positive_int(num_layers, "num_layers")
        self.num_heads = validate.positive_int(num_heads, "num_heads")
        self.mlp_dim = validate.positive_int(mlp_dim, "mlp_dim")
        self.dropout_rate = validate.dropout_rate(dropout_rate)
        self.positions = validate.choice(positions, "positions", POSITIONS)
        self.pooling = validate.choice(pooling, "pooling", POOLINGS)
        self.patch_size = validate.positive_int(patch_size, "patch_size")
        if d_model % num_heads:
            raise ModelOptionError(
                f"d_model={d_model} is invalid with num_heads={num_heads}; d_model must be "
                "divisible by num_heads (each head gets d_model // num_heads features)"
            )
        if self.patch_size > length:
            raise ModelOptionError(
                f"patch_size={patch_size} is invalid for input_shape={tuple(input_shape)}; "
                f"expected at most the sequence length {length}"
            )
        self.max_tokens = -(-length // self.patch_size)
        self.embed = nnx.Linear(self.patch_size * features, self.d_model, rngs=rngs)
        if self.positions == "learned":
            # Small init (BERT/ViT) so positions do not swamp the projected inputs at step 0.
            init = jax.nn.initializers.normal(0.02)
            shape = (self.max_tokens, self.d_model)
            self.pos_embed = nnx.Param(init(rngs.params(), shape, jnp.float32))
        else:
            self.pos_embed = None
        if self.pooling == "cls":
            self.cls_token = nnx.Param(
                jax.nn.initializers.normal(0.02)(rngs.params(), (self.d_model,), jnp.float32)
            )
        else:
            self.cls_token = None
        self.blocks = nnx.List(
            [
                EncoderBlock(
                    self.d_model, self.num_heads, self.mlp_dim, self.dropout_rate, rngs=rngs
                )
                for _ in range(self.num_layers)
            ]
        )
        self.final_norm = nnx.LayerNorm(self.d_model, rngs=rngs)
        self.out = nnx.Linear(self.d_model, num_outputs, rngs=rngs)
        self.token_embed = (
            nnx.Embed(self.vocab_size, features, rngs=rngs) if self.vocab_size else None
        )

    def _position_table(self, tokens: int, length: int) -> jax.Array:
        if self.pos_embed is None:
            # Built with NumPy from the static length: a constant in the compiled program.
            return jnp.asarray(sinusoidal_positions(tokens, self.d_model))
        if tokens > self.max_tokens:
            raise ModelOptionError(
                f"input of length {length} is longer than the learned position table "
                f"({self.max_tokens} tokens of {self.patch_size} steps, from input_shape); "
                "build the model for the longest sequence or use positions='sinusoidal'"
            )
        return self.pos_embed[:tokens]

    def tokens(self, x: jax.Array) -> jax.Array:
        """Map (batch, T, F) to patches (batch, ceil(T / patch_size), patch_size * F)."""
        batch, length, features = x.shape
        pad = -length % self.patch_size
        if pad:
            x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        return x.reshape(batch, (length + pad) // self.patch_size, self.patch_size * features)

    def valid_tokens(self, x: jax.Array) -> jax.Array | None:
        """(batch, tokens[+1]) True where a token holds a real (non-padding) id; None without
        an embedding (every token counts)."""
        if self.token_embed is None:
            return None
        real = (x[..., :1].astype(jnp.int32) != PAD_ID).astype(jnp.float32)
        valid = jnp.max(self.tokens(real), axis=-1) > 0  # a patch is real if any step is
        if self.cls_token is not None:
            valid = jnp.concatenate([jnp.ones_like(valid[:, :1]), valid], axis=1)
        return valid

    def encode(self, x: jax.Array) -> jax.Array:
        """Map (batch, T, F) to final-LayerNorm token features (batch, tokens[+1], d_model)."""
        valid = self.valid_tokens(x)
        if self.token_embed is not None:
            # Ids may arrive as floats (shape checks trace float32 inputs); exact below 2**24.
            x = self.token_embed(x[..., 0].astype(jnp.int32))
        patches = self.tokens(x)
        h = self.embed(patches) + self._position_table(patches.shape[1], x.shape[1])
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, self.d_model))
            h = jnp.concatenate([cls, h], axis=1)
        mask = None if valid is None else valid[:, None, None, :]
        for block in self.blocks:
            h = block(h, mask)
        return self.final_norm(h)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Map (batch, T, F) to logits (batch, num_outputs); token ids (batch, T, 1) when
        vocab_size is set."""
        h = self.encode(x)
        if self.cls_token is not None:
            pooled = h[:, 0]
        elif self.token_embed is None:
            pooled = jnp.mean(h, axis=1)
        else:  # the mean over real tokens; an all-padding example reads zeros
            valid = self.valid_tokens(x)[..., None].astype(h.dtype)
            pooled = jnp.sum(h * valid, axis=1) / jnp.maximum(jnp.sum(valid, axis=1), 1)
        return self.out(pooled)
