"""Tests of the improve stage's sequence models: the Transformer classifier and WaveNet."""

import dataclasses
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from models import MODELS, ModelOptionError, build_model, count_params
from models.transformer import TransformerClassifier, sinusoidal_positions
from models.wavenet import (
    CausalConv1D,
    WaveNet,
    layers_to_cover,
    max_layers,
    receptive_field,
)
from tests.conftest import small_config
from workflow import engine, experiment
from workflow.diagnostics import checks
from workflow.diagnostics.checks import modes

BATCH = 4
NUM_OUTPUTS = 3
SHAPE = (8, 2)  # (T, F): odd enough to expose a mixed-up time and feature axis

# Tiny options: every test model of a kind shares layer shapes, so eager initialization (one
# compiled program per op shape) is paid once.
SMALL = {
    # Patches of 2 steps: 4 tokens of 2 * F = 4 values.
    "transformer": {"d_model": 8, "num_heads": 2, "mlp_dim": 16, "num_layers": 1, "patch_size": 2},
    # Receptive field 8 = T. Widths shared with the transformer's (8 -> 16, 8 -> 3) layers.
    "wavenet": {"channels": 8, "skip_channels": 8, "num_layers": 3},
}

_BUILT: dict[tuple, tuple[nnx.GraphDef, nnx.State]] = {}


def make(name: str, **overrides) -> nnx.Module:
    """Model `name` on SHAPE with SMALL options and `overrides`, seed 0 (built once per session)."""
    key = (name, tuple(sorted(overrides.items())))
    if key not in _BUILT:
        model = build_model(
            name, SHAPE, NUM_OUTPUTS, rngs=nnx.Rngs(0), **{**SMALL[name], **overrides}
        )
        _BUILT[key] = nnx.split(model)
    graphdef, state = _BUILT[key]
    # Fresh Variables over the same arrays, so a test that mutates its model stays isolated.
    return nnx.merge(graphdef, jax.tree.map(lambda a: a, state))


def inputs(seed: int = 100, length: int = SHAPE[0]) -> jax.Array:
    """A fixed random (BATCH, length, F) batch (NumPy: eager jax.random compiles per shape)."""
    x = np.random.default_rng(seed).standard_normal((BATCH, length, SHAPE[1]))
    return jnp.asarray(x, jnp.float32)


LABELS = jnp.arange(BATCH) % NUM_OUTPUTS


# Pure functions over split state, as the trainer runs them. Compiles dominate the run time, so
# each model configuration compiles `_run` once and most tests reuse it with other inputs.
@partial(jax.jit, static_argnums=0)
def _run(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, x, y):
    """Logits, cross-entropy gradients w.r.t. the params, and the advanced RNG state."""

    def loss(p):
        # Fresh Variables at this trace level: dropout advances its RNG counter here.
        model = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, rest))
        logits = model(x)
        xent = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return xent, (logits, nnx.split(model, nnx.Param, ...)[2])

    grads, (logits, new_rest) = jax.grad(loss, has_aux=True)(params)
    return logits, grads, new_rest


def run(model: nnx.Module, x: jax.Array) -> tuple[jax.Array, nnx.State]:
    """(logits, param gradients) of `model` (its current mode) on x and LABELS."""
    logits, grads, _ = _run(*nnx.split(model, nnx.Param, ...), x, LABELS)
    return logits, grads


# Every option value appears at least once; each combination costs an initialization and
# compiles, so there are few of them. The dropout ones run in eval mode where a test needs a
# deterministic function (a plain model stays in train mode: eval() would change its graphdef
# and so compile again).
TRANSFORMER_DROPOUT = {"positions": "sinusoidal", "pooling": "cls", "dropout_rate": 0.2}
# Receptive field 1 + 2 * (1 + 2) = 7 < T: the last step does not see the first.
WAVENET_DROPOUT = {"pooling": "last", "kernel_size": 3, "num_layers": 2, "dropout_rate": 0.2}
OPTIONS = [
    ("transformer", {}),  # learned positions, mean pooling
    ("transformer", TRANSFORMER_DROPOUT),
    ("wavenet", {}),  # kernel 2, mean pooling, conv_impl auto (im2col on CPU)
    ("wavenet", WAVENET_DROPOUT),
]


def deterministic(name: str, options: dict) -> nnx.Module:
    """make(name, **options), in eval mode if it has dropout."""
    model = make(name, **options)
    if options.get("dropout_rate"):
        model.eval()
    return model


def test_registered_names():
    assert MODELS["transformer"] is TransformerClassifier
    assert MODELS["wavenet"] is WaveNet


@pytest.mark.parametrize(("name", "options"), OPTIONS)
def test_output_shape_and_every_param_gets_a_gradient(name, options):
    model = make(name, **options)
    out, grads = run(model, inputs())
    chex.assert_shape(out, (BATCH, NUM_OUTPUTS))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
    assert jax.tree.structure(grads) == jax.tree.structure(nnx.state(model, nnx.Param))
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        g, where = np.asarray(g), jax.tree_util.keystr(path)
        assert np.all(np.isfinite(g)), f"{name}{where}: non-finite gradient"
        assert np.any(g != 0), f"{name}{where}: gradient is all zero"


@pytest.mark.parametrize(("name", "options"), [o for o in OPTIONS if o[1].get("dropout_rate")])
def test_dropout_is_random_in_train_mode_and_off_in_eval(name, options):
    model = make(name, **options)
    x = inputs()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    first, _, rest = _run(graphdef, params, rest, x, LABELS)
    second, _, rest = _run(graphdef, params, rest, x, LABELS)
    assert not np.allclose(first, second), "dropout masks should change between steps"
    model.eval()
    eval_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    fixed, _, advanced = _run(eval_graphdef, params, rest, x, LABELS)
    np.testing.assert_array_equal(fixed, _run(eval_graphdef, params, advanced, x, LABELS)[0])
    assert not np.allclose(fixed, first)


@pytest.mark.parametrize(("name", "options"), OPTIONS)
def test_examples_are_independent_in_a_batch(name, options):
    model = deterministic(name, options)
    x = inputs()
    others = x.at[1:].set(inputs(seed=7)[1:])
    np.testing.assert_allclose(run(model, others)[0][0], run(model, x)[0][0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # embed 4*64+64 (patches of 4), positions 10*64, 2 blocks of (2 LayerNorms 4*64,
        # attention 4*64*64, MLP 64*128+128+128*64+64), final LayerNorm 2*64, Dense 64*10+10.
        ("transformer", 320 + 640 + 2 * (256 + 16384 + 16576) + 128 + 650),
        # 1x1 in 1*32+32; 6 convs 2*32*64+64; projections 5 of 32*64+64 and 1 of 32*32+32;
        # head 32*32+32; Dense 32*10+10.
        ("wavenet", 64 + 6 * 4160 + 5 * 2112 + 1056 + 1056 + 330),
    ],
)
def test_default_sizes_on_mnist1d(name, expected):
    # Abstract models: parameter counts without initializing anything.
    model = nnx.eval_shape(lambda: build_model(name, (40, 1), 10, rngs=nnx.Rngs(0)))
    assert count_params(model) == expected


# --- Transformer ----------------------------------------------------------------------------


def test_sinusoidal_positions_add_no_parameters():
    def abstract(**options):
        options = {**SMALL["transformer"], **options}
        return nnx.eval_shape(
            lambda: build_model("transformer", SHAPE, 3, rngs=nnx.Rngs(0), **options)
        )

    learned, sinusoidal = abstract(), abstract(positions="sinusoidal")
    assert isinstance(learned.pos_embed, nnx.Param)
    assert learned.pos_embed.shape == (4, 8)  # one row per token of input_shape's T
    assert sinusoidal.pos_embed is None
    assert not any("pos" in str(path) for path, _ in nnx.to_flat_state(nnx.state(sinusoidal)))
    assert count_params(learned) - count_params(sinusoidal) == 4 * 8
    assert abstract(patch_size=1).pos_embed.shape == (SHAPE[0], 8)
    assert abstract(patch_size=3).pos_embed.shape == (3, 8)  # 8 steps: 3 + 3 + 2 (padded)
    # cls pooling adds exactly the learned token.
    assert count_params(abstract(pooling="cls")) - count_params(learned) == 8


def test_sinusoidal_table():
    table = sinusoidal_positions(50, 7)  # odd width: 4 sines, 3 cosines
    assert table.shape == (50, 7) and table.dtype == np.float32
    np.testing.assert_allclose(table[0], [0, 0, 0, 0, 1, 1, 1], atol=1e-7)
    np.testing.assert_allclose(table[:, 0], np.sin(np.arange(50)), rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(table) <= 1.0)
    # Every position gets a distinct code.
    assert len({tuple(np.round(row, 5)) for row in table}) == 50


@pytest.mark.parametrize("options", [{}, TRANSFORMER_DROPOUT])
def test_transformer_positions_make_order_matter(options):
    # Unmasked attention + mean/cls pooling is invariant to the order of the tokens; only the
    # positions break that. Reversing whole patches keeps every token's content.
    model = deterministic("transformer", options)
    x = inputs()
    patch = SMALL["transformer"]["patch_size"]
    swapped = x.reshape(BATCH, -1, patch, SHAPE[1])[:, ::-1].reshape(x.shape)
    change = np.abs(np.asarray(run(model, swapped)[0] - run(model, x)[0])).sum(-1)
    assert np.all(change > 1e-5), change


def test_transformer_patches():
    x = np.arange(2 * 7 * 2, dtype=np.float32).reshape(2, 7, 2)
    model = nnx.eval_shape(
        lambda: build_model("transformer", (7, 2), 3, rngs=nnx.Rngs(0), patch_size=3)
    )
    assert model.embed.in_features == 6 and model.pos_embed.shape == (3, 64)
    # Consecutive steps, features innermost; the last patch is zero-padded.
    tokens = np.asarray(model.tokens(jnp.asarray(x)))
    assert tokens.shape == (2, 3, 6)
    np.testing.assert_array_equal(tokens[1, 0], x[1, :3].ravel())
    np.testing.assert_array_equal(tokens[1, 2], [*x[1, 6], 0, 0, 0, 0])
    # The default on MNIST-1D: 10 tokens of 4 steps.
    default = nnx.eval_shape(lambda: build_model("transformer", (40, 1), 10, rngs=nnx.Rngs(0)))
    assert default.patch_size == 4 and default.max_tokens == 10


def test_transformer_lengths():
    x_long = jax.ShapeDtypeStruct((BATCH, SHAPE[0] + 4, SHAPE[1]), jnp.float32)
    # Abstract evaluation: traces the model (where the length check runs) without compiling.
    with pytest.raises(ModelOptionError, match="longer than the learned position table"):
        jax.eval_shape(make("transformer"), x_long)
    # Fixed encodings work for any length.
    out = jax.eval_shape(deterministic("transformer", TRANSFORMER_DROPOUT), x_long)
    chex.assert_shape(out, (BATCH, NUM_OUTPUTS))


# --- WaveNet --------------------------------------------------------------------------------


def test_wavenet_features_are_causal():
    """d features[s] / d x[t] is nonzero exactly for s - receptive_field < t <= s."""
    model = make("wavenet")
    x = np.random.default_rng(3).standard_normal((16, *SHAPE)).astype(np.float32)
    # Examples are independent, so the Jacobian of the batch sum holds each one's own.
    jac = jax.jit(jax.jacrev(lambda x: model.features(x).sum(0)))(jnp.asarray(x))
    reach = np.asarray(jnp.abs(jac).sum(axis=(1, 2, 4)))  # [s, t]; jac is (T, S, B, T, F)
    lag = np.arange(SHAPE[0])[:, None] - np.arange(SHAPE[0])[None, :]  # s - t
    seen = (lag >= 0) & (lag < model.receptive_field)
    np.testing.assert_array_equal(reach[~seen], 0.0)
    assert np.all(reach[seen] > 0), reach


def test_wavenet_readouts_see_their_receptive_field():
    x = inputs()
    # Mean pooling (default): the features of step 0 reach the output.
    model = make("wavenet")
    change = np.abs(np.asarray(run(model, x.at[:, 0].add(1.0))[0] - run(model, x)[0])).sum(-1)
    assert np.all(change > 1e-6), change
    # Last-step pooling sees exactly the last receptive_field inputs.
    model = deterministic("wavenet", WAVENET_DROPOUT)
    first_seen = SHAPE[0] - model.receptive_field
    assert first_seen == 1
    base = run(model, x)[0]
    unseen = run(model, x.at[:, :first_seen].add(1.0))[0]
    np.testing.assert_array_equal(unseen, base)
    seen = run(model, x.at[:, first_seen].add(1.0))[0]
    assert np.all(np.abs(np.asarray(seen - base)).sum(-1) > 1e-6)


def test_wavenet_structure():
    model = make("wavenet")
    assert model.dilations == (1, 2, 4)
    assert model.receptive_field == 8
    assert [conv.dilation for conv in model.convs] == [1, 2, 4]
    expected = "im2col" if jax.default_backend() == "cpu" else "xla"
    assert model.conv_impl == expected and model.convs[0].conv_impl == expected
    # The last layer has a skip output only: its residual would feed nothing.
    assert [p.out_features for p in model.projections] == [16, 16, 8]


def test_receptive_field_helpers():
    assert receptive_field(2, 6) == 64 and receptive_field(3, 5) == 63
    assert max_layers(40, 2) == 6 and max_layers(40, 3) == 5 and max_layers(8, 2) == 3
    assert layers_to_cover(40) == 6 and layers_to_cover(40, 3) == 5 and layers_to_cover(8) == 3
    assert layers_to_cover(20) == 5 and receptive_field(2, 5) >= 20
    model = nnx.eval_shape(lambda: build_model("wavenet", (40, 1), 10, rngs=nnx.Rngs(0)))
    assert model.receptive_field >= 40


@pytest.mark.parametrize(("dilation", "kernel_size"), [(3, 3)])
def test_causal_conv_im2col_matches_xla_and_formula(dilation, kernel_size):
    x = inputs(seed=1, length=11)
    results = []
    for impl in ("xla", "im2col"):
        conv = CausalConv1D(
            SHAPE[1], 3, kernel_size, dilation=dilation, conv_impl=impl, rngs=nnx.Rngs(0)
        )
        graphdef, state = nnx.split(conv)

        @jax.jit
        def loss_and_grads(state, x, graphdef=graphdef):
            return jax.value_and_grad(
                lambda s, x: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(x))), argnums=(0, 1)
            )(state, x)

        results.append(loss_and_grads(state, x))
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-4, atol=1e-5)
    # out[t] = b + sum_j x[t - (k - 1 - j) * dilation] @ W[j], zeros before the start:
    # with (k - 1) * dilation zeros on the left, x's index t - (k-1-j)*d is padded's t + j*d.
    w, b = np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])
    padded = np.pad(np.asarray(x[0]), (((kernel_size - 1) * dilation, 0), (0, 0)))
    expected = [
        b + sum(padded[t + j * dilation] @ w[j] for j in range(kernel_size)) for t in range(11)
    ]
    np.testing.assert_allclose(conv(x)[0], np.stack(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "pattern"),
    [
        ("transformer", (8, 2), {"d_model": 10, "num_heads": 4}, "divisible by num_heads"),
        ("transformer", (8, 2), {"positions": "rope"}, "positions='rope'.*learned, sinusoidal"),
        ("transformer", (8, 2), {"pooling": "max"}, "pooling='max'.*mean, cls"),
        ("transformer", (8, 2), {"num_layers": 0}, "num_layers=0"),
        ("transformer", (8, 2), {"dropout_rate": 1.0}, "dropout_rate=1.0"),
        ("transformer", (8,), {}, r"\(T, F\)"),
        ("transformer", (8, 2), {"patch_size": 9}, "patch_size=9.*at most the sequence length 8"),
        ("transformer", (8, 2), {"patch_size": 0}, "patch_size=0"),
        ("wavenet", (8, 2), {"kernel_size": 1}, "kernel_size=1.*>= 2"),
        ("wavenet", (40, 1), {"num_layers": 7}, "num_layers=7.*num_layers <= 6"),
        ("wavenet", (8, 2), {}, "num_layers=6.*num_layers <= 3"),
        ("wavenet", (8, 2), {"pooling": "max", "num_layers": 3}, "pooling='max'.*last, mean"),
        ("wavenet", (8, 2), {"conv_impl": "fft", "num_layers": 3}, "conv_impl='fft'"),
        ("wavenet", (8, 2), {"channels": 0}, "channels=0"),
        ("wavenet", (8, 2, 1), {}, r"\(T, F\)"),
        ("wavenet", (2, 1), {"kernel_size": 3}, "too short.*T >= kernel_size"),
    ],
)
def test_bad_options_are_one_line_option_errors(name, shape, kwargs, pattern):
    with pytest.raises(ModelOptionError, match=pattern) as info:
        # Abstract build: validation runs first, no parameters are initialized.
        nnx.eval_shape(lambda: build_model(name, shape, 2, rngs=nnx.Rngs(0), **kwargs))
    assert "\n" not in str(info.value)


# --- the workflow's debug checks and a short training run --------------------------------------


@pytest.fixture(scope="module", params=["transformer", "wavenet"])
def setup(request):
    """The default model on the small synthetic sequence task, with dropout on."""
    return experiment.prepare(
        small_config("sequence", request.param, **{"model.dropout_rate": 0.1})
    )


def test_debug_checks_pass(setup):
    batch = checks.sample_batch(setup.dataset)
    findings = checks.run_checks(setup, batch)
    assert [(f.id, f.severity) for f in findings if f.severity != "info"] == []
    # The mode check did see the Dropout layers it compares train and eval for.
    assert {layer["type"] for layer in modes.mode_layers(setup.task, setup.state)} == {"Dropout"}


@pytest.mark.slow  # kept out of the default run for time; runs with -m slow
def test_short_training_run_lowers_the_loss(setup):
    # 60 steps on 64 examples: the workflow's "small training set first", which a sound model
    # fits quickly (on the full set the sinusoid frequencies take hundreds of steps to learn).
    ds = setup.dataset
    small = dataclasses.replace(ds, x_train=ds.x_train[:64], y_train=ds.y_train[:64])
    config = setup.config
    result = engine.fit(setup.task, setup.state, small, config, progress=False)
    assert result.status == "ok"
    losses = result.step_losses
    assert len(losses) == config.num_steps == 60
    assert losses[-10:].mean() < 0.5 * losses[:10].mean(), losses
