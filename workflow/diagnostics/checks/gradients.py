"""Gradients that do not flow: `no_gradient`, `dead_units`, `vanishing_gradients`,
`exploding_gradients`."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, LOSS_RUNS, Check
from workflow.diagnostics.checks.probes import Batch, loss_and_grads, named_leaves
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState

# --- gradients.
# Global gradient norm above which a first step is a jump: the built-in models start with
# norms of ~0.4-2.5 on standardized data; x1000 weights give ~1e6, raw 0..255 pixels into an
# MLP ~1.4e3.
EXPLODING_GRAD_NORM = 1e3
# A parameter whose ||grad|| / ||param|| is this far below the best-fed parameter's ratio gets
# relative SGD updates 1e7 times smaller, at float32 resolution (eps 1.2e-7): it stays frozen
# while the rest trains. The built-in models' ratios span less than 15x at init; a 16-layer
# sigmoid stack spans ~1e-11.
VANISHING_RELATIVE_RATIO = 1e-7
# A global gradient norm this small with a loss that is not ~0 means nothing learns under SGD.
VANISHING_GLOBAL_NORM = 1e-7
LOSS_NEAR_ZERO = 1e-3
# Fraction of a layer's inputs that never fire on the check batch before `dead_units` fires.
# ReLU units at init fire on about half the examples, so a unit silent on all 64 is rare.
DEAD_FRACTION = 0.5


# ----------------------------------------------------------------------------- gradients


def _dead_inputs(
    name: str, grad: np.ndarray, grads: dict[str, np.ndarray], x: np.ndarray
) -> dict[str, Any] | None:
    """Inputs of a kernel (..., in, out) that were 0 on every example, from its gradient.

    dL/dW[..., i, :] sums input i times the output gradient over the batch, so a row that is
    exactly zero while the layer's bias gradient is not means input i never fired.
    """
    if grad.ndim < 2 or "embed" in name.lower():
        return None
    if not np.any(grad):
        bias = grads.get(name.rsplit("/", 1)[0] + "/bias") if "/" in name else None
        if bias is None or not np.any(bias):
            return None  # no gradient signal reaches this layer at all: not evidence
        rows_zero = np.ones(grad.shape[-2], bool)
    else:
        axes = tuple(i for i in range(grad.ndim) if i != grad.ndim - 2)
        rows_zero = ~np.any(grad != 0, axis=axes)
    # Inputs of a first layer are data: an always-zero feature/channel is not a dead unit.
    n_in = grad.shape[-2]
    flat = x.reshape(len(x), -1)
    if n_in == flat.shape[1]:
        rows_zero &= np.any(flat != 0, axis=0)
    if x.ndim > 2 and n_in == x.shape[-1]:
        rows_zero &= np.any(x.reshape(-1, x.shape[-1]) != 0, axis=0)
    fraction = float(rows_zero.mean())
    if fraction < DEAD_FRACTION:
        return None
    return {"param": name, "dead": int(rows_zero.sum()), "inputs": n_in, "fraction": fraction}


@dataclasses.dataclass
class _Gradients:
    """One batch's loss, and each parameter's gradient and value, by name (float64)."""

    loss: float
    grads: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    norms: dict[str, float]  # ||grad|| of each parameter
    global_norm: float


def _gradients(task: Task, state: TrainState, batch: Batch) -> _Gradients:
    loss, grads = loss_and_grads(task, state, batch)
    g = {k: np.asarray(v, np.float64) for k, v in named_leaves(grads).items()}
    p = {k: np.asarray(v, np.float64) for k, v in named_leaves(state.params).items()}
    g_norm = {k: float(np.linalg.norm(v)) for k, v in g.items()}
    global_norm = float(np.sqrt(sum(v**2 for v in g_norm.values())))
    return _Gradients(float(loss), g, p, g_norm, global_norm)


def check_gradients(task: Task, state: TrainState, batch: Batch) -> list[Finding]:
    """`exploding_gradients`, `dead_units`, `no_gradient`, `vanishing_gradients` at step 0."""
    x = np.asarray(batch["x"])
    stats = _gradients(task, state, batch)
    exploding = _exploding_finding(stats)
    if exploding is not None:
        return [exploding]  # the other checks assume finite, moderate gradients
    zero = [k for k, v in stats.grads.items() if not np.any(v)]
    dead = [d for k, v in stats.grads.items() if (d := _dead_inputs(k, v, stats.grads, x))]
    # Layers that never fire at all explain every zero gradient upstream of them.
    explained = zero if any(d["fraction"] >= 1.0 for d in dead) else []
    findings = [
        _dead_units_finding(dead, explained, len(x)),
        _no_gradient_finding(stats, [k for k in zero if k not in explained]),
        _vanishing_finding(stats),
    ]
    return [f for f in findings if f is not None]


def _exploding_finding(stats: _Gradients) -> Finding | None:
    """`exploding_gradients`: a non-finite gradient, or a global norm above the threshold."""
    g, g_norm, global_norm, loss = stats.grads, stats.norms, stats.global_norm, stats.loss
    nonfinite = [k for k, v in g.items() if not np.all(np.isfinite(v))]
    if not nonfinite and global_norm <= EXPLODING_GRAD_NORM:
        return None
    largest = sorted(g_norm, key=lambda k: -g_norm[k] if math.isfinite(g_norm[k]) else -math.inf)
    return Finding(
        id="exploding_gradients",
        severity="error" if nonfinite else "warning",
        message=(
            f"non-finite gradients in {', '.join(nonfinite)}"
            if nonfinite
            else f"the gradient norm at step 0 is {global_norm:.3g} "
            f"(> {EXPLODING_GRAD_NORM:g}); largest in {largest[0]}"
        ),
        evidence={
            "global_grad_norm": global_norm,
            "loss": loss,
            "threshold": EXPLODING_GRAD_NORM,
            "nonfinite_params": nonfinite,
            "largest_grad_norms": {k: g_norm[k] for k in largest[:5]},
        },
        suggestions=[
            "weights initialized too large: use the default (LeCun/He) init",
            "normalize the inputs (raw 0..255 pixels scale every gradient)",
            "check every exp, log and division (run locate_nonfinite / debug_nans)",
            "clip gradients, --config.optimizer.clip_norm=1.0 (optax.clip_by_global_norm), or "
            "lower the learning rate",
        ],
    )


def _dead_units_finding(
    dead: list[dict[str, Any]], explained: list[str], batch_size: int
) -> Finding | None:
    """`dead_units`: layers whose inputs never fired on the batch (`_dead_inputs` of each)."""
    if not dead:
        return None
    fully_dead = [d for d in dead if d["fraction"] >= 1.0]
    return Finding(
        id="dead_units",
        severity="error" if fully_dead else "warning",
        message="ReLU units that never fire on the batch: "
        + "; ".join(
            f"{d['dead']} of the {d['inputs']} inputs of {d['param']} ({d['fraction']:.0%})"
            for d in dead
        )
        + (
            f"; nothing flows upstream, so {len(explained)} parameters get no gradient"
            if explained
            else ""
        ),
        evidence={
            "layers": dead,
            "threshold_fraction": DEAD_FRACTION,
            "zero_gradient_params": explained,
            "batch_size": batch_size,
        },
        suggestions=[
            "a large negative bias or pre-activation shift: initialize biases at 0",
            "lower the learning rate (a big step can kill ReLUs), normalize the inputs",
            "use leaky_relu / gelu, or He initialization for ReLU layers",
        ],
    )


def _no_gradient_finding(stats: _Gradients, unexplained: list[str]) -> Finding | None:
    """`no_gradient`: parameters with exactly zero gradient that no dead layer explains."""
    if not unexplained:
        return None
    g, loss, global_norm = stats.grads, stats.loss, stats.global_norm
    every = len(unexplained) == len(g)
    return Finding(
        id="no_gradient",
        severity="error",
        message=(
            "no parameter receives a gradient: the loss does not depend on the parameters"
            if every
            else f"{len(unexplained)} of {len(g)} parameters get exactly zero gradient: "
            + ", ".join(unexplained)
        ),
        evidence={
            "zero_gradient_params": unexplained,
            "num_params": len(g),
            "loss": loss,
            "global_grad_norm": global_norm,
        },
        suggestions=[
            "a jax.lax.stop_gradient (or a non-differentiable op such as argmax, "
            "round, integer casts) cuts these parameters off the loss",
            "the layer is built but never called in __call__",
            "an output is overwritten or multiplied by 0 downstream",
        ],
    )


def _vanishing_finding(stats: _Gradients) -> Finding | None:
    """`vanishing_gradients`: parameters fed far less than the best-fed one (relative to their
    size), or a tiny global gradient while the loss is not near zero."""
    g, p, g_norm = stats.grads, stats.params, stats.norms
    global_norm, loss = stats.global_norm, stats.loss
    ratios = {
        k: g_norm[k] / float(np.linalg.norm(p[k])) for k in g if g_norm[k] > 0 and np.any(p[k])
    }
    vanishing = {}
    if ratios:
        best = max(ratios.values())
        vanishing = {k: r for k, r in ratios.items() if r < VANISHING_RELATIVE_RATIO * best}
    tiny_global = 0 < global_norm < VANISHING_GLOBAL_NORM and loss > LOSS_NEAR_ZERO
    if not vanishing and not tiny_global:
        return None
    return Finding(
        id="vanishing_gradients",
        severity="warning",
        message=(
            f"gradients vanish in {len(vanishing)} of {len(g)} parameters ("
            + ", ".join(list(vanishing)[:3])
            + (", ..." if len(vanishing) > 3 else "")
            + f"): grad/param norm ratio "
            f"{min(vanishing.values()):.3g} vs {max(ratios.values()):.3g} in the "
            "best-fed parameter"
            if vanishing
            else f"the global gradient norm is {global_norm:.3g} while the loss is {loss:.3g}"
        ),
        evidence={
            "vanishing_params": vanishing,
            "grad_to_param_ratios": ratios,
            "global_grad_norm": global_norm,
            "loss": loss,
            "relative_threshold": VANISHING_RELATIVE_RATIO,
            "global_threshold": VANISHING_GLOBAL_NORM,
        },
        suggestions=[
            "saturating activations (sigmoid/tanh) or a tiny scale factor in the path: "
            "use ReLU-family activations and default init",
            "add residual connections or normalization layers in deep stacks",
            "check the loss is not scaled down (e.g. divided by a huge constant)",
        ],
    )


CHECKS = (
    Check(
        "gradients",
        order=80,
        run=lambda setup, batch: check_gradients(setup.task, setup.state, batch),
        needs=(LABELS_IN_RANGE, LOSS_RUNS),
    ),
)
