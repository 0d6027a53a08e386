"""Arrays in unexpected dtypes, as loaded and as fed: `dtype_mismatch`."""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.checks.probes import Batch, forward_in_mode, named_leaves
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState

# ----------------------------------------------------------------------------- dtypes

# What the pipeline feeds the model (data.py casts to these) and what the workflow trains in:
# float32 parameters and outputs, with config.dtype=bfloat16 casting only inside the step.
EXPECTED_DTYPES = {
    "inputs": "float32",
    "labels": "int32",
    "params": "float32",
    "outputs": "float32",
}
_SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}
# float64 inputs cast to float32 are a problem only when the rounding erases part of a feature's
# variation: a change above this share of its standard deviation (float32 keeps ~7 digits, so
# ordinary data rounds by ~1e-7 of its spread; timestamps near 1.7e9 that vary by seconds, by
# far more than 1).
FLOAT32_ROUNDING_MAX = 1e-3


def _data_dtype_problems(dataset: Any) -> dict[str, tuple[str, str]]:
    """{array name: (problem, severity)} for inputs and labels, as loaded and as fed."""
    problems = {}
    # The loader's own dtypes (data.load_dataset records them before casting); a val split
    # carved from train has the train arrays' dtypes.
    info = getattr(dataset, "info", None) or {}
    source = info.get("source_dtypes", {})
    # Token ids (text data with a vocabulary) are integer inputs by design.
    tokens = bool(info.get("vocabulary"))
    # Regression and multi-label targets are floats by design (engine/tasks.py).
    class_labels = getattr(getattr(dataset, "task", None), "name", "classification")
    # Normalized per channel from the training split, integer pixels need no scaling by hand.
    scaled = getattr(dataset, "normalization", None) is not None
    rounding = info.get("float32_rounding")
    roles = ("x", "y") if class_labels == "classification" else ("x",)
    for split in ("train", "val", "test"):
        x, y = dataset.split(split)
        for role, array in (("x", x), ("y", y)):
            if role not in roles:
                continue
            name = f"{role}_{split}"
            fed = np.dtype(array.dtype)
            loaded = np.dtype(source.get(name) or source.get(f"{role}_train") or fed)
            if role == "x" and tokens:
                if not np.issubdtype(fed, np.integer):
                    problems[name] = (f"{fed} as fed: token ids must be integers", "error")
            elif role == "x":
                if fed == np.float64:
                    problems[name] = (
                        "float64 as fed (JAX computes in float32: a silent cast)",
                        "warning",
                    )
                elif not np.issubdtype(fed, np.floating):
                    problems[name] = (
                        f"{fed} as fed: integers where floats are expected",
                        "warning",
                    )
                elif loaded == np.float64:
                    problems[name] = _float64_inputs(rounding)
                elif np.issubdtype(loaded, np.integer) and not scaled:
                    problems[name] = (
                        f"{loaded} in the loader: integers where floats are expected (cast to "
                        "float32 unscaled)",
                        "warning",
                    )
            elif not np.issubdtype(fed, np.integer):
                problems[name] = (f"{fed} as fed: labels must be integer class indices", "error")
            elif np.issubdtype(loaded, np.floating):
                # Validation refused any that is not a whole number: the cast loses nothing.
                problems[name] = (
                    f"{loaded} in the loader: labels as floats, whole numbers (cast to int32 "
                    "class indices; if they are measurements, --config.task=regression)",
                    "info",
                )
    return problems


def _float64_inputs(rounding: float | None) -> tuple[str, str]:
    """(problem, severity) of float64 inputs: a warning when float32 rounds away part of a
    feature's variation (or it was not measured), else info."""
    if rounding is None or rounding > FLOAT32_ROUNDING_MAX:
        measured = "" if rounding is None else f" by up to {rounding:.3g} of a feature's spread"
        return (
            f"float64 in the loader, rounded{measured} by the pipeline's cast to float32: "
            "variation the data holds is lost",
            "warning",
        )
    return (
        f"float64 in the loader, cast to float32 (rounding at most {rounding:.1g} of a "
        "feature's spread: nothing lost)",
        "info",
    )


def _model_dtype_problems(task: Task, state: TrainState, x: np.ndarray) -> dict[str, tuple]:
    """{'params/<name>' or 'outputs': (problem, severity)}: float64, mixed or promoted dtypes."""
    params = {
        k: np.dtype(v.dtype)
        for k, v in named_leaves(state.params).items()
        if jnp.issubdtype(v.dtype, jnp.floating)
    }
    try:  # abstract evaluation: the dtype of the outputs without running the model
        outputs = jax.eval_shape(
            functools.partial(forward_in_mode, task.train_graphdef),
            state.params,
            state.model_state,
            jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
        )[0]
        out = np.dtype(outputs.dtype)
    except Exception:  # a model that cannot run is reported by the output and shape checks
        out = None
    problems: dict[str, tuple[str, str]] = {}
    reasons: dict[str, list[str]] = {}
    counts: dict[np.dtype, int] = {}
    for dtype in params.values():
        counts[dtype] = counts.get(dtype, 0) + 1
    majority = max(counts, key=counts.get) if counts else None
    for name, dtype in params.items():
        if dtype == np.float64:
            reasons.setdefault(name, []).append("float64 parameters")
        elif dtype != majority:
            reasons.setdefault(name, []).append(
                f"{dtype} while the other parameters are {majority}"
            )
        # Half-precision parameters that meet float32 (or wider) values; float32 ones under
        # float64 outputs are explained by the outputs entry below.
        if out is not None and jnp.issubdtype(out, jnp.floating) and dtype.itemsize < 4:
            if out.itemsize > dtype.itemsize:
                reasons.setdefault(name, []).append(
                    f"{dtype} promoted to {out} by the computation (the outputs are {out})"
                )
    for name, why in reasons.items():
        problems[f"params/{name}"] = (f"{params[name]}: " + "; ".join(why), "warning")
    if out is not None:
        if not jnp.issubdtype(out, jnp.floating):
            problems["outputs"] = (f"{out}: outputs must be floating-point logits", "error")
        elif out == np.float64:
            problems["outputs"] = ("float64: the model computes in double precision", "warning")
        elif params and all(out.itemsize < d.itemsize for d in params.values()):
            problems["outputs"] = (
                f"{out} from {majority} parameters: the model computes in lower precision than "
                "its parameters (config.dtype does this on purpose, keeping the outputs float32)",
                "info",
            )
    return problems


def x64_problem() -> tuple[str, str] | None:
    """(problem, severity) when jax_enable_x64 is on: the workflow never turns it on itself."""
    if not jax.config.jax_enable_x64:
        return None
    env = os.environ.get("JAX_ENABLE_X64")
    where = f"$JAX_ENABLE_X64={env}" if env else "jax.config.update or jax.enable_x64 in code"
    return (
        f"on (set by {where}): arrays default to float64, doubling memory and running far "
        "slower on accelerators",
        "warning",
    )


def check_dtypes(
    dataset: Any,
    task: Task | None = None,
    state: TrainState | None = None,
    batch: Batch | None = None,
) -> list[Finding]:
    """`dtype_mismatch` naming each array in an unexpected dtype: inputs or labels as loaded or
    as fed, parameters (float64, mixed, silently promoted), outputs, and jax_enable_x64."""
    problems = _data_dtype_problems(dataset)
    if task is not None and state is not None and batch is not None:
        problems.update(_model_dtype_problems(task, state, batch["x"]))
    if (x64 := x64_problem()) is not None:
        problems["jax_enable_x64"] = x64
    if not problems:
        return []
    # Arrays with the same problem (x_train, x_val, x_test) share one phrase in the message.
    groups: dict[str, list[str]] = {}
    for name, (problem, _) in problems.items():
        groups.setdefault(problem, []).append(name)
    severity = max((s for _, s in problems.values()), key=_SEVERITY_RANK.get)
    suggestions = _dtype_suggestions(problems)
    return [
        Finding(
            id="dtype_mismatch",
            severity=severity,
            message="unexpected dtypes: "
            + "; ".join(f"{', '.join(names)}: {problem}" for problem, names in groups.items()),
            evidence={
                "dtypes": {name: problem for name, (problem, _) in problems.items()},
                "expected": dict(EXPECTED_DTYPES),
                "jax_enable_x64": bool(jax.config.jax_enable_x64),
                "source_dtypes": (getattr(dataset, "info", None) or {}).get("source_dtypes", {}),
            },
            suggestions=suggestions,
        )
    ]


def _dtype_suggestions(problems: dict[str, tuple[str, str]]) -> list[str]:
    """One fix for each kind of array with a problem: inputs, labels, parameters, outputs, x64."""
    suggestions = []
    if any("variation the data holds is lost" in p for p, _ in problems.values()):
        suggestions.append(
            "center those features in float64 in the loader before the cast: x - x.mean(0), "
            "or values relative to a reference (seconds since the first timestamp)"
        )
    if any(n.startswith("x_") for n in problems):
        suggestions.append(
            "convert inputs in the loader: x.astype(np.float32), scaling integers first "
            "(uint8 pixels / 255); one-hot or embed integer category codes"
        )
    if any(n.startswith("y_") for n in problems):
        suggestions.append(
            "return integer class indices from the loader: y.astype(np.int32) (one-hot labels: "
            "y.argmax(-1)); float labels may be regression targets, not classes"
        )
    if any(n.startswith("params/") for n in problems):
        suggestions.append(
            "create every parameter in float32 (the default param_dtype); for lower precision "
            "set --config.dtype=bfloat16, which computes in bfloat16 and keeps float32 parameters"
        )
    if "outputs" in problems:
        suggestions.append(
            "return float32 logits from the last Dense layer (no argmax/round, no float64 "
            "constants)"
        )
    computed = [p for n, (p, _) in problems.items() if not n.startswith(("x_", "y_"))]
    if "jax_enable_x64" in problems or any("float64" in p for p in computed):
        suggestions.append(
            "keep jax_enable_x64 off: unset JAX_ENABLE_X64 and remove "
            "jax.config.update('jax_enable_x64', True); the workflow computes in float32"
        )
    return suggestions


CHECKS = (
    Check(
        "dtypes",
        order=20,
        run=lambda setup, batch: check_dtypes(setup.dataset, setup.task, setup.state, batch),
    ),
)
