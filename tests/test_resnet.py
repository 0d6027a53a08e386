"""Tests of the CIFAR ResNet: shapes, gradients, BatchNorm modes, the debug checks, training."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import models
from models import MODELS, ModelOptionError, build_model, count_params
from models.resnet import ResNet, ResNet20, ResNet32, ResNet56, ResNetSmall
from tests.conftest import small_config
from workflow import config_lib, engine, experiment
from workflow.diagnostics import checks
from workflow.diagnostics.checks import modes

BATCH = 4
NUM_OUTPUTS = 3
SHAPE = (8, 8, 1)  # resnet_small's target (8x8 digits): spatial 8 -> 4 -> 2
TRAIN_STEPS = 5
LEARNING_RATE = 0.05

NAMES = {
    "resnet": (ResNet, 20, 16),
    "resnet20": (ResNet20, 20, 16),
    "resnet32": (ResNet32, 32, 16),
    "resnet56": (ResNet56, 56, 16),
    "resnet_small": (ResNetSmall, 8, 8),
}

# Built models as split state, so each configuration initializes once (eager initialization
# compiles a program per parameter shape, which is slow on a small CPU).
_BUILT: dict[tuple, tuple[nnx.GraphDef, nnx.State]] = {}


def make(name: str = "resnet_small", shape: tuple = SHAPE, **kwargs) -> nnx.Module:
    """A new model (seed 0) in train mode, with fresh Variables so tests stay isolated."""
    # lax.conv compiles in ~60% of im2col's time here; im2col is checked against it below and
    # is what the workflow tests at the end run (conv_impl "auto" on the CPU).
    kwargs = {"conv_impl": "xla", **kwargs}
    key = (name, shape, tuple(sorted(kwargs.items())))
    if key not in _BUILT:
        model = build_model(name, shape, NUM_OUTPUTS, rngs=nnx.Rngs(0, dropout=1), **kwargs)
        _BUILT[key] = nnx.split(model)
    graphdef, state = _BUILT[key]
    return nnx.merge(graphdef, jax.tree.map(lambda a: a, state))


def inputs(shape: tuple = SHAPE, seed: int = 100) -> tuple[jax.Array, jax.Array]:
    """A fixed random input batch and integer labels (NumPy: no compile per shape)."""
    x = np.random.default_rng(seed).standard_normal((BATCH, *shape)).astype(np.float32)
    return jnp.asarray(x), jnp.arange(BATCH) % NUM_OUTPUTS


def split(model: nnx.Module, mode: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, params, rest) of `model` in 'train' or 'eval' mode, as the trainer splits it."""
    model.train() if mode == "train" else model.eval()
    return nnx.split(model, nnx.Param, ...)


# Pure functions over split state, as the trainer uses them: the graphdef is static, so each
# model structure and mode compiles once and the tests share the cache.
@partial(jax.jit, static_argnums=0)
def forward(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, x: jax.Array):
    """Outputs in the graphdef's mode and the non-parameter state after the call."""
    model = nnx.merge(graphdef, params, engine.fresh_variables(rest))
    return model(x), nnx.split(model, nnx.Param, ...)[2]


@partial(jax.jit, static_argnums=0)
def sgd(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, x: jax.Array, y: jax.Array):
    """TRAIN_STEPS SGD steps carrying BatchNorm statistics: (first grads, params, rest, losses)."""

    def loss(p, r):
        model = nnx.merge(graphdef, p, engine.fresh_variables(r))
        logits = model(x)
        value = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return value, nnx.split(model, nnx.Param, ...)[2]

    def step(carry, _):
        p, r = carry
        (value, r), g = jax.value_and_grad(loss, has_aux=True)(p, r)
        return (jax.tree.map(lambda a, b: a - LEARNING_RATE * b, p, g), r), (value, g)

    (params, rest), (losses, grads) = jax.lax.scan(step, (params, rest), None, TRAIN_STEPS)
    return jax.tree.map(lambda g: g[0], grads), params, rest, losses


def batch_stats(state: nnx.State) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.filter_state(state, nnx.BatchStat))]


# ----------------------------------------------------------------------------- registry, shapes


def test_registered_names_give_their_depth_and_width():
    for name, (cls, depth, width) in NAMES.items():
        assert MODELS[name] is cls and issubclass(cls, ResNet)
        # The config reads keyword defaults from the constructor's signature.
        config = config_lib.model_config(name)
        assert (config.depth, config.width, config.norm) == (depth, width, "batch"), name
        assert config.dropout_rate == 0.0 and config.conv_impl == "auto"
    # A preset's defaults are overridable like any option.
    model = nnx.eval_shape(lambda: build_model("resnet56", SHAPE, 2, rngs=nnx.Rngs(0), depth=8))
    assert type(model) is ResNet56 and model.depth == 8 and len(model.blocks) == 3


# He et al. 2016, table 6: 0.27M, 0.46M, 0.85M on CIFAR-10 (option A shortcuts add none).
PAPER_PARAMS = {"resnet": 269_722, "resnet20": 269_722, "resnet32": 464_154, "resnet56": 853_018}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_sizes_abstract(name):
    # Abstract evaluation: shapes and sizes without initializing or compiling anything.
    model = nnx.eval_shape(lambda: build_model(name, (32, 32, 3), 10, rngs=nnx.Rngs(0)))
    _, depth, width = NAMES[name]
    assert count_params(model) == PAPER_PARAMS[name]
    assert len(model.blocks) == (depth - 2) // 6 * 3
    assert [block.conv2.kernel.shape[-1] for block in model.blocks[:: len(model.blocks) // 3]] == [
        width,
        2 * width,
        4 * width,
    ]
    graphdef, params, rest = split(model, "eval")
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    out, _ = jax.eval_shape(partial(forward, graphdef), params, rest, x)
    chex.assert_shape(out, (2, 10))


@pytest.mark.parametrize("shape", [(4, 4, 3), (5, 7, 2), (28, 28, 1), (12, 9, 3)])
def test_any_image_size_abstract(shape):
    model = nnx.eval_shape(lambda: build_model("resnet", shape, NUM_OUTPUTS, rngs=nnx.Rngs(0)))
    graphdef, params, rest = split(model, "train")
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    out, _ = jax.eval_shape(partial(forward, graphdef), params, rest, x)
    chex.assert_shape(out, (2, NUM_OUTPUTS))


def test_small_variant_size_output_shape_and_finite():
    def size(**kwargs):
        model = nnx.eval_shape(
            lambda: build_model("resnet_small", SHAPE, 10, rngs=nnx.Rngs(0), **kwargs)
        )
        return count_params(model)

    # About LeNet's size on 8x8 digits (21,386 parameters).
    assert size() == 19_074
    # norm="none" swaps each norm's scale and shift (2 x 120 channels in all) for a conv bias.
    assert size(norm="none") == 19_074 - 120
    model = make()
    x, _ = inputs()
    for mode in ("train", "eval"):
        out, _ = forward(*split(model, mode), x)
        chex.assert_shape(out, (BATCH, NUM_OUTPUTS))
        chex.assert_type(out, jnp.float32)
        chex.assert_tree_all_finite(out)


@pytest.mark.slow  # kept out of the default run for time; runs with -m slow
def test_conv_impls_agree():
    # Same seed, same parameters; odd sizes of the strided conv are covered in models.layers'
    # tests and, abstractly, above.
    x, _ = inputs()
    xla, im2col = make(conv_impl="xla"), make(conv_impl="im2col")
    assert xla.stem.conv_impl == "xla" and xla.blocks[-1].conv2.conv_impl == "xla"
    assert im2col.stem.conv_impl == "im2col" and im2col.blocks[-1].conv1.conv_impl == "im2col"
    out_xla, _ = forward(*split(xla, "train"), x)
    out_im2col, _ = forward(*split(im2col, "train"), x)
    np.testing.assert_allclose(out_xla, out_im2col, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- gradients, modes


def test_every_param_gets_a_finite_nonzero_gradient_and_sgd_trains():
    model = make()
    x, y = inputs()
    graphdef, params, rest = split(model, "train")
    grads, _, _, losses = sgd(graphdef, params, rest, x, y)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    # stem + 3 blocks x 2 convs (no bias before a norm), 7 BatchNorms x 2, the dense kernel/bias.
    assert len(leaves) == 7 + 7 * 2 + 2
    for path, g in leaves:
        g = np.asarray(g)
        where = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(g)), f"{where}: non-finite gradient"
        assert np.any(g != 0), f"{where}: gradient is all zero"
    assert float(losses[-1]) < float(losses[0]), losses


@partial(jax.jit, static_argnums=(0, 1))
def probe(train_graphdef, eval_graphdef, params, rest, x, other, y):
    """Parameter grads on (x, y), train outputs on x and on `other`, eval outputs on x."""

    def loss(p):
        logits = nnx.merge(train_graphdef, p, engine.fresh_variables(rest))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    grads, train_out = jax.grad(loss, has_aux=True)(params)
    train_other = nnx.merge(train_graphdef, params, engine.fresh_variables(rest))(other)
    eval_out = nnx.merge(eval_graphdef, params, engine.fresh_variables(rest))(x)
    return grads, train_out, train_other, eval_out


@pytest.mark.parametrize("norm", ["layer", "none"])
@pytest.mark.slow  # kept out of the default run for time; runs with -m slow
def test_other_norms_are_per_example_and_get_gradients(norm):
    model = make(norm=norm)
    assert not any(isinstance(node, nnx.BatchNorm) for _, node in nnx.iter_graph(model))
    x, y = inputs()
    graphdef, params, rest = split(model, "train")
    eval_graphdef = split(model, "eval")[0]
    assert jax.tree.leaves(rest) == []  # nothing but parameters
    other = x.at[2:].set(-x[2:])
    grads, out, out_other, eval_out = probe(graphdef, eval_graphdef, params, rest, x, other, y)
    # No batch statistics: an example's output is the same whatever else is in its batch, and
    # train and eval mode agree.
    np.testing.assert_allclose(out_other[:2], out[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(eval_out, out, rtol=1e-5, atol=1e-6)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.any(np.asarray(g) != 0), f"{norm}{jax.tree_util.keystr(path)}: zero gradient"


def test_batchnorm_train_mode_uses_and_updates_batch_stats_eval_mode_running_averages():
    model = make()
    x, y = inputs()
    train_graphdef, params, rest = split(model, "train")
    eval_graphdef = split(model, "eval")[0]
    initial = batch_stats(rest)
    assert len(initial) == 7 * 2  # mean and var of every BatchNorm

    # Train mode: a forward pass moves the running averages; training carries them along.
    _, after_forward = forward(train_graphdef, params, rest, x)
    moved = batch_stats(after_forward)
    assert all(not np.allclose(a, b) for a, b in zip(initial, moved, strict=True))
    _, params, rest, _ = sgd(train_graphdef, params, rest, x, y)
    trained = batch_stats(rest)
    assert all(not np.allclose(a, b) for a, b in zip(initial, trained, strict=True))

    # Eval mode: the statistics stay put, outputs are deterministic and per example.
    evaluated, rest_after_eval = forward(eval_graphdef, params, rest, x)
    for a, b in zip(trained, batch_stats(rest_after_eval), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(forward(eval_graphdef, params, rest, x)[0], evaluated)
    other = x.at[2:].set(-3.0 * x[2:])
    np.testing.assert_allclose(
        forward(eval_graphdef, params, rest, other)[0][:2], evaluated[:2], rtol=1e-5, atol=1e-6
    )
    # Train mode normalizes with the batch's statistics instead: the modes differ, and an
    # example's train-mode output depends on its batch.
    train_out, _ = forward(train_graphdef, params, rest, x)
    assert not np.allclose(train_out, evaluated, atol=1e-3)
    assert not np.allclose(forward(train_graphdef, params, rest, other)[0][:2], train_out[:2])
    # Eval outputs follow the running averages; train outputs ignore them.
    shifted = jax.tree.map(lambda a: a + 0.5, rest)
    assert not np.allclose(forward(eval_graphdef, params, shifted, x)[0], evaluated)
    np.testing.assert_allclose(
        forward(train_graphdef, params, shifted, x)[0], train_out, rtol=1e-5, atol=1e-6
    )


def test_dropout_is_random_in_train_mode_and_off_in_eval():
    model = make(dropout_rate=0.5)
    x, _ = inputs()
    graphdef, params, rest = split(model, "train")
    first, rest = forward(graphdef, params, rest, x)
    second, rest = forward(graphdef, params, rest, x)
    assert not np.allclose(first, second), "dropout masks should change between steps"
    eval_graphdef = split(model, "eval")[0]
    np.testing.assert_array_equal(
        forward(eval_graphdef, params, rest, x)[0], forward(eval_graphdef, params, rest, x)[0]
    )


# ----------------------------------------------------------------------------- workflow


@pytest.fixture(scope="module")
def setup():
    """The synthetic image task (12x12x1) with resnet_small, prepared as the stages do."""
    return experiment.prepare(small_config("image", "resnet_small"))


def test_debug_checks_pass_on_a_built_config(setup):
    assert setup.dataset.input_shape == (12, 12, 1)
    findings = checks.run_checks(setup, checks.sample_batch(setup.dataset))
    assert [(f.id, f.severity) for f in findings if f.severity != "info"] == []
    # The mode checks did look at the BatchNorm layers.
    layers = modes.mode_layers(setup.task, setup.state)
    assert len(layers) == 7 and {layer["type"] for layer in layers} == {"BatchNorm"}


@pytest.mark.slow  # kept out of the default run for time; runs with -m slow
def test_short_training_run_decreases_the_loss(setup):
    # fit donates its state: train a copy so the fixture's state stays usable.
    state = jax.tree.map(jnp.copy, setup.state)
    result = engine.fit(setup.task, state, setup.dataset, setup.config, progress=False)
    assert result.status == "ok"
    losses = result.step_losses
    assert len(losses) == setup.config.num_steps == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses
    assert batch_stats(result.state.model_state)  # the statistics were carried through


# ----------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"depth": 10}, r"depth=10 is invalid.*6n \+ 2.*8, 14, 20, 32, 44, 56, 110"),
        ({"depth": 2}, "depth=2 is invalid"),
        ({"depth": 20.0}, "depth=20.0 is invalid"),
        ({"depth": "20"}, "depth='20' is invalid"),
        ({"depth": True}, "depth=True is invalid"),
        ({"width": 0}, "width=0 is invalid"),
        ({"norm": "group"}, "norm='group' is invalid.*batch, layer, none"),
        ({"dropout_rate": 1.0}, r"dropout_rate=1.0 is invalid.*\[0, 1\)"),
        ({"conv_impl": "fft"}, "conv_impl='fft'.*auto, xla, im2col"),
    ],
)
@pytest.mark.parametrize("name", ["resnet", "resnet_small"])
def test_bad_options_are_one_line_option_errors(name, kwargs, pattern):
    with pytest.raises(ModelOptionError, match=pattern) as info:
        build_model(name, SHAPE, 2, rngs=nnx.Rngs(0), **kwargs)
    assert "\n" not in str(info.value)


def test_bad_input_shape_and_unknown_option():
    with pytest.raises(ModelOptionError, match=r"input_shape=\(8, 8\).*\(H, W, C\)"):
        build_model("resnet20", (8, 8), 2, rngs=nnx.Rngs(0))
    accepted = "accepted: depth, width, norm, dropout_rate, conv_impl"
    with pytest.raises(ModelOptionError, match=accepted):
        build_model("resnet_small", SHAPE, 2, rngs=nnx.Rngs(0), blocks=3)
    with pytest.raises(ModelOptionError, match="depth=9"):
        models.ResNet56(SHAPE, 2, rngs=nnx.Rngs(0), depth=9)
