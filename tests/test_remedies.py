"""The improve stage's decision list for the model zoo: every built-in model's remedies pinned,
and a user's model that declares (or does not declare) how it grows."""

import math
import os
import re
from collections.abc import Sequence

import jax
import pytest
from flax import nnx

import models
from tests.conftest import ROOT, small_config
from workflow import config_lib, experiment, improve
from workflow.diagnostics import bias_variance
from workflow.engine.state import model_kwargs
from workflow.search import remedies

# The data kind each model is built for in configs/synthetic.py (image for the ResNets).
KIND = {"mlp": "tabular", "lstm": "sequence", "tcn": "sequence", "transformer": "sequence"}
KIND |= {"wavenet": "sequence", "lenet": "image"}

REMOVED = "removed"  # a config key the remedy drops (an escalation replaces the model's options)


class _Data:
    """Just what the remedies read from a dataset."""

    def __init__(self, kind, input_shape):
        self.kind = kind
        self.x_train = [0] * 300
        self.input_shape = input_shape
        self.info = {}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _changes(base, new) -> dict:
    """The config keys a remedy sets (REMOVED for those it drops), dotted, sorted."""
    a, b = _flat(base.to_dict()), _flat(new.to_dict())
    out = {k: b[k] for k in b if k not in a or a[k] != b[k]}
    out.update({k: REMOVED for k in a if k not in b})
    return dict(sorted(out.items()))


# (model, input shape, model options changed from the defaults): the model-sized remedies
# (bigger, deeper, the next architecture, smaller) as (name, change, config keys set), exactly
# as the decision list offered them before models declared their own sizes and ladders.
PINNED = {
    ("mlp", (20,), ()): [
        ("bigger model", "hidden_sizes=(200,)", {"model.hidden_sizes": (200,)}),
        ("deeper model", "hidden_sizes=(100, 100)", {"model.hidden_sizes": (100, 100)}),
        ("smaller model", "hidden_sizes=(50,)", {"model.hidden_sizes": (50,)}),
    ],
    ("mlp", (20,), (("hidden_sizes", (1, 3)),)): [
        ("bigger model", "hidden_sizes=(2, 6)", {"model.hidden_sizes": (2, 6)}),
        ("deeper model", "hidden_sizes=(1, 3, 3)", {"model.hidden_sizes": (1, 3, 3)}),
        ("smaller model", "hidden_sizes=(1, 2)", {"model.hidden_sizes": (1, 2)}),
    ],
    ("mlp", (20,), (("hidden_sizes", ()),)): [
        ("bigger model", "hidden_sizes=()", {}),
        ("smaller model", "hidden_sizes=()", {}),
    ],
    ("lenet", (8, 8, 1), ()): [
        (
            "bigger model",
            "hidden_sizes=(240, 168), features=(12, 32)",
            {"model.features": (12, 32), "model.hidden_sizes": (240, 168)},
        ),
        (
            "escalate to resnet_small",
            "model=resnet_small",
            {
                "model.depth": 8,
                "model.features": REMOVED,
                "model.hidden_sizes": REMOVED,
                "model.name": "resnet_small",
                "model.norm": "batch",
                "model.width": 8,
            },
        ),
        (
            "smaller model",
            "hidden_sizes=(60, 42), features=(3, 8)",
            {"model.features": (3, 8), "model.hidden_sizes": (60, 42)},
        ),
    ],
    ("resnet", (32, 32, 3), ()): [
        ("bigger model", "width=32", {"model.width": 32}),
        ("escalate to resnet32", "model=resnet32", {"model.depth": 32, "model.name": "resnet32"}),
        ("smaller model", "width=8", {"model.width": 8}),
    ],
    ("resnet20", (8, 8, 1), ()): [
        ("bigger model", "width=32", {"model.width": 32}),
        ("escalate to resnet32", "model=resnet32", {"model.depth": 32, "model.name": "resnet32"}),
        ("smaller model", "width=8", {"model.width": 8}),
    ],
    ("resnet32", (32, 32, 3), ()): [
        ("bigger model", "width=32", {"model.width": 32}),
        ("escalate to resnet56", "model=resnet56", {"model.depth": 56, "model.name": "resnet56"}),
        ("smaller model", "width=8", {"model.width": 8}),
    ],
    ("resnet56", (32, 32, 3), ()): [
        ("bigger model", "width=32", {"model.width": 32}),
        ("smaller model", "width=8", {"model.width": 8}),
    ],
    ("resnet_small", (8, 8, 1), ()): [
        ("bigger model", "width=16", {"model.width": 16}),
        ("smaller model", "width=4", {"model.width": 4}),
    ],
    ("resnet_small", (32, 32, 3), ()): [
        ("bigger model", "width=16", {"model.width": 16}),
        (
            "escalate to resnet20",
            "model=resnet20",
            {"model.depth": 20, "model.name": "resnet20", "model.width": 16},
        ),
        ("smaller model", "width=4", {"model.width": 4}),
    ],
    ("lstm", (40, 1), ()): [
        ("bigger model", "hidden_size=64", {"model.hidden_size": 64}),
        (
            "escalate to wavenet",
            "model=wavenet",
            {
                "model.channels": 32,
                "model.conv_impl": "auto",
                "model.embed_size": REMOVED,
                "model.hidden_size": REMOVED,
                "model.kernel_size": 2,
                "model.name": "wavenet",
                "model.norm": REMOVED,
                "model.num_layers": 6,
                "model.pooling": "mean",
                "model.readout": REMOVED,
                "model.skip_channels": 32,
                "model.vocab_size": REMOVED,
            },
        ),
        ("smaller model", "hidden_size=16", {"model.hidden_size": 16}),
    ],
    ("lstm", (16, 1), ()): [
        ("bigger model", "hidden_size=64", {"model.hidden_size": 64}),
        (
            "escalate to wavenet",
            "model=wavenet",
            {
                "model.channels": 32,
                "model.conv_impl": "auto",
                "model.embed_size": REMOVED,
                "model.hidden_size": REMOVED,
                "model.kernel_size": 2,
                "model.name": "wavenet",
                "model.norm": REMOVED,
                "model.num_layers": 4,
                "model.pooling": "mean",
                "model.readout": REMOVED,
                "model.skip_channels": 32,
                "model.vocab_size": REMOVED,
            },
        ),
        ("smaller model", "hidden_size=16", {"model.hidden_size": 16}),
    ],
    ("tcn", (40, 1), ()): [
        ("bigger model", "channels=(50, 50, 50)", {"model.channels": (50, 50, 50)}),
        (
            "escalate to wavenet",
            "model=wavenet",
            {
                "model.channels": 32,
                "model.kernel_size": 2,
                "model.kernel_sizes": REMOVED,
                "model.name": "wavenet",
                "model.norm": REMOVED,
                "model.num_layers": 6,
                "model.padding": REMOVED,
                "model.pooling": "mean",
                "model.skip_channels": 32,
                "model.strides": REMOVED,
            },
        ),
        ("smaller model", "channels=(12, 12, 12)", {"model.channels": (12, 12, 12)}),
    ],
    ("transformer", (40, 1), ()): [
        ("bigger model", "d_model=128, mlp_dim=256", {"model.d_model": 128, "model.mlp_dim": 256}),
        (
            "escalate to wavenet",
            "model=wavenet",
            {
                "model.channels": 32,
                "model.conv_impl": "auto",
                "model.d_model": REMOVED,
                "model.embed_size": REMOVED,
                "model.kernel_size": 2,
                "model.mlp_dim": REMOVED,
                "model.name": "wavenet",
                "model.num_heads": REMOVED,
                "model.num_layers": 6,
                "model.patch_size": REMOVED,
                "model.positions": REMOVED,
                "model.skip_channels": 32,
                "model.vocab_size": REMOVED,
            },
        ),
        ("smaller model", "d_model=32, mlp_dim=64", {"model.d_model": 32, "model.mlp_dim": 64}),
    ],
    ("transformer", (40, 1), (("d_model", 63), ("num_heads", 3))): [
        ("bigger model", "d_model=126, mlp_dim=256", {"model.d_model": 126, "model.mlp_dim": 256}),
        (
            "escalate to wavenet",
            "model=wavenet",
            {
                "model.channels": 32,
                "model.conv_impl": "auto",
                "model.d_model": REMOVED,
                "model.embed_size": REMOVED,
                "model.kernel_size": 2,
                "model.mlp_dim": REMOVED,
                "model.name": "wavenet",
                "model.num_heads": REMOVED,
                "model.num_layers": 6,
                "model.patch_size": REMOVED,
                "model.positions": REMOVED,
                "model.skip_channels": 32,
                "model.vocab_size": REMOVED,
            },
        ),
        ("smaller model", "d_model=30, mlp_dim=64", {"model.d_model": 30, "model.mlp_dim": 64}),
    ],
    ("wavenet", (40, 1), ()): [
        ("bigger model", "channels=64", {"model.channels": 64}),
        (
            "escalate to transformer",
            "model=transformer",
            {
                "model.channels": REMOVED,
                "model.conv_impl": REMOVED,
                "model.d_model": 64,
                "model.embed_size": 64,
                "model.kernel_size": REMOVED,
                "model.mlp_dim": 128,
                "model.name": "transformer",
                "model.num_heads": 4,
                "model.num_layers": 2,
                "model.patch_size": 4,
                "model.positions": "learned",
                "model.skip_channels": REMOVED,
                "model.vocab_size": 0,
            },
        ),
        ("smaller model", "channels=16", {"model.channels": 16}),
    ],
}

MODEL_REASONS = {
    "bigger model": "underfit: make the model bigger (reduces bias)",
    "deeper model": "underfit: one more hidden layer",
    "smaller model": "overfit: reduce model size",
}


def _model_remedies(name, shape, overrides):
    config = small_config(KIND.get(name, "image"), name)
    for key, value in overrides:
        config.model[key] = value
    out = remedies.candidates(
        config, _Data(KIND.get(name, "image"), shape), ["underfit", "overfit"]
    )
    sized = [r for r in out if r.name in MODEL_REASONS or r.name.startswith("escalate")]
    return config, sized


@pytest.mark.parametrize(("name", "shape", "overrides"), list(PINNED))
def test_model_remedies_are_pinned_for_every_built_in_model(name, shape, overrides):
    config, sized = _model_remedies(name, shape, overrides)
    assert [(r.name, r.change, _changes(config, r.config)) for r in sized] == PINNED[
        (name, shape, overrides)
    ]
    for r in sized:
        target = r.name.removeprefix("escalate to ")
        expected = MODEL_REASONS.get(
            r.name, f"underfit: a model closer to the state of the art ({name} → {target})"
        )
        assert r.reason == expected and r.verdict == expected.split(":")[0]


def test_every_registered_model_is_pinned():
    assert {name for name, _, _ in PINNED} == set(models.MODELS)


def test_the_two_noise_estimates_keep_their_numbers():
    # The improve stage's: one error rate, n val examples each, variance floored at 1/n.
    gain = remedies.remedy_gain_noise(0.3, 400, z=1.0)
    assert gain == pytest.approx(0.0324037034920393, rel=1e-12)
    assert remedies.remedy_gain_noise(0.0, 100) == pytest.approx(0.0282842712474619, rel=1e-12)
    # The bias-variance gaps': Wald variances of each rate on its own set; exact references add 0.
    gap = bias_variance.gap_noise(2.0, (0.3, 400), (0.1, None))
    assert gap == pytest.approx(0.0458257569495584, rel=1e-12)
    gap = bias_variance.gap_noise(1.0, (0.2, 100), (0.25, 50))
    assert gap == pytest.approx(0.07314369419163898, rel=1e-12)


def test_the_remedies_know_no_model_by_name():
    source = open(os.path.join(ROOT, "workflow", "search", "remedies.py")).read()
    for name in models.MODELS:
        assert not re.search(rf"\b{name}\b", source, re.IGNORECASE), name


def test_every_built_in_model_declares_its_growth_in_its_own_options():
    for name, cls in models.MODELS.items():
        options = config_lib.model_config(name)
        sizes = models.growth.size_options(cls)
        assert sizes and set(sizes) <= set(options), name
        for key, divisor in getattr(cls, "SIZE_DIVISIBLE_BY", {}).items():
            assert key in sizes and divisor in options, name
        assert getattr(cls, "DEPTH_OPTION", None) in (None, *sizes), name
        for shape in ((8, 8, 1), (32, 32, 3), (40, 1)):
            assert set(models.growth.next_models(cls, shape)) <= set(models.MODELS), name
        assert remedies.notes(small_config(KIND.get(name, "image"), name), ["underfit"]) == []


# --- a user's model, given by import path: tests.test_remedies:<Class> ---------------------------


class PlainNet(nnx.Module):
    """A user's model that declares nothing about how it grows: Dense layers of `widths`."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        *,
        rngs: nnx.Rngs,
        widths: Sequence[int] = (8,),
        width: int = 8,  # named like a zoo size option, but not declared as one
    ) -> None:
        sizes = (math.prod(input_shape), *widths)
        self.hidden = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )
        self.out = nnx.Linear(sizes[-1], num_outputs, rngs=rngs)
        self.width = width

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.out(x)


class GrowingNet(PlainNet):
    """The same model declaring its size, its depth and its next step (models/__init__.py)."""

    SIZE_OPTIONS = ("widths",)
    DEPTH_OPTION = "widths"

    @classmethod
    def next_models(cls, input_shape: Sequence[int]) -> tuple[str, ...]:
        return ("no_such_model", "mlp")  # the first registered one is the step up


def _user_config(cls: type) -> object:
    config = small_config("tabular")
    config.model = config_lib.model_config(f"{__name__}:{cls.__name__}")
    return config


def test_a_user_model_that_declares_nothing_gets_no_size_remedy_and_a_note():
    config = _user_config(PlainNet)
    out = remedies.candidates(config, _Data("tabular", (20,)), ["underfit", "overfit"])
    names = [r.name for r in out]
    assert "train longer" in names and "L2 0.0001" in names
    assert not {"bigger model", "deeper model", "smaller model"} & set(names)
    assert not any(name.startswith("escalate") for name in names)
    (note,) = remedies.notes(config, ["underfit", "overfit"])
    assert f"model '{__name__}:PlainNet' declares no size options" in note
    assert "models/__init__.py" in note
    assert remedies.notes(config, ["val_overfit"]) == []


def test_a_user_model_that_declares_its_growth_gets_the_model_remedies():
    config = _user_config(GrowingNet)
    config.model.widths = (6, 3)
    out = remedies.candidates(config, _Data("tabular", (20,)), ["underfit", "overfit"])
    by_name = {r.name: r for r in out}
    assert by_name["bigger model"].change == "widths=(12, 6)"
    assert by_name["deeper model"].change == "widths=(6, 3, 3)"
    assert by_name["smaller model"].change == "widths=(3, 2)"
    escalated = by_name["escalate to mlp"].config.model.to_dict()
    assert escalated == config_lib.model_config("mlp").to_dict()
    assert by_name["bigger model"].config.model.width == 8  # undeclared: left alone
    assert remedies.notes(config, ["underfit", "overfit"]) == []
    # The remedy's options build the user's model at the new size.
    options = model_kwargs(by_name["bigger model"].config)
    bigger = nnx.eval_shape(
        lambda: models.build_model(config.model.name, (20,), 2, rngs=nnx.Rngs(0), **options)
    )
    assert [layer.out_features for layer in bigger.hidden] == [12, 6]


@pytest.mark.slow
def test_the_improve_stage_says_once_that_a_model_declares_no_size(tmp_path):
    config = _user_config(PlainNet)
    config.goal.test_error = 0.0  # nothing meets it: the starting point underfits
    config.improve.max_candidates = 1
    source = os.path.join(ROOT, "configs/synthetic.py") + ":tabular"
    summary = improve.run_improve(experiment.prepare(config), str(tmp_path / "improve"), source)
    assert "underfit" in summary.verdicts
    (note,) = summary.decision["notes"]
    assert "declares no size options" in note
    report = open(tmp_path / "improve" / "report.md").read()
    assert report.count(f"info: {note}") == 1
