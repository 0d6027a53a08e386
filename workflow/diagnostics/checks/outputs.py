"""Outputs against the loss: probabilities into a logits loss, silent broadcasting, the
initial loss, outputs that never depend on the input (`softmax_before_loss`, `shape_mismatch`,
`initial_loss_off`, `output_ignores_input`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from workflow import engine
from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, Check
from workflow.diagnostics.checks.probes import (
    Batch,
    forward_in_mode,
    loss_outputs_grads,
    max_diff,
    output_scale,
)
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState, losses, tasks

# --- outputs and loss. Probabilities: every output in [0, 1] and rows summing to 1; log-
# probabilities: every output <= 0 and rows with logsumexp 0. float32 softmax rows sum to 1
# within ~1e-6 * C; random logits never come within 1e-3 of either on 64 rows.
PROB_TOL = 1e-3
# A relu on the logits: no output below 0 and 10-90% exactly 0 (about half at init); logits of
# a Dense layer are never exactly 0, and all-zero outputs are a dead network (dead_units).
RELU_ZERO_SHARE = 0.1
# Initial loss: a near-uniform prediction gives ln C (the workflow's "check initial loss"); a
# prior-matching bias gives the entropy H of the batch's labels (<= ln C). Accept
# [H - tol, ln C + tol] with tol = max(0.5, 0.25 ln C): the built-in models start within
# 0.25 of ln C (logit std < 0.85), while a x100 weight scale or an output bias of 20 is off
# by more than ln C itself.
INITIAL_LOSS_ABS_TOL = 0.5
INITIAL_LOSS_REL_TOL = 0.25
# Bounded outputs (a sigmoid or tanh head): after memorizing one batch, every output lies within
# [0, 1] or [-1, 1] (up to BOUND_TOL), at least half of them within SATURATED_DISTANCE of a bound
# (the loss pushes them there and they cannot go further), and the batch loss stalled within
# FLOOR_FACTOR of the lowest softmax cross-entropy such outputs allow (1.46 for 10 classes in
# [0, 1]; 0.80 in [-1, 1]). A model too slow to move (a tiny learning rate) stays unsaturated and
# far above the floor; unbounded logits leave the bounds within a few steps of memorizing.
OUTPUT_BOUNDS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
BOUND_TOL = 1e-3
SATURATED_DISTANCE = 0.1
SATURATED_SHARE = 0.5
FLOOR_FACTOR = 1.5
# The loss must be computed per example: the loss of the first half of a batch computed alone
# must match the first half of the whole batch's loss within float32 noise.
LOSS_SEPARABLE_RTOL = 1e-4


# ----------------------------------------------------------------------------- outputs, loss


def _output_kind(outputs: np.ndarray) -> str | None:
    """'probabilities', 'log-probabilities', 'relu-clipped' or None for outputs that look like
    logits."""
    if not np.all(np.isfinite(outputs)) or outputs.shape[-1] < 2:
        return None
    zeros = np.mean(outputs == 0.0)
    if outputs.min() == 0.0 and RELU_ZERO_SHARE <= zeros <= 1 - RELU_ZERO_SHARE:
        return "relu-clipped"
    if outputs.min() >= -PROB_TOL and outputs.max() <= 1 + PROB_TOL:
        if np.all(np.abs(outputs.sum(-1) - 1.0) <= PROB_TOL):
            return "probabilities"
    if outputs.max() <= PROB_TOL:
        if np.all(np.abs(_logsumexp(outputs)) <= PROB_TOL):
            return "log-probabilities"
    return None


def _logsumexp(outputs: np.ndarray) -> np.ndarray:
    """log(sum(exp(outputs))) over the last axis, in float64 on the host."""
    out = np.asarray(outputs, np.float64)
    peak = out.max(-1, keepdims=True)
    return (peak + np.log(np.exp(out - peak).sum(-1, keepdims=True)))[..., 0]


def _softmax_cross_entropy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy of logits against integer labels, in float64 on the host."""
    out = np.asarray(outputs, np.float64)
    picked = np.take_along_axis(out, np.asarray(labels, np.int64)[:, None], axis=-1)[:, 0]
    return float(np.mean(_logsumexp(out) - picked))


# Static loss: one compiled program per loss and shape. Run eagerly, each operation of the loss
# would compile on its own, a large part of a cold debug run.
@engine.jit_for_few_runs(static_argnums=0)
def _apply_loss(loss_fn: Callable, outputs: jax.Array, labels: jax.Array) -> jax.Array:
    return loss_fn(outputs, labels)


def _label_entropy(y: np.ndarray, num_classes: int) -> float:
    p = np.bincount(y.astype(np.int64), minlength=num_classes) / len(y)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _loss_shape_findings(
    loss_fn: Callable, outputs: jax.Array, labels: jax.Array, loss_name: str
) -> list[Finding]:
    """`shape_mismatch` for a loss that broadcasts instead of returning one value per example."""
    n = outputs.shape[0]
    try:
        per_example = jax.eval_shape(loss_fn, outputs, labels)
    except Exception as e:  # whatever the loss raises on (N, C) outputs and (N,) labels
        return [
            Finding(
                id="shape_mismatch",
                severity="error",
                message=f"the loss {loss_name} fails on outputs {tuple(outputs.shape)} and "
                f"labels {tuple(labels.shape)}: {type(e).__name__}: "
                + (str(e).strip().splitlines() or [""])[0],
                evidence={
                    "outputs_shape": list(outputs.shape),
                    "labels_shape": list(labels.shape),
                    "error": str(e).strip()[:500],
                },
                suggestions=["a loss takes (outputs (N, C), integer labels (N,)) and returns (N,)"],
            )
        ]
    promotion = _rank_promotion(loss_fn, outputs, labels)
    shape = tuple(per_example.shape)
    separable_diff = _half_batch_difference(loss_fn, outputs, labels) if shape == (n,) else None
    if shape == (n,) and (separable_diff is None or separable_diff <= LOSS_SEPARABLE_RTOL):
        if promotion is None:
            return []
        return [
            Finding(
                id="shape_mismatch",
                severity="info",
                message=f"the loss {loss_name} broadcasts arrays of different rank, but its "
                "per-example values do not depend on other examples: check it is intended",
                evidence={"rank_promotion": promotion, "loss_shape": list(shape)},
                suggestions=["make the broadcast explicit (x[:, None]) to silence this"],
            )
        ]
    if shape != (n,):
        problem = f"returns shape {shape} for a batch of {n}; expected ({n},), one loss per example"
    else:
        problem = (
            f"returns ({n},) but each example's loss depends on the other examples "
            f"(relative difference {separable_diff:.3g} when computed on half the batch)"
        )
    return [
        Finding(
            id="shape_mismatch",
            severity="error",
            message=f"the loss {loss_name} {problem}"
            + ("; it broadcasts arrays of different rank" if promotion else ""),
            evidence={
                "outputs_shape": list(outputs.shape),
                "labels_shape": list(labels.shape),
                "loss_shape": list(shape),
                "rank_promotion": promotion,
                "relative_difference_half_batch": separable_diff,
            },
            suggestions=[
                "look for (N,) against (N, 1) arithmetic: index with [:, 0] or squeeze "
                "the (N, 1) side, e.g. take_along_axis(...)[:, 0]",
                "reduce over the class axis only (axis=-1), never over the batch axis",
                "debug with jax.numpy_rank_promotion('raise') to find the line",
            ],
        )
    ]


def _rank_promotion(loss_fn: Callable, outputs: jax.Array, labels: jax.Array) -> str | None:
    """JAX's message when the loss broadcasts arrays of different rank, else None."""
    try:
        with jax.numpy_rank_promotion("raise"):
            jax.eval_shape(loss_fn, outputs, labels)
    except ValueError as e:
        if "rank_promotion" not in str(e):
            raise
        return str(e).split(". For more", 1)[0]
    return None


def _half_batch_difference(
    loss_fn: Callable, outputs: jax.Array, labels: jax.Array
) -> float | None:
    """How far the first half's per-example losses move when computed on that half alone
    (relative to the losses' scale): 0 for a loss that treats examples separately. None for a
    batch of one, or a loss tied to one batch size (the shape test still holds)."""
    n = outputs.shape[0]
    if n < 2:
        return None
    h = n // 2
    full = np.asarray(_apply_loss(loss_fn, outputs, labels))
    try:
        half = np.asarray(_apply_loss(loss_fn, outputs[:h], labels[:h]))
        return max_diff(full[:h], half) / output_scale(full)
    except Exception:
        return None


def check_output_and_loss(
    task: Task, state: TrainState, batch: Batch, num_classes: int
) -> list[Finding]:
    """`shape_mismatch`, `softmax_before_loss` and `initial_loss_off` on one batch at step 0."""
    x, y = jnp.asarray(batch["x"]), jnp.asarray(batch["y"])
    outputs = _train_mode_outputs(task, state, x, y)
    wrong_outputs = _output_shape_finding(outputs, x.shape[0], num_classes)
    if wrong_outputs is not None:
        return [wrong_outputs]
    builtin_ce = task.loss_fn is losses.softmax_cross_entropy
    loss_name = getattr(task.loss_fn, "__name__", repr(task.loss_fn))
    findings = _loss_shape_findings(task.loss_fn, outputs, y, loss_name)
    out = np.asarray(outputs, np.float64)
    if task.kind.name != tasks.CLASSIFICATION:
        return findings + [
            f
            for f in (
                _bounded_head_finding(out, task.kind.name, loss_name, task.loss_fn),
                _task_initial_loss_finding(task, out, np.asarray(y), loss_name),
            )
            if f is not None
        ]
    for finding in (
        _softmax_before_loss_finding(out, loss_name, builtin_ce),
        _initial_loss_finding(out, np.asarray(y), num_classes, loss_name, builtin_ce),
    ):
        if finding is not None:
            findings.append(finding)
    return findings


def _train_mode_outputs(task: Task, state: TrainState, x: jax.Array, y: jax.Array) -> jax.Array:
    """The model's outputs on the batch in train mode: those the first training step's loss
    sees. The gradient program is compiled here for the later checks too; a loss that cannot
    even run falls back to a forward pass (and is reported as a shape_mismatch of the loss)."""
    try:
        (_, outputs), _ = loss_outputs_grads(
            task.train_graphdef, task.loss_fn, state.params, state.model_state, x, y
        )
    except Exception:
        outputs, _ = forward_in_mode(task.train_graphdef, state.params, state.model_state, x)
    return outputs


def _output_shape_finding(outputs: jax.Array, n: int, num_classes: int) -> Finding | None:
    """`shape_mismatch` for outputs that are not (n, num_classes) logits of a batch of n."""
    try:
        chex.assert_shape(outputs, (n, num_classes))
    except AssertionError as e:
        return Finding(
            id="shape_mismatch",
            severity="error",
            message=f"the model returns shape {tuple(outputs.shape)}; expected ({n}, "
            f"{num_classes}) logits",
            evidence={"outputs_shape": list(outputs.shape), "expected": [n, num_classes]},
            suggestions=[
                "end the model with a Dense layer of num_outputs units",
                "flatten (batch, ...) features to (batch, -1) before the last layer",
                str(e).splitlines()[0],
            ],
        )
    return None


def _softmax_before_loss_finding(
    out: np.ndarray, loss_name: str, builtin_ce: bool
) -> Finding | None:
    """`softmax_before_loss` for outputs that are already probabilities or log-probabilities."""
    kind = _output_kind(out)
    if not kind:
        return None
    if kind == "relu-clipped":
        severity = "error" if builtin_ce else "warning"
        why = (
            "a relu on the outputs clips every negative logit to 0 with zero gradient, so the "
            "classes a prediction should rank low cannot go below 0"
        )
    elif kind == "probabilities":
        severity = "error" if builtin_ce else "warning"
        why = (
            "softmax cross-entropy applies a second softmax: outputs in [0, 1] give nearly "
            "uniform predictions, tiny gradients and a plateau near ln C"
        )
    else:
        severity = "warning" if builtin_ce else "info"
        why = (
            "log_softmax is idempotent, so softmax cross-entropy is unchanged, but the "
            "outputs are not logits as the workflow's losses and metrics expect"
        )
    return Finding(
        id="softmax_before_loss",
        severity=severity,
        message=f"the model's outputs are already {kind} but the loss {loss_name} "
        f"expects logits; {why}",
        evidence={
            "outputs": kind,
            "loss": loss_name,
            "min": float(out.min()),
            "max": float(out.max()),
            "row_sum_range": [float(out.sum(-1).min()), float(out.sum(-1).max())],
        },
        suggestions=[
            "remove the final softmax / log_softmax / relu from the model: return raw logits",
            "apply softmax only where probabilities are needed (prediction, calibration)",
        ],
    )


def bounded_loss_floor(low: float, high: float, num_classes: int) -> float:
    """The lowest softmax cross-entropy outputs in [low, high] allow: the true class at `high`,
    every other at `low`."""
    return math.log(math.exp(high) + (num_classes - 1) * math.exp(low)) - high


def bounded_outputs_finding(
    outputs: np.ndarray | None,
    final_loss: float,
    num_classes: int,
    loss_name: str,
    builtin_ce: bool,
) -> Finding | None:
    """`softmax_before_loss` for a sigmoid or tanh head, read from the outputs after memorizing
    one batch: bounded, saturated, and the loss stalled at the floor the bounds allow."""
    if outputs is None or not np.all(np.isfinite(outputs)) or outputs.shape[-1] < 2:
        return None
    for head, (low, high) in OUTPUT_BOUNDS.items():
        if outputs.min() < low - BOUND_TOL or outputs.max() > high + BOUND_TOL:
            continue
        near_bound = np.minimum(outputs - low, high - outputs) <= SATURATED_DISTANCE
        floor = bounded_loss_floor(low, high, num_classes)
        if near_bound.mean() < SATURATED_SHARE or not final_loss <= FLOOR_FACTOR * floor:
            return None
        return Finding(
            id="softmax_before_loss",
            severity="error" if builtin_ce else "warning",
            message=(
                f"the model's outputs are squashed into [{low:g}, {high:g}] (a {head} head) but "
                f"the loss {loss_name} expects logits: memorizing one batch pushed "
                f"{near_bound.mean():.0%} of them to the bounds and the loss stalled at "
                f"{final_loss:.3g}, near the {floor:.3g} that outputs in [{low:g}, {high:g}] allow "
                f"for {num_classes} classes"
            ),
            evidence={
                "outputs": f"bounded ({head})",
                "loss": loss_name,
                "min": float(outputs.min()),
                "max": float(outputs.max()),
                "saturated_share": float(near_bound.mean()),
                "final_batch_loss": float(final_loss),
                "loss_floor": floor,
            },
            suggestions=[
                f"remove the final {head} from the model: return raw logits",
                "for multi-label targets use sigmoid cross-entropy on the raw logits instead",
            ],
        )
    return None


def _initial_loss_finding(
    out: np.ndarray, y: np.ndarray, num_classes: int, loss_name: str, builtin_ce: bool
) -> Finding | None:
    """`initial_loss_off` for an initial loss outside [label entropy, ln C] (with tolerance).

    Calibrated for softmax cross-entropy, so computed as that on the outputs read as logits;
    under another loss the result is only reported (info).
    """
    ce = _softmax_cross_entropy(out, y)
    ln_c = math.log(num_classes)
    entropy = _label_entropy(y, num_classes)
    tol = max(INITIAL_LOSS_ABS_TOL, INITIAL_LOSS_REL_TOL * ln_c)
    if math.isfinite(ce) and entropy - tol <= ce <= ln_c + tol:
        return None
    logits_std = float(np.std(out)) if np.all(np.isfinite(out)) else math.inf
    row_spread = out.max(-1) - out.min(-1)
    return Finding(
        id="initial_loss_off",
        severity="warning" if builtin_ce else "info",
        message=f"the initial loss {ce:.4g} is far from ln C = {ln_c:.4g} "
        f"(accepted {entropy - tol:.3g}..{ln_c + tol:.3g})"
        + ("" if builtin_ce else f"; computed as softmax cross-entropy, not {loss_name}"),
        evidence={
            "initial_loss": ce,
            "expected": ln_c,
            "label_entropy": entropy,
            "tolerance": tol,
            "loss": loss_name if builtin_ce else f"softmax_cross_entropy ({loss_name})",
            "logits_std": logits_std,
            "logits_max_abs": float(np.nanmax(np.abs(out))),
            "logits_row_spread_mean": float(np.nanmean(row_spread)),
        },
        suggestions=[
            "too large: the last layer's weights or bias start too big (exploding init, "
            "x100 scale) -- use the default (LeCun/He) init and a zero bias",
            "too large: unnormalized inputs scale the logits -- normalize the inputs",
            "too small: labels may leak into the inputs, or the loss is not averaged per example",
            "the model may end in a softmax (see softmax_before_loss)",
        ],
    )


# --- regression and multi-label heads. A Dense layer's outputs at init take both signs: a batch of
# them all >= 0 (a sigmoid or relu head) never happens by chance, with 64 or more outputs.
BUILTIN_TASK_LOSSES = ("mse", "huber", "absolute_error", "sigmoid_binary_cross_entropy")
# After memorizing one batch, outputs held inside a head's bounds while at least this share of
# the (standardized) targets lies beyond them by SATURATED_DISTANCE: the head cannot reach them.
UNREACHABLE_TARGET_SHARE = 0.1


def _bounded_head_finding(
    out: np.ndarray, task: str, loss_name: str, loss_fn: Callable
) -> Finding | None:
    """`softmax_before_loss` in a regression's or multi-label task's terms, at step 0: outputs
    all in [0, 1] (a sigmoid) or relu-clipped, fed to a loss that expects unbounded values."""
    if not np.all(np.isfinite(out)) or out.size < 2 or out.min() < -BOUND_TOL:
        return None
    zeros = float(np.mean(out == 0.0))
    if out.min() == 0.0 and zeros >= RELU_ZERO_SHARE:
        head = "relu"
    elif out.max() <= 1.0 + BOUND_TOL:
        head = "sigmoid"
    else:
        return None
    builtin = getattr(loss_fn, "__name__", "") in BUILTIN_TASK_LOSSES
    if task == tasks.MULTILABEL:
        message = (
            f"the model's outputs are already in [0, 1] ({head} head) but the loss {loss_name} "
            "expects logits: sigmoid cross-entropy applies a second sigmoid, so no output can "
            "say 'no' below 0.5 and the gradients shrink"
        )
        fixes = [
            f"remove the final {head} from the model: return raw logits, one per label",
            "apply the sigmoid only where probabilities are needed (prediction, thresholds)",
        ]
    else:
        message = (
            f"the regression head is squashed by a {head}: every output is >= 0"
            f"{' and <= 1' if head == 'sigmoid' else ''}, but the standardized targets the loss "
            f"{loss_name} compares them with take both signs"
        )
        fixes = [
            f"remove the final {head}: a regression head is a plain Dense layer",
            "to bound predictions, clip them after training, not inside the model",
        ]
    return Finding(
        id="softmax_before_loss",
        severity="error" if builtin else "warning",
        message=message,
        evidence={
            "outputs": f"bounded ({head})",
            "loss": loss_name,
            "min": float(out.min()),
            "max": float(out.max()),
            "zero_share": zeros,
        },
        suggestions=fixes,
    )


# --- outputs that ignore the input. After training on one batch of distinct inputs, a model
# that reads its input gives rows that differ by O(0.1-1) of the output scale; one that never
# reads it (a constant or zeros fed instead of x, the input overwritten) computes every row the
# same way from the same parameters, so its rows agree to float32 rounding (~1e-7 relative).
CONSTANT_OUTPUTS_RTOL = 1e-5
# A network whose units are all dead on ordinary inputs (a bias of -100) also gives one output
# for all: inputs this many times the batch's scale, of either sign, wake some of its units
# (then dead_units says why), while nothing changes the output of a model that never reads x.
PROBE_INPUT_SCALE = 1e3


def probe_inputs(x: np.ndarray) -> list[np.ndarray]:
    """Inputs of the batch's shape and dtype far from it: scaled up, of either sign, and noise
    (integer inputs, token ids: the batch with its last axis reversed, still valid ids)."""
    if not np.issubdtype(x.dtype, np.floating):
        return [np.flip(x, axis=-1)] if x.ndim > 1 else []
    scale = PROBE_INPUT_SCALE * max(1.0, float(np.std(x)))
    noise = np.random.default_rng(0).normal(size=x.shape) * scale
    return [(PROBE_INPUT_SCALE * x).astype(x.dtype), (-PROBE_INPUT_SCALE * x).astype(x.dtype)] + [
        noise.astype(x.dtype)
    ]


def row_spread(outputs: np.ndarray) -> float:
    """How far the rows of `outputs` lie from the first, relative to their scale."""
    return max_diff(outputs, np.broadcast_to(outputs[:1], outputs.shape)) / output_scale(outputs)


def ignored_input_finding(
    x: np.ndarray,
    outputs: np.ndarray | None,
    forward: Callable[[np.ndarray], np.ndarray] | None = None,
    input_gradient: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Finding | None:
    """`output_ignores_input`, read from the (eval-mode) outputs after memorizing one batch:
    every example's output is the same although the batch's inputs differ; with `forward`
    (the model at initialization), also for inputs far from the batch's; with `input_gradient`
    (of the initial model's outputs, float inputs), exactly zero: no path from x at all, where
    a signal that fades on its way (a deep sigmoid stack) leaves a tiny but nonzero gradient."""
    x = np.asarray(x)
    if outputs is None or len(outputs) < 2 or not np.all(np.isfinite(outputs)):
        return None
    flat = x.reshape(len(x), -1)
    if not np.any(flat != flat[:1]):
        return None  # every input alike: nothing to tell apart
    spread = row_spread(outputs)
    if spread > CONSTANT_OUTPUTS_RTOL:
        return None
    if forward is not None:
        probed = np.concatenate([np.asarray(forward(p)) for p in [x, *probe_inputs(x)]])
        if row_spread(probed) > CONSTANT_OUTPUTS_RTOL:
            return None  # the input reaches the output, through units dead on this data
    if input_gradient is not None and np.issubdtype(x.dtype, np.floating):
        if np.any(np.asarray(input_gradient(x)) != 0):
            return None  # the input reaches the output, faded (vanishing_gradients says why)
    agree = "exactly" if spread == 0 else f"to {spread:.2g} of their scale"
    return Finding(
        id="output_ignores_input",
        severity="error",
        message=(
            f"the model gives the same output for every input: after training on one batch of "
            f"{len(x)} different examples, its outputs on them agree {agree}; the input does "
            "not reach the output"
        ),
        evidence={
            "batch_size": len(x),
            "relative_spread": spread,
            "tolerance": CONSTANT_OUTPUTS_RTOL,
            "output_row": [float(v) for v in np.ravel(outputs[0])[:10]],
        },
        suggestions=[
            "check __call__ uses its argument x on the path to the output (not a constant, "
            "zeros_like(x), a stored attribute or a variable overwritten on the way)",
            "check no layer between input and output multiplies by zero or is cut off "
            "(a dead layer: see dead_units)",
        ],
    )


def squashed_regression_finding(
    outputs: np.ndarray | None, targets: np.ndarray, loss_name: str
) -> Finding | None:
    """`softmax_before_loss` for a regression head in [0, 1] or [-1, 1] (sigmoid, tanh), read
    after memorizing one batch: the outputs stay inside the bounds while targets lie beyond."""
    if outputs is None or not np.all(np.isfinite(outputs)) or outputs.shape != targets.shape:
        return None
    for head, (low, high) in OUTPUT_BOUNDS.items():
        if outputs.min() < low - BOUND_TOL or outputs.max() > high + BOUND_TOL:
            continue
        beyond = (targets < low - SATURATED_DISTANCE) | (targets > high + SATURATED_DISTANCE)
        if beyond.mean() < UNREACHABLE_TARGET_SHARE:
            return None
        return Finding(
            id="softmax_before_loss",
            severity="error",
            message=(
                f"the regression head is squashed into [{low:g}, {high:g}] (a {head}): after "
                f"memorizing one batch every output is still inside it, while "
                f"{beyond.mean():.0%} of the batch's standardized targets lie beyond it"
            ),
            evidence={
                "outputs": f"bounded ({head})",
                "loss": loss_name,
                "min": float(outputs.min()),
                "max": float(outputs.max()),
                "targets_beyond_bounds": float(beyond.mean()),
            },
            suggestions=[
                f"remove the final {head}: a regression head is a plain Dense layer",
                "to bound predictions, clip them after training, not inside the model",
            ],
        )
    return None


def _task_initial_loss_finding(
    task: Task, out: np.ndarray, y: np.ndarray, loss_name: str
) -> Finding | None:
    """`initial_loss_off` in a regression's or multi-label task's terms: the loss at step 0
    against that of predicting the targets' distribution (the mean; the base rates)."""
    kind = task.kind
    reference = tasks.initial_loss_reference(kind, task.loss_fn, y, out.shape[-1])
    try:
        loss = float(np.mean(np.asarray(_apply_loss(task.loss_fn, jnp.asarray(out), y))))
    except Exception:  # the loss itself fails: _loss_shape_findings reports it
        return None
    low, high = kind.initial_loss_range(reference)
    if math.isfinite(loss) and low <= loss <= high:
        return None
    what = "predicting the mean" if kind.name == tasks.REGRESSION else "predicting the base rates"
    builtin = getattr(task.loss_fn, "__name__", "") in BUILTIN_TASK_LOSSES
    return Finding(
        id="initial_loss_off",
        severity="warning" if builtin else "info",
        message=f"the initial loss {loss:.4g} is far from {reference:.4g}, the loss of {what} "
        f"(accepted {low:.3g}..{high:.3g})",
        evidence={
            "initial_loss": loss,
            "expected": reference,
            "accepted": [low, high],
            "loss": loss_name,
            "outputs_std": float(np.std(out)) if np.all(np.isfinite(out)) else math.inf,
            "outputs_max_abs": float(np.nanmax(np.abs(out))),
        },
        suggestions=[
            "too large: the last layer's weights or bias start too big (x100 scale) -- use the "
            "default (LeCun/He) init and a zero bias",
            "too large: unnormalized inputs scale the outputs -- normalize the inputs",
            "too small: the targets may leak into the inputs",
        ],
    )


CHECKS = (
    Check(
        "outputs",
        order=40,
        run=lambda setup, batch: check_output_and_loss(
            setup.task, setup.state, batch, setup.dataset.num_classes
        ),
        needs=(LABELS_IN_RANGE,),
    ),
)
