"""Tests of the model zoo: shapes, gradients, split-state jit/scan/vmap, registry and options."""

import inspect
import math
import subprocess
import sys
import textwrap
from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import models
from models import (
    MODELS,
    ModelOptionError,
    build_model,
    count_params,
    default_model_for_kind,
    get_model_class,
    register_model,
)
from models.layers import ConvND
from tests.conftest import ROOT, small_config
from workflow import config_lib, engine
from workflow.errors import UsageError

BATCH = 4
NUM_OUTPUTS = 3

# A representative (small) input shape and options per registered model: odd, non-square and
# multi-channel where that can expose axis-order bugs. Dense layers share shapes (16->8, 8->3)
# across models because eager initialization compiles a program per parameter shape.
CASES: dict[str, tuple[tuple[int, ...], dict]] = {
    "mlp": ((8, 2), {"hidden_sizes": (8,)}),
    "lenet": ((17, 8, 2), {"features": (2, 2), "hidden_sizes": (8,)}),  # 17x8 -> 8x4 -> 4x2
    "lstm": ((7, 2), {"hidden_size": 8}),
    "tcn": ((32, 2), {"channels": (2, 2, 2), "kernel_sizes": (3, 3, 3)}),  # 32->16->8->4
}

# Built models as split state, so each configuration initializes once per session (eager
# initialization compiles many small ops, which is slow on a small CPU).
_BUILT: dict[tuple, tuple[nnx.GraphDef, nnx.State]] = {}


def make(name: str, *, fresh: bool = False, **overrides) -> tuple[nnx.Module, jax.Array, jax.Array]:
    """A new model `name` on its representative shape (seed 0), a random batch and labels."""
    shape, kwargs = CASES[name]
    key = (name, tuple(sorted(overrides.items())))
    if fresh or key not in _BUILT:
        model = build_model(name, shape, NUM_OUTPUTS, rngs=nnx.Rngs(0), **{**kwargs, **overrides})
        if fresh:
            return model, *batch(name)
        _BUILT[key] = nnx.split(model)
    graphdef, state = _BUILT[key]
    # merge would reuse the cached Variables; a tree map gives each caller fresh ones (the
    # arrays themselves are immutable), so tests that update or retrain a model stay isolated.
    return nnx.merge(graphdef, jax.tree.map(lambda a: a, state)), *batch(name)


def batch(name: str) -> tuple[jax.Array, jax.Array]:
    """A fixed random input batch for model `name` and integer labels."""
    shape = CASES[name][0]
    # NumPy, not jax.random: eager jax.random compiles a program per shape.
    x = np.random.default_rng(100).standard_normal((BATCH, *shape)).astype(np.float32)
    return jnp.asarray(x), jnp.arange(BATCH) % NUM_OUTPUTS


def xent(logits: jax.Array, y: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


# Pure functions over split state, as the trainer uses them. The graphdef is static, so each
# model structure compiles once and later tests reuse the cache (compiles dominate run time).
@partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, x: jax.Array):
    return nnx.merge(graphdef, params, rest)(x)


TRAIN_STEPS = 20


@partial(jax.jit, static_argnums=0)
def _train(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State, x, y):
    """lax.scan of TRAIN_STEPS SGD steps: (first step's param grads, final params, losses)."""

    def loss(p):
        return xent(nnx.merge(graphdef, p, rest)(x), y)

    def step(p, _):
        value, g = jax.value_and_grad(loss)(p)
        return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), (value, g)

    final, (losses, grads) = jax.lax.scan(step, params, None, length=TRAIN_STEPS)
    return jax.tree.map(lambda g: g[0], grads), final, losses


def apply(model: nnx.Module, x: jax.Array) -> jax.Array:
    """model(x) through jax.jit of a pure function of nnx.split(model, nnx.Param, ...)."""
    return _forward(*nnx.split(model, nnx.Param, ...), x)


def param_grads(model: nnx.Module, x: jax.Array, y: jax.Array) -> nnx.State:
    """Gradients of the cross-entropy w.r.t. the nnx.Param part of the split state."""
    return _train(*nnx.split(model, nnx.Param, ...), x, y)[0]


def test_every_registered_model_has_a_case():
    # The escalation models (resnet*, transformer, wavenet) have their own test files.
    escalation = {"resnet", "resnet20", "resnet32", "resnet56", "resnet_small"}
    escalation |= {"transformer", "wavenet"}
    assert set(CASES) == {"mlp", "lenet", "lstm", "tcn"}
    assert set(MODELS) - set(CASES) <= escalation


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_shape_and_finite(name):
    model, x, _ = make(name)
    out = apply(model, x)
    chex.assert_shape(out, (BATCH, NUM_OUTPUTS))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
    # Eager calls agree with the jitted pure function over split state.
    np.testing.assert_allclose(model(x), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_param_gets_a_finite_nonzero_gradient(name):
    model, x, y = make(name)
    grads = param_grads(model, x, y)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    assert len(leaves) >= 2
    assert jax.tree.structure(grads) == jax.tree.structure(nnx.state(model, nnx.Param))
    for path, g in leaves:
        g = np.asarray(g)
        where = jax.tree_util.keystr(path)
        assert np.all(np.isfinite(g)), f"{name}{where}: non-finite gradient"
        assert np.any(g != 0), f"{name}{where}: gradient is all zero"


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_scan_over_split_state_trains(name):
    """A jitted, lax.scan'ned pure SGD loop over split state lowers the loss on a fixed batch."""
    model, x, y = make(name)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    _, new_params, losses = _train(graphdef, params, rest, x, y)
    assert losses.shape == (TRAIN_STEPS,)
    assert float(losses[-1]) < 0.9 * float(losses[0]), losses
    # The trained params load back into the module and change its function accordingly.
    nnx.update(model, new_params)
    trained = apply(model, x)
    np.testing.assert_allclose(trained, _forward(graphdef, new_params, rest, x), rtol=1e-6)
    assert float(xent(trained, y)) < 0.9 * float(losses[0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_per_example_matches_batch(name):
    model, x, _ = make(name)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def per_example(x):
        return jax.vmap(lambda xi: nnx.merge(graphdef, params, rest)(xi[None])[0])(x)

    np.testing.assert_allclose(per_example(x), apply(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_eval_mode_is_deterministic(name):
    model, x, _ = make(name)
    model.eval()
    np.testing.assert_array_equal(apply(model, x), apply(model, x))
    # A rebuild from the same seed gives the same function.
    again, _, _ = make(name, fresh=True)
    again.eval()
    np.testing.assert_array_equal(apply(model, x), apply(again, x))


@pytest.mark.parametrize("name", ["mlp", "lenet"])
def test_dropout_is_random_in_train_mode_and_off_in_eval(name):
    model, x, _ = make(name, dropout_rate=0.5)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def forward(p, r):
        m = nnx.merge(graphdef, p, r)
        out = m(x)
        return out, nnx.split(m, nnx.Param, ...)[2]

    first, rest = forward(params, rest)
    second, rest = forward(params, rest)
    assert not np.allclose(first, second), "dropout masks should change between steps"
    model.eval()
    np.testing.assert_array_equal(model(x), model(x))
    model.train()
    assert not np.allclose(model(x), model(x))


def test_default_models_carry_no_rng_state():
    for name in CASES:
        model, _, _ = make(name)
        _, _, rest = nnx.split(model, nnx.Param, ...)
        assert jax.tree.leaves(rest) == [], name


# --- registry -----------------------------------------------------------------------------


TINY_MODULE = textwrap.dedent(
    """
    import math

    from flax import nnx

    class TinyNet(nnx.Module):
        def __init__(self, input_shape, num_outputs, *, rngs, scale=1.0):
            self.scale = scale
            self.linear = nnx.Linear(math.prod(input_shape), num_outputs, rngs=rngs)

        def __call__(self, x):
            return self.scale * self.linear(x.reshape(x.shape[0], -1))

    NOT_A_MODEL = 3
    """
)


@pytest.fixture
def tiny_module(tmp_path, monkeypatch):
    (tmp_path / "zoo_tiny_models.py").write_text(TINY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "zoo_tiny_models"


def test_import_path_loading(tiny_module):
    cls = get_model_class(f"{tiny_module}:TinyNet")
    assert cls.__name__ == "TinyNet" and issubclass(cls, nnx.Module)
    model = build_model(f"{tiny_module}:TinyNet", (8, 2), 8, rngs=nnx.Rngs(0), scale=2.0)
    assert model.scale == 2.0
    chex.assert_shape(apply(model, jnp.ones((5, 8, 2))), (5, 8))
    assert count_params(model) == 16 * 8 + 8
    with pytest.raises(ModelOptionError, match="accepted: scale"):
        build_model(f"{tiny_module}:TinyNet", (8, 2), 8, rngs=nnx.Rngs(0), sclae=2.0)


@pytest.mark.parametrize(
    "bad",
    [
        "zoo_tiny_models:NOT_A_MODEL",
        "zoo_tiny_models:Missing",
        "no_such_module_xyz:Net",
        "convnet",
        "models.mlp:",
    ],
)
def test_bad_model_names_are_one_line_option_errors(tiny_module, bad):
    with pytest.raises(ModelOptionError) as info:
        get_model_class(bad)
    message = str(info.value)
    assert "\n" not in message
    assert repr(bad) in message
    for name in ("lenet", "lstm", "mlp", "tcn"):
        assert name in message


def test_short_names_and_import_paths_resolve_to_the_same_classes():
    assert get_model_class("mlp") is models.MLP
    assert get_model_class("LeNet") is models.LeNet
    assert get_model_class("models.lstm:LSTM") is models.LSTM
    assert get_model_class("models.tcn:TCN") is MODELS["tcn"]


def test_unknown_kwarg_lists_accepted_ones():
    with pytest.raises(ModelOptionError) as info:
        build_model("mlp", (4,), 2, rngs=nnx.Rngs(0), hidden=(3,))
    message = str(info.value)
    assert "hidden" in message and "\n" not in message
    for accepted in ("hidden_sizes", "activation", "dropout_rate"):
        assert accepted in message


def test_register_model_decorator(monkeypatch):
    monkeypatch.setattr(models, "MODELS", dict(MODELS))

    @register_model("tiny_linear")
    class TinyLinear(nnx.Module):
        def __init__(self, input_shape, num_outputs, *, rngs):
            self.linear = nnx.Linear(input_shape[0], num_outputs, rngs=rngs)

        def __call__(self, x):
            return self.linear(x)

    assert models.MODELS["tiny_linear"] is TinyLinear
    assert get_model_class("tiny_linear") is TinyLinear
    with pytest.raises(TypeError):
        register_model("not_a_module")(int)


def test_default_model_for_kind():
    assert default_model_for_kind("image") == "lenet"
    assert default_model_for_kind("sequence") == "lstm"
    assert default_model_for_kind("tabular") == "mlp"
    for kind in ("image", "sequence", "tabular"):
        assert default_model_for_kind(kind) in MODELS
    with pytest.raises(ModelOptionError, match="image, sequence, tabular"):
        default_model_for_kind("audio")


@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "pattern"),
    [
        ("mlp", (4,), {"activation": "swish"}, "activation='swish'.*gelu, relu, tanh"),
        ("mlp", (4,), {"dropout_rate": 1.0}, "dropout_rate=1.0"),
        ("mlp", (4,), {"hidden_sizes": "100"}, "hidden_sizes='100'"),
        ("lenet", (8, 8), {}, r"input_shape=\(8, 8\).*\(H, W, C\)"),
        ("lstm", (8, 2), {"readout": "max"}, "readout='max'.*last, mean"),
        ("lstm", (8,), {}, r"\(T, F\)"),
        ("tcn", (40, 1), {"channels": (4, 4)}, "same length"),
        ("tcn", (40, 1), {"conv_impl": "fft"}, "conv_impl='fft'.*auto, xla, im2col"),
        ("tcn", (2, 1), {}, "too short"),
        ("tcn", (40, 1), {"padding": -1}, "padding=-1"),
        ("mlp", (0, 3), {}, r"input_shape=\(0, 3\)"),
    ],
)
def test_bad_options_are_one_line_option_errors(name, shape, kwargs, pattern):
    with pytest.raises(ModelOptionError, match=pattern) as info:
        build_model(name, shape, 2, rngs=nnx.Rngs(0), **kwargs)
    assert "\n" not in str(info.value)


def test_bad_num_outputs_is_an_option_error():
    with pytest.raises(ModelOptionError, match="num_outputs=0"):
        build_model("mlp", (4,), 0, rngs=nnx.Rngs(0))


def test_count_params_mlp():
    model, _, _ = make("mlp")
    assert count_params(model) == (16 * 8 + 8) + (8 * 3 + 3)
    # Works on abstract models too (nnx.eval_shape), so sizes can be checked without init.
    deep = nnx.eval_shape(
        lambda: build_model("mlp", (5, 2), 3, rngs=nnx.Rngs(0), hidden_sizes=(7, 4))
    )
    assert count_params(deep) == (10 * 7 + 7) + (7 * 4 + 4) + (4 * 3 + 3)
    linear = nnx.eval_shape(lambda: build_model("mlp", (5,), 3, rngs=nnx.Rngs(0), hidden_sizes=()))
    assert count_params(linear) == 5 * 3 + 3


NUMPY_ACTIVATIONS = {
    "relu": lambda h: np.maximum(h, 0.0),
    "tanh": np.tanh,
    # jax.nn.gelu's default tanh approximation.
    "gelu": lambda h: 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3))),
}


@pytest.mark.parametrize("activation", sorted(NUMPY_ACTIVATIONS))
def test_mlp_matches_numpy(activation):
    model, x, _ = make("mlp", activation=activation)
    hidden, out = model.hidden[0], model.out
    flat = np.asarray(x).reshape(BATCH, -1)
    h = NUMPY_ACTIVATIONS[activation](flat @ np.asarray(hidden.kernel[...]) + hidden.bias[...])
    expected = h @ np.asarray(out.kernel[...]) + np.asarray(out.bias[...])
    np.testing.assert_allclose(apply(model, x), expected, rtol=1e-5, atol=1e-5)


# --- LeNet ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "flat"),
    [
        ((8, 8, 1), 2 * 2 * 16),
        ((28, 28, 1), 7 * 7 * 16),
        ((32, 32, 3), 8 * 8 * 16),
        ((5, 3, 1), 2 * 3 * 16),
    ],
)
def test_lenet_image_sizes(shape, flat):
    # Abstract evaluation checks every shape without compiling anything.
    model = nnx.eval_shape(lambda: build_model("lenet", shape, 10, rngs=nnx.Rngs(0)))
    assert model.dense[0].in_features == flat
    out = jax.eval_shape(apply, model, jax.ShapeDtypeStruct((2, *shape), jnp.float32))
    chex.assert_shape(out, (2, 10))


@pytest.mark.parametrize("name", ["tcn", "lenet"])
def test_conv_models_im2col_match_xla(name):
    xla, x, _ = make(name, conv_impl="xla")
    im2col, _, _ = make(name, conv_impl="im2col")
    assert all(conv.conv_impl == "xla" for conv in xla.convs)
    assert all(conv.conv_impl == "im2col" for conv in im2col.convs)
    np.testing.assert_allclose(apply(xla, x), apply(im2col, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kernel_size", "strides", "padding", "shape"),
    [
        ((3,), (2,), ((1, 1),), (23, 2)),  # the TCN's strided, padded 1-D conv
        ((5, 5), (2, 1), ((1, 2), (2, 0)), (9, 8, 2)),  # 2-D, uneven strides and padding
    ],
)
def test_conv_layer_im2col_matches_xla_with_gradients(kernel_size, strides, padding, shape):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, *shape)), jnp.float32)
    results = []
    for impl in ("xla", "im2col"):
        # Two output channels: kernel shapes match the test models', whose init is compiled.
        conv = ConvND(
            shape[-1], 2, kernel_size, strides=strides, padding=padding, conv_impl=impl,
            rngs=nnx.Rngs(0),
        )  # fmt: skip
        graphdef, state = nnx.split(conv)

        @jax.jit
        def loss_and_grads(state, x, graphdef=graphdef):
            # A fixed nonlinear loss so every kernel tap, bias and input gets its own gradient.
            return jax.value_and_grad(
                lambda s, x: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(x))), argnums=(0, 1)
            )(state, x)

        results.append(loss_and_grads(state, x))
    chex.assert_trees_all_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_conv_impl_auto_uses_im2col_on_cpu():
    model, _, _ = make("tcn")
    expected = "im2col" if jax.default_backend() == "cpu" else "xla"
    assert all(conv.conv_impl == expected for conv in model.convs)


# --- TCN ------------------------------------------------------------------------------------


def test_tcn_defaults_are_the_mnist1d_paper_cnn():
    model = nnx.eval_shape(lambda: build_model("tcn", (40, 1), 10, rngs=nnx.Rngs(0)))
    assert model.lengths == (40, 19, 10, 5)
    assert model.out.in_features == 25 * 5
    # conv 1->25 k5, 25->25 k3 twice, linear 125->10 (weights + biases).
    assert count_params(model) == (5 * 25 + 25) + 2 * (3 * 25 * 25 + 25) + (125 * 10 + 10)


def test_tcn_strided_conv_matches_direct_formula():
    """Conv1D computes y[t] = b + sum_j xpad[stride*t + j] @ W[j] (cross-correlation)."""
    model, x, _ = make("tcn")
    conv = model.convs[0]  # kernel 3, stride 2, padding 1: length 32 -> 16
    assert model.lengths == (32, 16, 8, 4)
    xpad = np.pad(np.asarray(x[0]), ((1, 1), (0, 0)))
    w, b = np.asarray(conv.kernel[...]), np.asarray(conv.bias[...])
    expected = np.stack([b + sum(xpad[2 * t + j] @ w[j] for j in range(3)) for t in range(16)])
    np.testing.assert_allclose(conv(x)[0], expected, rtol=1e-5, atol=1e-5)


# --- LSTM -----------------------------------------------------------------------------------


def reference_lstm_features(model: models.LSTM, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-step Python loop of the textbook LSTM; returns (last hidden, mean hidden)."""
    w_in, w_rec, bias = (
        np.asarray(v[...], np.float64) for v in (model.w_in, model.w_rec, model.bias)
    )
    hsize = model.hidden_size
    h = c = np.zeros((x.shape[0], hsize))
    hs = []
    for t in range(x.shape[1]):
        z = x[:, t] @ w_in + h @ w_rec + bias
        i, f, o = (1 / (1 + np.exp(-z[:, k * hsize : (k + 1) * hsize])) for k in range(3))
        c = f * c + i * np.tanh(z[:, 3 * hsize :])
        h = o * np.tanh(c)
        hs.append(h)
    return h, np.mean(hs, axis=0)


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_lstm_matches_reference_loop(readout):
    model, x, _ = make("lstm", readout=readout)
    last, mean = reference_lstm_features(model, np.asarray(x, np.float64))
    features = last if readout == "last" else mean
    expected = features @ np.asarray(model.out.kernel[...]) + np.asarray(model.out.bias[...])
    np.testing.assert_allclose(apply(model, x), expected, rtol=1e-4, atol=1e-5)


def test_lstm_readouts_differ_and_use_the_whole_sequence():
    last_model, x, _ = make("lstm", readout="last")
    mean_model, _, _ = make("lstm", readout="mean")
    assert not np.allclose(apply(last_model, x), apply(mean_model, x))
    # The first time step reaches the output through the recurrence, for every example.
    nudged = x.at[:, 0].add(1.0)
    for model in (last_model, mean_model):
        change = np.abs(np.asarray(apply(model, nudged) - apply(model, x))).sum(axis=-1)
        assert np.all(change > 1e-6), change


def test_lstm_init():
    model, _, _ = make("lstm")
    hsize = model.hidden_size
    bias = np.asarray(model.bias[...])
    np.testing.assert_array_equal(bias[hsize : 2 * hsize], 1.0)
    assert np.all(np.delete(bias, np.s_[hsize : 2 * hsize]) == 0)
    w_rec = np.asarray(model.w_rec[...])
    for k in range(4):
        block = w_rec[:, k * hsize : (k + 1) * hsize]
        np.testing.assert_allclose(block.T @ block, np.eye(hsize), atol=1e-5)


def test_lstm_single_step_sequence_readouts_agree():
    x, _ = batch("lstm")
    x = x[:, :1]
    options = CASES["lstm"][1]
    last = build_model("lstm", (1, 2), NUM_OUTPUTS, rngs=nnx.Rngs(0), readout="last", **options)
    mean = build_model("lstm", (1, 2), NUM_OUTPUTS, rngs=nnx.Rngs(0), readout="mean", **options)
    chex.assert_shape(apply(last, x), (BATCH, NUM_OUTPUTS))
    np.testing.assert_allclose(apply(last, x), apply(mean, x), rtol=1e-6, atol=1e-6)


# --- standing alone, and the workflow's view of its errors ----------------------------------------


def test_the_zoo_stands_alone_without_the_workflow():
    # A fresh interpreter where `import workflow` fails: every module of the zoo still loads,
    # and build_model rejects a bad option with the zoo's own error.
    code = textwrap.dedent(
        """
        import pkgutil, sys
        sys.modules["workflow"] = None  # any import of it raises ImportError
        import models
        for info in pkgutil.iter_modules(models.__path__):
            __import__(f"models.{info.name}")
        from flax import nnx
        try:
            models.build_model("mlp", (4,), 2, rngs=nnx.Rngs(0), hidden_sizes="1")
        except models.ModelOptionError as e:
            print(type(e).__name__, e)
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "ModelOptionError hidden_sizes='1' is invalid; expected a sequence of positive integers"
    ]


def test_the_workflow_reports_a_model_option_error_as_the_same_usage_error():
    with pytest.raises(ModelOptionError) as direct:
        build_model("mlp", (4,), 2, rngs=nnx.Rngs(0), activation="swish")
    config = small_config("tabular")
    config.model.activation = "swish"
    with pytest.raises(UsageError) as built:
        engine.build_model(config, (4,), 2)
    assert str(built.value) == str(direct.value)
    with pytest.raises(ModelOptionError) as direct:
        get_model_class("convnet")
    with pytest.raises(UsageError) as configured:
        config_lib.model_config("convnet")
    assert str(configured.value) == str(direct.value)


# --- optional layers leave the core initialization as it is -------------------------------------

# Options that add a layer: the default that leaves it out, and a value that puts it in.
OPTIONAL_LAYERS = {"norm": ("none", "layer"), "dropout_rate": (0.0, 0.2), "vocab_size": (0, 10)}

# Small options per registered model (eager initialization compiles an op per shape); token-id
# inputs need one feature per step.
INIT_CASES: dict[str, tuple[tuple[int, ...], dict]] = {
    "mlp": ((6,), {"hidden_sizes": (4,)}),
    "lenet": ((8, 8, 1), {"features": (2, 2), "hidden_sizes": (4,)}),
    "lstm": ((5, 1), {"hidden_size": 4, "embed_size": 3}),
    "tcn": ((16, 1), {"channels": (2, 2, 2)}),
    "transformer": (
        (8, 1),
        {"d_model": 4, "mlp_dim": 4, "num_heads": 2, "num_layers": 1, "embed_size": 3},
    ),
    "wavenet": ((8, 1), {"channels": 2, "skip_channels": 2, "num_layers": 2}),
}
# The ResNets share one class: the smallest depth shows its build order.
INIT_CASES |= {n: ((8, 8, 1), {"width": 2, "depth": 8}) for n in MODELS if n.startswith("resnet")}


def _initial_params(name: str, **options) -> dict[tuple, np.ndarray]:
    """The initial parameters of model `name` with `options`, by path."""
    shape, small = INIT_CASES[name]
    # Seeded as the workflow seeds a model: Dropout draws from its own stream.
    rngs = nnx.Rngs(0, dropout=1)
    model = build_model(name, shape, NUM_OUTPUTS, rngs=rngs, **small, **options)
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_optional_layers_leave_the_core_initialization_unchanged(name):
    # Optional layers are built after the core layers (models/__init__.py): with one on, every
    # parameter of the model without it starts at the same value, seed for seed.
    defaults = inspect.signature(MODELS[name].__init__).parameters
    switched = [
        (option, on)
        for option, (off, on) in OPTIONAL_LAYERS.items()
        if option in defaults and defaults[option].default == off
    ]
    assert switched, f"{name} has no optional layer to test"
    off = _initial_params(name)
    for option, value in switched:
        on = _initial_params(name, **{option: value})
        compared = [p for p, a in off.items() if p in on and on[p].shape == a.shape]
        # Token ids replace the input features: only the first projection changes shape.
        assert len(compared) >= len(off) - (option == "vocab_size"), option
        for path in compared:
            if option == "norm" and path == ("out", "kernel"):
                # The head behind normalized features: the same draw at a tenth of the
                # variance (models.mlp.head_init).
                np.testing.assert_allclose(on[path], math.sqrt(0.1) * off[path], rtol=1e-6)
            else:
                np.testing.assert_array_equal(on[path], off[path], err_msg=f"{option} {path}")
