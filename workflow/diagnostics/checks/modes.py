"""Examples that depend on their batch, and layers that ignore train/eval mode
(`batch_dependence`, `train_eval_mode`)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from workflow import engine
from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, OUTPUTS_SHAPED, Check
from workflow.diagnostics.checks.probes import forward_in_mode, max_diff, output_scale, reseed
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState

# --- batch dependence / eval determinism. Outputs are compared relative to their scale,
# max(1, max |output|). Another batch composition may change a kernel's reduction order (and
# TF32 matmuls on GPUs round at ~1e-3), while a reduction over the batch axis changes outputs
# by O(0.1-1) (0.12-0.15 for the broken models in tests/check_bugs.py).
BATCH_DEPENDENCE_RTOL = 1e-3
# Two eval passes over the same batch run the same program: anything above rounding is
# randomness that ignores eval mode. Train vs eval with active dropout/BatchNorm differ by O(1).
EVAL_DETERMINISM_RTOL = 1e-6
TRAIN_EVAL_MIN_RDIFF = 1e-6


# ----------------------------------------------------------------------------- batch, mode


def check_batch_dependence(task: Task, state: TrainState, x: np.ndarray) -> list[Finding]:
    """`batch_dependence` when an example's eval output depends on the rest of its batch."""
    x = np.asarray(x)
    n = len(x)
    if n < 2:
        return []

    def run(xs):
        return np.asarray(
            forward_in_mode(task.eval_graphdef, state.params, state.model_state, xs)[0]
        )

    full = run(x)
    scale = output_scale(full)
    reseeded = forward_in_mode(task.eval_graphdef, state.params, reseed(state.model_state), x)[0]
    if max_diff(full, np.asarray(reseeded)) / scale > EVAL_DETERMINISM_RTOL:
        return []  # random eval outputs: check_train_eval_mode reports that, not this check
    h = n // 2
    perm = np.random.default_rng(0).permutation(n)
    # Same batch size throughout (one compiled program): the first half is run once with the
    # second half and once with a copy of itself, so batch statistics change but not shapes.
    doubled = np.concatenate([x[:h], x[:h], x[2 * h :]])
    diffs = {
        "first_half_in_another_batch": max_diff(run(doubled)[:h], full[:h]) / scale,
        "permuted_batch": max_diff(run(x[perm]), full[perm]) / scale,
    }
    worst = max(diffs, key=diffs.get)
    if diffs[worst] <= BATCH_DEPENDENCE_RTOL:
        return []
    return [
        Finding(
            id="batch_dependence",
            severity="error",
            message="in eval mode an example's output depends on the other examples in its batch "
            f"({worst.replace('_', ' ')}: relative difference {diffs[worst]:.3g})",
            evidence={
                "relative_differences": diffs,
                "tolerance": BATCH_DEPENDENCE_RTOL,
                "output_scale": scale,
                "batch_size": n,
            },
            suggestions=[
                "a normalization or reduction over axis 0 (the batch): normalize over the "
                "feature axis (-1) instead",
                "BatchNorm in eval must use its running averages (use_running_average=True, "
                "set by model.eval()); do not pass use_running_average=False at call time",
                "a layer that mixes examples (attention or pooling over the batch axis)",
            ],
        )
    ]


def mode_layers(task: Task, state: TrainState) -> list[dict[str, Any]]:
    """Dropout (rate > 0) and BatchNorm layers: their outputs should differ in train and eval."""
    model = nnx.merge(task.train_graphdef, state.params, engine.fresh_variables(state.model_state))
    found = []
    for path, node in nnx.iter_graph(model):
        name = "/".join(str(p) for p in path) or "(model)"
        if isinstance(node, nnx.Dropout) and node.rate > 0:
            found.append({"layer": name, "type": "Dropout", "rate": float(node.rate)})
        elif isinstance(node, nnx.BatchNorm):
            found.append({"layer": name, "type": "BatchNorm"})
    return found


def check_train_eval_mode(task: Task, state: TrainState, x: np.ndarray) -> list[Finding]:
    """`train_eval_mode`: eval must be deterministic, and Dropout/BatchNorm must act in train."""
    x = jnp.asarray(x)
    findings = []
    first, advanced = forward_in_mode(task.eval_graphdef, state.params, state.model_state, x)
    first = np.asarray(first)
    scale = output_scale(first)
    # A second pass with the RNG counters the first one advanced, and one with other keys.
    second = np.asarray(forward_in_mode(task.eval_graphdef, state.params, advanced, x)[0])
    reseeded = np.asarray(
        forward_in_mode(task.eval_graphdef, state.params, reseed(state.model_state), x)[0]
    )
    diff = max(max_diff(first, second), max_diff(first, reseeded)) / scale
    if diff > EVAL_DETERMINISM_RTOL:
        findings.append(
            Finding(
                id="train_eval_mode",
                severity="error",
                message=f"eval mode is not deterministic: two eval passes over the same batch "
                f"differ (relative difference {diff:.3g}); randomness such as dropout ignores "
                "eval mode",
                evidence={"eval_vs_eval_relative_difference": diff},
                suggestions=[
                    "make the dropout layer honor eval mode: skip it when self.deterministic "
                    "(set by model.eval()), or use nnx.Dropout",
                    "do not draw random numbers in __call__ unconditionally",
                ],
            )
        )
    layers = mode_layers(task, state)
    if layers:
        train = np.asarray(
            forward_in_mode(task.train_graphdef, state.params, state.model_state, x)[0]
        )
        train_diff = max_diff(train, first) / scale
        if train_diff <= TRAIN_EVAL_MIN_RDIFF:
            kinds = sorted({layer["type"] for layer in layers})
            model = nnx.merge(task.eval_graphdef, state.params, state.model_state)
            switches = mode_arguments(model)
            message = (
                f"the model has {' and '.join(kinds)} layers but its train-mode output equals "
                "its eval-mode output: they behave the same in both modes"
            )
            suggestions = [
                "do not pin deterministic=True / use_running_average=True at call "
                "time; let model.train() / model.eval() set them",
                "check the layers sit on the path from input to output",
            ]
            if switches:
                called = f"{type(model).__name__}.__call__"
                message += (
                    f"; {called} takes {', '.join(switches)}, which the workflow never passes "
                    "(it calls model(x) and sets the mode with model.train() / model.eval())"
                )
                suggestions.insert(
                    0,
                    f"drop {', '.join(switches)} from {called} and call the layers without a "
                    "mode argument (nnx.Dropout()(x), nnx.BatchNorm()(x)): model.train() and "
                    "model.eval() switch them",
                )
            findings.append(
                Finding(
                    id="train_eval_mode",
                    severity="error",
                    message=message,
                    evidence={
                        "layers": layers,
                        "train_vs_eval_relative_difference": train_diff,
                        "mode_arguments": switches,
                    },
                    suggestions=suggestions,
                )
            )
    return findings


# Parameter names of a __call__ that mean "which mode": the Linen and PyTorch habits.
MODE_ARGUMENT_NAMES = frozenset(
    {"train", "training", "is_training", "deterministic", "use_running_average", "inference"}
)


def mode_arguments(model: Any) -> list[str]:
    """The parameters of the model's __call__ that pick a mode by argument (a name such as
    `train`, or a bool default): the workflow calls model(x), so they keep their defaults."""
    import inspect

    try:
        parameters = list(inspect.signature(type(model).__call__).parameters.values())[2:]
    except (TypeError, ValueError):
        return []
    return [
        f"{p.name}={p.default!r}" if p.default is not inspect.Parameter.empty else p.name
        for p in parameters
        if p.name in MODE_ARGUMENT_NAMES or isinstance(p.default, bool)
    ]


CHECKS = (
    Check(
        "batch_dependence",
        order=60,
        run=lambda setup, batch: check_batch_dependence(setup.task, setup.state, batch["x"]),
        needs=(LABELS_IN_RANGE, OUTPUTS_SHAPED),
    ),
    Check(
        "train_eval_mode",
        order=70,
        run=lambda setup, batch: check_train_eval_mode(setup.task, setup.state, batch["x"]),
        needs=(LABELS_IN_RANGE, OUTPUTS_SHAPED),
    ),
)
