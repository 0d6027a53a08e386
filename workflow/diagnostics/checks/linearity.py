"""A stack of layers with no nonlinearity between them (`model_is_linear`).

Without activations, Linear/Conv layers compose into one affine map: the model can only draw
linear boundaries however deep it is. An affine f maps the midpoint of two inputs to the
midpoint of their outputs, f((a + b) / 2) = (f(a) + f(b)) / 2, up to float rounding; any
activation between two layers breaks that by O(0.1) of |f(a) - f(b)| on random pairs.
"""

from __future__ import annotations

import jax
import numpy as np

from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, OUTPUTS_SHAPED, Check
from workflow.diagnostics.checks.probes import forward_in_mode, max_diff, output_scale
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState

# The miss is judged against how far the outputs of the two inputs differ: float32 matmul
# chains miss by ~1e-7 of it; a ReLU MLP at init by ~0.4 of it on the synthetic data.
LINEAR_RTOL = 1e-4
# A model whose outputs barely depend on its input (dead ReLUs, a saturated sigmoid stack: under
# 1e-3 of the output scale) is also affine, trivially: the findings for those causes speak.
MIN_OUTPUT_SPREAD = 1e-3
# A single weight layer is a linear model by design (logistic regression): only stacks count.
MIN_WEIGHT_LAYERS = 2


def _weight_layers(params) -> int:
    """How many parameters are weight matrices or kernels (rank 2 or more)."""
    return sum(np.ndim(leaf) >= 2 for leaf in jax.tree.leaves(params))


def check_linearity(task: Task, state: TrainState, x: np.ndarray) -> list[Finding]:
    """`model_is_linear` when a model of several weight layers is affine in its input (eval)."""
    x = np.asarray(x)
    layers = _weight_layers(state.params)
    if len(x) < 4 or layers < MIN_WEIGHT_LAYERS or not np.issubdtype(x.dtype, np.floating):
        return []
    h = len(x) // 2
    a, b = x[:h], x[h : 2 * h]
    # One batch shape throughout (one compiled program): [a, b] and [midpoints, midpoints].
    pair = np.concatenate([a, b])
    mid = np.concatenate([(a + b) / 2, (a + b) / 2]).astype(x.dtype)
    out = np.asarray(forward_in_mode(task.eval_graphdef, state.params, state.model_state, pair)[0])
    out_mid = np.asarray(
        forward_in_mode(task.eval_graphdef, state.params, state.model_state, mid)[0]
    )
    expected = (out[:h].astype(np.float64) + out[h:]) / 2
    spread = max_diff(out[:h], out[h:])
    if spread < MIN_OUTPUT_SPREAD * output_scale(out):
        return []
    miss = max_diff(out_mid[:h], expected) / spread
    if miss > LINEAR_RTOL:
        return []
    return [
        Finding(
            id="model_is_linear",
            severity="warning",
            message=(
                f"the model is an affine function of its input although it stacks {layers} "
                f"weight layers (the midpoint of two inputs maps to the midpoint of their "
                f"outputs within {miss:.1g}): an activation between the layers is missing, so "
                "they collapse into one linear layer"
            ),
            evidence={"weight_layers": layers, "midpoint_relative_miss": miss},
            suggestions=[
                "put a nonlinearity (relu, gelu, tanh) after every hidden layer",
                "if a linear model is intended, one layer does the same with fewer parameters",
            ],
        )
    ]


CHECKS = (
    Check(
        "linearity",
        order=65,
        run=lambda setup, batch: check_linearity(setup.task, setup.state, batch["x"]),
        needs=(LABELS_IN_RANGE, OUTPUTS_SHAPED),
    ),
)
