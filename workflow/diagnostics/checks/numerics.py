"""Where a NaN/inf first appears: the operation and the source line (`nan_or_inf`)."""

from __future__ import annotations

import math
import re
import traceback
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workflow import engine
from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, LOSS_RUNS, Check
from workflow.diagnostics.checks.probes import Batch, data_loss, loss_and_grads
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState

# ----------------------------------------------------------------------------- non-finite

_PRIMITIVE_RE = re.compile(r"encountered in (?:the output of )?([\w.\-]+)")
_LIBRARIES = ("/jax/", "/jaxlib/", "/flax/", "/optax/", "/chex/", "/numpy/", __file__)


def _source_frame(error: BaseException) -> dict[str, Any] | None:
    """The innermost frame of the error's traceback outside JAX/Flax/optax and this module."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if not any(lib in frame.filename for lib in _LIBRARIES):
            return {
                "file": frame.filename,
                "line": frame.lineno,
                "function": frame.name,
                "code": (frame.line or "").strip(),
            }
    return None


def locate_nonfinite(task: Task, state: TrainState, batch: Batch) -> Finding | None:
    """`nan_or_inf` naming the first primitive (and source line) that makes a NaN/inf at step 0."""
    x, y = jnp.asarray(batch["x"]), jnp.asarray(batch["y"])
    loss, grads = loss_and_grads(task, state, batch)
    # On the host: eager jnp checks would compile once per parameter shape.
    finite = bool(np.isfinite(np.asarray(loss))) and all(
        np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(grads)
    )
    if finite:  # masked intermediate NaNs (jnp.where(x > 0, log(x), 0)) are not reported
        return None
    phase = "loss" if not math.isfinite(float(loss)) else "gradient"
    model_state = engine.fresh_variables(state.model_state)
    error = None
    # Eagerly (not under an outer jit), so each operation is checked as it runs; a jitted inner
    # function with a non-finite output is re-run de-optimized by JAX to name the primitive.
    # Not jax.disable_jit(): that would expose library constants such as the -inf initial value
    # of jnp.max inside softmax as false "inf" sources.
    with jax.debug_nans(True), jax.debug_infs(True):
        try:
            jax.value_and_grad(data_loss, argnums=2, has_aux=True)(
                task.train_graphdef, task.loss_fn, state.params, model_state, x, y
            )
        except FloatingPointError as e:
            error = e
    first_line = str(error).strip().splitlines()[0] if error else None
    match = _PRIMITIVE_RE.search(first_line or "")
    primitive = match.group(1) if match else None
    source = _source_frame(error) if error else None
    where = f" in {primitive}" if primitive else ""
    at = f" at {source['file']}:{source['line']} ({source['function']})" if source else ""
    return Finding(
        id="nan_or_inf",
        severity="error",
        message=f"the {phase} at step 0 is NaN/inf; first produced{where}{at}"
        + (" (in its derivative)" if phase == "gradient" else ""),
        evidence={
            "step": 0,
            "quantity": phase,
            "loss": float(loss),
            "primitive": primitive,
            "source": source,
            "error": first_line,
        },
        suggestions=[
            "log of a value that reaches 0: compute log-probabilities with log_softmax / "
            "optax losses on logits, or clip: jnp.log(jnp.maximum(p, eps))",
            "exp overflow: subtract the max first (logsumexp); division: guard the denominator",
            "sqrt or pow at 0 has an infinite gradient: add an epsilon inside",
            "weights or inputs far too large push exp/log out of range: check the init and the "
            "input normalization",
        ],
    )


def _nonfinite_check(setup: Any, batch: Batch) -> list[Finding]:
    located = locate_nonfinite(setup.task, setup.state, batch)
    return [located] if located is not None else []


CHECKS = (Check("nonfinite", order=50, run=_nonfinite_check, needs=(LABELS_IN_RANGE, LOSS_RUNS)),)
