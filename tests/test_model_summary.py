"""The model summary of a run: layers, parameter shapes and counts, output shape per layer.

Models are built abstractly (nnx.eval_shape): the summary only traces, and so does the build.
"""

import pytest
from flax import nnx

import models
from workflow.reporting import model_summary


def build(name, shape):
    return nnx.eval_shape(lambda: models.build_model(name, shape, 10, rngs=nnx.Rngs(0)))


def by_path(summary):
    return {layer["path"]: layer for layer in summary["layers"]}


def test_mlp_layers_counts_and_output_shapes():
    model = build("mlp", (40, 1))
    summary = model_summary.summarize(model, (40, 1), 32)
    assert [layer["path"] for layer in summary["layers"]] == ["", "hidden/0", "out"]
    layers = by_path(summary)
    assert layers["hidden/0"] == {
        "path": "hidden/0",
        "type": "Linear",
        "params": {"kernel": [40, 100], "bias": [100]},
        "param_count": 4100,
        "output_shape": [32, 100],
        "called": True,
    }
    assert layers["out"]["param_count"] == 1010 and layers["out"]["output_shape"] == [32, 10]
    assert layers[""]["type"] == "MLP" and layers[""]["param_count"] == 5110
    assert summary["num_params"] == models.count_params(model) == 5110
    assert "hidden/0" in summary["text"] and "5,110" in summary["text"]  # NNX's own table


def test_lenet_layers_counts_and_output_shapes():
    model = build("lenet", (8, 8, 1))
    layers = by_path(model_summary.summarize(model, (8, 8, 1), 16))
    expected = {
        "": ("LeNet", 21386, [16, 10]),
        "convs/0": ("Conv2D", 5 * 5 * 1 * 6 + 6, [16, 8, 8, 6]),
        "convs/1": ("Conv2D", 5 * 5 * 6 * 16 + 16, [16, 4, 4, 16]),
        "dense/0": ("Linear", 64 * 120 + 120, [16, 120]),
        "dense/1": ("Linear", 120 * 84 + 84, [16, 84]),
        "out": ("Linear", 84 * 10 + 10, [16, 10]),
    }
    assert {
        path: (layer["type"], layer["param_count"], layer["output_shape"])
        for path, layer in layers.items()
    } == expected
    assert layers["convs/1"]["params"] == {"kernel": [5, 5, 6, 16], "bias": [16]}


class UnusedLayerMLP(nnx.Module):
    """A layer built but never called: its parameters get no gradient."""

    def __init__(self, rngs):
        self.used = nnx.Linear(4, 3, rngs=rngs)
        self.unused = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        return self.used(x)


def test_a_layer_never_called_is_listed_without_an_output_shape():
    model = nnx.eval_shape(lambda: UnusedLayerMLP(nnx.Rngs(0)))
    layers = by_path(model_summary.summarize(model, (4,), 2))
    assert layers["unused"]["called"] is False and layers["unused"]["output_shape"] is None
    assert layers["unused"]["param_count"] == 12 and layers["used"]["output_shape"] == [2, 3]
    assert "not called" in model_summary.markdown(list(layers.values()), 2)


class FailingMLP(UnusedLayerMLP):
    def __call__(self, x):
        raise ValueError("broken model")


def test_a_model_that_fails_still_lists_its_parameters_and_nnx_is_restored():
    call, eval_ = nnx.Linear.__call__, nnx.Linear.eval
    summary = model_summary.summarize(nnx.eval_shape(lambda: FailingMLP(nnx.Rngs(0))), (4,), 2)
    assert "broken model" in summary["error"]
    assert {layer["path"] for layer in summary["layers"]} == {"used", "unused"}
    # nnx.tabulate patches the classes' methods while it traces; they are put back.
    assert nnx.Linear.__call__ is call and nnx.Linear.eval is eval_
    layer = nnx.eval_shape(lambda: nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    assert model_summary.summarize(layer, (2,), 1)["layers"][0]["output_shape"] == [1, 2]


@pytest.mark.parametrize(
    "name,shape", [("lstm", (40, 1)), ("transformer", (40, 1)), ("resnet_small", (8, 8, 3))]
)
def test_other_models_report_the_model_output_shape(name, shape):
    model = build(name, shape)
    summary = model_summary.summarize(model, shape, 8)
    assert "error" not in summary
    assert by_path(summary)[""]["output_shape"] == [8, 10]
    assert by_path(summary)[""]["param_count"] == models.count_params(model)
