"""Pre-training sanity checks: the 'implement & debug' bugs that are visible before training.

Each check returns a list of `Finding`s (empty = passed) with the numbers in `evidence` and the
workflow's ranked causes and fixes in `suggestions`. The checks run on one batch at
initialization, so they are cheap enough to run before every training run. Model passes go
through pure jitted functions of the split state, so no check mutates `state` (merging eagerly
would share NNX Variables with `state.model_state` and advance its RNG counters).

Thresholds are named module constants; the comment above each says where it comes from. The
"built-in models" below are mlp/lenet/lstm/tcn on their kind of synthetic data at init, which
tests/test_checks.py keeps quiet.
"""

from __future__ import annotations

import functools
import math
import os
import re
import traceback
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workflow import losses, training
from workflow.findings import Finding, sort_findings
from workflow.training import Task, TrainState

Batch = dict[str, np.ndarray]

# Examples per check batch: enough for batch statistics and dead-unit evidence, small enough
# that the eager NaN localization stays fast.
CHECK_BATCH_SIZE = 64

# --- inputs. Standardized inputs have mean 0 and std 1 per channel; images scaled to [0, 1]
# (mean ~0.3, std ~0.3) are still fine for Adam-trained nets, raw 0..255 pixels are not.
INPUT_MEAN_MAX = 1.0
INPUT_STD_RANGE = (0.1, 10.0)
# Per-channel statistics of a split are only judged with at least this many values per channel
# (a 10-example val split of a tabular set says little about one feature's scale).
MIN_VALUES_PER_CHANNEL = 100
# Statistics use at most this many evenly spaced examples of a split: the mean of 4,096
# examples is within ~0.02 std of the split's, and a float64 copy of a large image set is not.
MAX_STAT_EXAMPLES = 4096
# A channel with a smaller std is constant (data.STD_FLOOR): nothing to scale, so its std is not
# judged (its mean still is).
CONSTANT_STD = 1e-8

# --- labels. Total-variation distance between the train and val/test class distributions. For
# n examples of C classes the sampling noise of the TV distance is about 0.4 * sqrt(C / n), at
# most ~0.18 for n >= 5 C; 0.4 is far outside it yet is reached by any split holding a class
# mix unrelated to train's (e.g. test labels of a different encoding, or a sorted subset).
LABEL_TV_MAX = 0.4
LABEL_TV_MIN_EXAMPLES = 50  # and at least LABEL_TV_MIN_PER_CLASS * C examples in the split
LABEL_TV_MIN_PER_CLASS = 5
# The debug stage's memorization test: a memorized training set (accuracy >= 0.99) whose model
# scores at chance (1/C) plus at most half a chance level (capped at 10 points) on val.
MEMORIZED_ACCURACY = 0.99
CHANCE_MARGIN_FACTOR = 0.5
CHANCE_MARGIN_CAP = 0.1

# --- outputs and loss. Probabilities: every output in [0, 1] and rows summing to 1; log-
# probabilities: every output <= 0 and rows with logsumexp 0. float32 softmax rows sum to 1
# within ~1e-6 * C; random logits never come within 1e-3 of either on 64 rows.
PROB_TOL = 1e-3
# Initial loss: a near-uniform prediction gives ln C (the workflow's "check initial loss"); a
# prior-matching bias gives the entropy H of the batch's labels (<= ln C). Accept
# [H - tol, ln C + tol] with tol = max(0.5, 0.25 ln C): the built-in models start within
# 0.25 of ln C (logit std < 0.85), while a x100 weight scale or an output bias of 20 is off
# by more than ln C itself.
INITIAL_LOSS_ABS_TOL = 0.5
INITIAL_LOSS_REL_TOL = 0.25
# The loss must be computed per example: the loss of the first half of a batch computed alone
# must match the first half of the whole batch's loss within float32 noise.
LOSS_SEPARABLE_RTOL = 1e-4

# --- batch dependence / eval determinism. Outputs are compared relative to their scale,
# max(1, max |output|). Another batch composition may change a kernel's reduction order (and
# TF32 matmuls on GPUs round at ~1e-3), while a reduction over the batch axis changes outputs
# by O(0.1-1) (0.12-0.15 for the broken models in tests/check_bugs.py).
BATCH_DEPENDENCE_RTOL = 1e-3
# Two eval passes over the same batch run the same program: anything above rounding is
# randomness that ignores eval mode. Train vs eval with active dropout/BatchNorm differ by O(1).
EVAL_DETERMINISM_RTOL = 1e-6
TRAIN_EVAL_MIN_RDIFF = 1e-6

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

_SUGGEST_NORMALIZE = [
    "set --config.dataset.normalize=True (per-channel mean/std from the training split)",
    "if the loader scales the data itself, check every split is scaled the same way "
    "(e.g. uint8 images divided by 255)",
    "check normalization is not applied twice or along the wrong axis",
]


# ----------------------------------------------------------------------------- helpers


def _path_name(path: tuple) -> str:
    """'hidden/0/kernel' from a tree_flatten_with_path key path (the Variable's .value dropped)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    if parts and parts[-1] == "value":
        parts.pop()
    return "/".join(parts)


def _named_leaves(tree: Any) -> dict[str, Any]:
    """{path name: leaf} of a parameter or gradient tree, in flattening order."""
    return {_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _scale(outputs: np.ndarray) -> float:
    """The magnitude that output differences are judged against: max(1, max |output|)."""
    finite = np.abs(outputs[np.isfinite(outputs)])
    return max(1.0, float(finite.max())) if finite.size else 1.0


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; inf where only one side is finite."""
    with np.errstate(invalid="ignore"):
        d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    d = np.where(same, 0.0, np.nan_to_num(d, nan=np.inf))
    return float(d.max()) if d.size else 0.0


@training.jit_for_few_runs(static_argnums=0)
def _forward(graphdef: Any, params: Any, model_state: Any, x: jax.Array) -> tuple[jax.Array, Any]:
    """Outputs of the model in the mode `graphdef` was split in, and its updated state."""
    model = nnx.merge(graphdef, params, model_state)
    outputs = model(x)
    return outputs, nnx.split(model, nnx.Param, ...)[2]


def _data_loss(
    graphdef: Any, loss_fn: Callable, params: Any, model_state: Any, x: jax.Array, y: jax.Array
):
    """(mean data loss in train mode as the training step computes it, outputs); no L2 term."""
    # Fresh Variables at this trace level: BatchNorm may update its statistics under grad.
    model = nnx.merge(graphdef, params, training.fresh_variables(model_state))
    outputs = model(x)
    return jnp.mean(loss_fn(outputs, y)), outputs


# Static (graphdef, loss): setups of the same architecture and loss share one compiled program.
@training.jit_for_few_runs(static_argnums=(0, 1))
def _loss_outputs_grads(
    graphdef: Any, loss_fn: Callable, params: Any, model_state: Any, x: jax.Array, y: jax.Array
):
    """((mean data loss, train-mode outputs), gradients): one program for three checks."""
    grad_fn = jax.value_and_grad(_data_loss, argnums=2, has_aux=True)
    return grad_fn(graphdef, loss_fn, params, model_state, x, y)


def _loss_and_grads(task: Task, state: TrainState, batch: Batch) -> tuple[jax.Array, Any]:
    """Mean data loss and its gradients at `state` on `batch`."""
    x, y = jnp.asarray(batch["x"]), jnp.asarray(batch["y"])
    (loss, _), grads = _loss_outputs_grads(
        task.train_graphdef, task.loss_fn, state.params, state.model_state, x, y
    )
    return loss, grads


def _reseed(model_state: Any) -> Any:
    """`model_state` with every RNG key folded with a constant: other randomness, same values."""

    def fold(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.fold_in(leaf, 12345)
        return leaf

    return jax.tree.map(fold, model_state)


def sample_batch(dataset: Any, size: int = CHECK_BATCH_SIZE, seed: int = 0) -> Batch:
    """A fixed random batch {'x', 'y'} of the training split (loaders may sort by class)."""
    n = len(dataset.y_train)
    idx = np.sort(np.random.default_rng(seed).permutation(n)[: min(size, n)])
    return {"x": dataset.x_train[idx], "y": dataset.y_train[idx]}


# ----------------------------------------------------------------------------- inputs


def _channel_stats(x: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Overall mean/std and per-channel (last axis) mean/std in float64 (on a subsample)."""
    x = np.asarray(x[:: max(1, len(x) // MAX_STAT_EXAMPLES)], np.float64)
    axes = tuple(range(x.ndim - 1))
    return float(x.mean()), float(x.std()), x.mean(axis=axes), x.std(axis=axes)


def _scale_problems(mean: float, std: float) -> list[str]:
    lo, hi = INPUT_STD_RANGE
    problems = []
    if abs(mean) > INPUT_MEAN_MAX:
        problems.append(f"mean {mean:.3g}")
    if std > CONSTANT_STD and not lo <= std <= hi:
        problems.append(f"std {std:.3g}")
    return problems


def check_inputs(dataset: Any) -> list[Finding]:
    """`inputs_not_normalized` on the inputs as the model receives them.

    Token ids (a dataset with a vocabulary) are indices into an embedding, not measurements:
    their scale says nothing, so they are not checked.
    """
    if (getattr(dataset, "info", None) or {}).get("vocabulary"):
        return []
    findings = []
    off = {}
    for split in ("train", "val", "test"):
        x, _ = dataset.split(split)
        mean, std, ch_mean, ch_std = _channel_stats(x)
        entry = {"mean": round(mean, 4), "std": round(std, 4)}
        problems = _scale_problems(mean, std)
        if problems:
            entry["overall"] = problems
        values_per_channel = x.size // max(1, ch_mean.size)
        if ch_mean.size > 1 and values_per_channel >= MIN_VALUES_PER_CHANNEL:
            bad = {
                i: p for i in range(ch_mean.size) if (p := _scale_problems(ch_mean[i], ch_std[i]))
            }
            if bad:
                entry["channels_off"] = len(bad)
                entry["channels"] = ch_mean.size
                entry["worst_channels"] = {
                    int(i): {"mean": round(float(ch_mean[i]), 4), "std": round(float(ch_std[i]), 4)}
                    for i in sorted(bad, key=lambda i: -abs(ch_mean[i]) - ch_std[i])[:5]
                }
        if "overall" in entry or "channels_off" in entry:
            off[split] = entry
    if off:
        parts = []
        for split, e in off.items():
            what = ", ".join(e.get("overall", []))
            where = "overall " + what if what else ""
            if "channels_off" in e:
                where += (", " if where else "") + (
                    f"{e['channels_off']} of {e['channels']} channels off"
                )
            parts.append(f"{split}: {where}")
        findings.append(
            Finding(
                id="inputs_not_normalized",
                severity="warning",
                message="inputs as fed to the model are far from zero mean / unit scale ("
                + "; ".join(parts)
                + ")",
                evidence={
                    "splits": off,
                    "normalized_by_pipeline": dataset.normalization is not None,
                    "thresholds": {"abs_mean_max": INPUT_MEAN_MAX, "std_range": INPUT_STD_RANGE},
                },
                suggestions=list(_SUGGEST_NORMALIZE),
            )
        )
    return findings


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


def _data_dtype_problems(dataset: Any) -> dict[str, tuple[str, str]]:
    """{array name: (problem, severity)} for inputs and labels, as loaded and as fed."""
    problems = {}
    # The loader's own dtypes (data.load_dataset records them before casting); a val split
    # carved from train has the train arrays' dtypes.
    info = getattr(dataset, "info", None) or {}
    source = info.get("source_dtypes", {})
    # Token ids (text data with a vocabulary) are integer inputs by design.
    tokens = bool(info.get("vocabulary"))
    for split in ("train", "val", "test"):
        x, y = dataset.split(split)
        for role, array in (("x", x), ("y", y)):
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
                    problems[name] = (
                        "float64 in the loader (cast to float32 by the pipeline: precision the "
                        "preprocessing relied on is dropped)",
                        "warning",
                    )
                elif np.issubdtype(loaded, np.integer):
                    problems[name] = (
                        f"{loaded} in the loader: integers where floats are expected (cast to "
                        "float32 unscaled)",
                        "warning",
                    )
            elif not np.issubdtype(fed, np.integer):
                problems[name] = (f"{fed} as fed: labels must be integer class indices", "error")
            elif np.issubdtype(loaded, np.floating):
                problems[name] = (
                    f"{loaded} in the loader: labels as floats (cast to int32 class indices)",
                    "warning",
                )
    return problems


def _model_dtype_problems(task: Task, state: TrainState, x: np.ndarray) -> dict[str, tuple]:
    """{'params/<name>' or 'outputs': (problem, severity)}: float64, mixed or promoted dtypes."""
    params = {
        k: np.dtype(v.dtype)
        for k, v in _named_leaves(state.params).items()
        if jnp.issubdtype(v.dtype, jnp.floating)
    }
    try:  # abstract evaluation: the dtype of the outputs without running the model
        outputs = jax.eval_shape(
            functools.partial(_forward, task.train_graphdef),
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
    suggestions = []
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
    if "jax_enable_x64" in problems or any("float64" in p for p, _ in problems.values()):
        suggestions.append(
            "keep jax_enable_x64 off: unset JAX_ENABLE_X64 and remove "
            "jax.config.update('jax_enable_x64', True); the workflow computes in float32"
        )
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


# ----------------------------------------------------------------------------- labels


def label_summary(dataset: Any) -> dict[str, Any]:
    """Class counts per split and the train imbalance ratio (largest / smallest count)."""
    c = int(dataset.num_classes)
    counts = {}
    for split in ("train", "val", "test"):
        y = np.asarray(dataset.split(split)[1])
        inside = y[(y >= 0) & (y < c)].astype(np.int64)
        counts[split] = [int(v) for v in np.bincount(inside, minlength=c)]
    train = np.asarray(counts["train"])
    present = train[train > 0]
    imbalance = float(present.max() / present.min()) if present.size else math.nan
    return {"class_counts": counts, "train_imbalance": round(imbalance, 3)}


def check_labels(dataset: Any) -> list[Finding]:
    """`labels_out_of_range`, and `labels_corrupted` for label problems visible without training."""
    findings = []
    c = int(dataset.num_classes)
    outside = {}
    for split in ("train", "val", "test"):
        y = np.asarray(dataset.split(split)[1])
        bad = (y < 0) | (y >= c)
        if bad.any():
            outside[split] = {
                "count": int(bad.sum()),
                "values": [v.item() for v in np.unique(y[bad])[:10]],
            }
    if outside:
        findings.append(
            Finding(
                id="labels_out_of_range",
                severity="error",
                message=f"labels outside [0, {c}) in "
                + ", ".join(f"{s} ({e['count']})" for s, e in outside.items()),
                evidence={"num_classes": c, "splits": outside},
                suggestions=[
                    "map labels to class indices 0..C-1 in the loader (e.g. 1-based -> y - 1)",
                    "check num_classes matches the data",
                ],
            )
        )

    summary = label_summary(dataset)
    counts = {s: np.asarray(v, np.float64) for s, v in summary["class_counts"].items()}
    present = np.flatnonzero(counts["train"])
    if len(present) == 1:
        findings.append(
            Finding(
                id="labels_corrupted",
                severity="error",
                message=f"every training label is class {int(present[0])}: the labels carry no "
                "signal to learn",
                evidence={"num_classes": c, **summary},
                suggestions=[
                    "check the loader reads the label column/field, not a constant or an index",
                    "check the labels are not zeroed or overwritten in preprocessing",
                ],
            )
        )
        return findings

    p_train = counts["train"] / max(1.0, counts["train"].sum())
    shifted = {}
    for split in ("val", "test"):
        n = counts[split].sum()
        if n < max(LABEL_TV_MIN_EXAMPLES, LABEL_TV_MIN_PER_CLASS * c):
            continue
        tv = 0.5 * float(np.abs(counts[split] / n - p_train).sum())
        if tv > LABEL_TV_MAX:
            shifted[split] = round(tv, 4)
    if shifted:
        findings.append(
            Finding(
                id="labels_corrupted",
                severity="warning",
                message="the class distribution differs wildly between train and "
                + ", ".join(f"{s} (total variation {tv:.2f})" for s, tv in shifted.items()),
                evidence={
                    "total_variation": shifted,
                    "threshold": LABEL_TV_MAX,
                    **summary,
                },
                suggestions=[
                    "check every split is labeled with the same class encoding",
                    "check the splits are drawn from the same distribution (not a sorted or "
                    "filtered subset)",
                ],
            )
        )
    return findings


def labels_signal_finding(
    train_batch_accuracy: float, val_accuracy: float, num_classes: int
) -> list[Finding]:
    """`labels_corrupted` when training data is memorized but val accuracy stays at chance."""
    chance = 1.0 / num_classes
    limit = chance + min(CHANCE_MARGIN_FACTOR * chance, CHANCE_MARGIN_CAP)
    if train_batch_accuracy < MEMORIZED_ACCURACY or val_accuracy >= limit:
        return []
    return [
        Finding(
            id="labels_corrupted",
            severity="error",
            message=f"the model memorizes its training data (accuracy {train_batch_accuracy:.3f}) "
            f"but scores {val_accuracy:.3f} on val, chance level for {num_classes} classes: the "
            "labels carry no signal the inputs predict",
            evidence={
                "train_accuracy": train_batch_accuracy,
                "val_accuracy": val_accuracy,
                "chance": chance,
                "val_accuracy_limit": limit,
                "memorized_threshold": MEMORIZED_ACCURACY,
            },
            suggestions=[
                "check labels stay aligned with their inputs when shuffling or splitting",
                "check train and val inputs get the same preprocessing",
                "look at a few examples with their labels",
            ],
        )
    ]


# ----------------------------------------------------------------------------- outputs, loss


def _output_kind(outputs: np.ndarray) -> str | None:
    """'probabilities', 'log-probabilities' or None for outputs that look like logits."""
    if not np.all(np.isfinite(outputs)) or outputs.shape[-1] < 2:
        return None
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
# would compile on its own (2.4 s of a cold debug run for softmax cross-entropy).
@training.jit_for_few_runs(static_argnums=0)
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
    promotion = None
    try:
        with jax.numpy_rank_promotion("raise"):
            jax.eval_shape(loss_fn, outputs, labels)
    except ValueError as e:
        if "rank_promotion" not in str(e):
            raise
        promotion = str(e).split(". For more", 1)[0]
    shape = tuple(per_example.shape)
    separable_diff = None
    if shape == (n,) and n >= 2:
        h = n // 2
        full = np.asarray(_apply_loss(loss_fn, outputs, labels))
        try:
            half = np.asarray(_apply_loss(loss_fn, outputs[:h], labels[:h]))
            separable_diff = _max_diff(full[:h], half) / _scale(full)
        except Exception:  # a loss tied to one batch size: the shape test above still holds
            separable_diff = None
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


def check_output_and_loss(
    task: Task, state: TrainState, batch: Batch, num_classes: int
) -> list[Finding]:
    """`shape_mismatch`, `softmax_before_loss` and `initial_loss_off` on one batch at step 0."""
    x, y = jnp.asarray(batch["x"]), jnp.asarray(batch["y"])
    n = x.shape[0]
    # Train mode: the loss the first training step reports. The gradient program is compiled
    # here for the later checks too; a loss that cannot even run falls back to a forward pass.
    try:
        (_, outputs), _ = _loss_outputs_grads(
            task.train_graphdef, task.loss_fn, state.params, state.model_state, x, y
        )
    except Exception:  # reported below as a shape_mismatch of the loss
        outputs, _ = _forward(task.train_graphdef, state.params, state.model_state, x)
    try:
        chex.assert_shape(outputs, (n, num_classes))
    except AssertionError as e:
        return [
            Finding(
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
        ]
    builtin_ce = task.loss_fn is losses.softmax_cross_entropy
    loss_name = getattr(task.loss_fn, "__name__", repr(task.loss_fn))
    findings = _loss_shape_findings(task.loss_fn, outputs, y, loss_name)

    out = np.asarray(outputs, np.float64)
    kind = _output_kind(out)
    if kind:
        if kind == "probabilities":
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
        findings.append(
            Finding(
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
                    "remove the final softmax / log_softmax from the model: return raw logits",
                    "apply softmax only where probabilities are needed (prediction, calibration)",
                ],
            )
        )

    # Calibrated for softmax cross-entropy, so computed as that on the outputs read as logits;
    # under another loss the result is only reported (info).
    ce = _softmax_cross_entropy(out, np.asarray(y))
    ln_c = math.log(num_classes)
    entropy = _label_entropy(np.asarray(y), num_classes)
    tol = max(INITIAL_LOSS_ABS_TOL, INITIAL_LOSS_REL_TOL * ln_c)
    if not math.isfinite(ce) or not entropy - tol <= ce <= ln_c + tol:
        logits_std = float(np.std(out)) if np.all(np.isfinite(out)) else math.inf
        row_spread = out.max(-1) - out.min(-1)
        findings.append(
            Finding(
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
                    "too small: labels may leak into the inputs, or the loss is not averaged "
                    "per example",
                    "the model may end in a softmax (see softmax_before_loss)",
                ],
            )
        )
    return findings


# ----------------------------------------------------------------------------- batch, mode


def check_batch_dependence(task: Task, state: TrainState, x: np.ndarray) -> list[Finding]:
    """`batch_dependence` when an example's eval output depends on the rest of its batch."""
    x = np.asarray(x)
    n = len(x)
    if n < 2:
        return []

    def run(xs):
        return np.asarray(_forward(task.eval_graphdef, state.params, state.model_state, xs)[0])

    full = run(x)
    scale = _scale(full)
    reseeded = _forward(task.eval_graphdef, state.params, _reseed(state.model_state), x)[0]
    if _max_diff(full, np.asarray(reseeded)) / scale > EVAL_DETERMINISM_RTOL:
        return []  # random eval outputs: check_train_eval_mode reports that, not this check
    h = n // 2
    perm = np.random.default_rng(0).permutation(n)
    # Same batch size throughout (one compiled program): the first half is run once with the
    # second half and once with a copy of itself, so batch statistics change but not shapes.
    doubled = np.concatenate([x[:h], x[:h], x[2 * h :]])
    diffs = {
        "first_half_in_another_batch": _max_diff(run(doubled)[:h], full[:h]) / scale,
        "permuted_batch": _max_diff(run(x[perm]), full[perm]) / scale,
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


def _mode_layers(task: Task, state: TrainState) -> list[dict[str, Any]]:
    """Dropout (rate > 0) and BatchNorm layers: their outputs should differ in train and eval."""
    model = nnx.merge(
        task.train_graphdef, state.params, training.fresh_variables(state.model_state)
    )
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
    first, advanced = _forward(task.eval_graphdef, state.params, state.model_state, x)
    first = np.asarray(first)
    scale = _scale(first)
    # A second pass with the RNG counters the first one advanced, and one with other keys.
    second = np.asarray(_forward(task.eval_graphdef, state.params, advanced, x)[0])
    reseeded = np.asarray(
        _forward(task.eval_graphdef, state.params, _reseed(state.model_state), x)[0]
    )
    diff = max(_max_diff(first, second), _max_diff(first, reseeded)) / scale
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
    layers = _mode_layers(task, state)
    if layers:
        train = np.asarray(_forward(task.train_graphdef, state.params, state.model_state, x)[0])
        train_diff = _max_diff(train, first) / scale
        if train_diff <= TRAIN_EVAL_MIN_RDIFF:
            kinds = sorted({layer["type"] for layer in layers})
            findings.append(
                Finding(
                    id="train_eval_mode",
                    severity="error",
                    message=f"the model has {' and '.join(kinds)} layers but its train-mode "
                    "output equals its eval-mode output: they behave the same in both modes",
                    evidence={"layers": layers, "train_vs_eval_relative_difference": train_diff},
                    suggestions=[
                        "do not pin deterministic=True / use_running_average=True at call "
                        "time; let model.train() / model.eval() set them",
                        "check the layers sit on the path from input to output",
                    ],
                )
            )
    return findings


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


def check_gradients(task: Task, state: TrainState, batch: Batch) -> list[Finding]:
    """`exploding_gradients`, `dead_units`, `no_gradient`, `vanishing_gradients` at step 0."""
    x = np.asarray(batch["x"])
    loss, grads = _loss_and_grads(task, state, batch)
    loss = float(loss)
    g = {k: np.asarray(v, np.float64) for k, v in _named_leaves(grads).items()}
    p = {k: np.asarray(v, np.float64) for k, v in _named_leaves(state.params).items()}
    g_norm = {k: float(np.linalg.norm(v)) for k, v in g.items()}
    global_norm = float(np.sqrt(sum(v**2 for v in g_norm.values())))

    nonfinite = [k for k, v in g.items() if not np.all(np.isfinite(v))]
    if nonfinite or global_norm > EXPLODING_GRAD_NORM:
        largest = sorted(
            g_norm, key=lambda k: -g_norm[k] if math.isfinite(g_norm[k]) else -math.inf
        )
        return [
            Finding(
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
                    "clip gradients (optax.clip_by_global_norm) or lower the learning rate",
                ],
            )
        ]

    findings = []
    zero = [k for k, v in g.items() if not np.any(v)]
    dead = [d for k, v in g.items() if (d := _dead_inputs(k, v, g, x)) is not None]
    fully_dead = [d for d in dead if d["fraction"] >= 1.0]
    if dead:
        explained = zero if fully_dead else []
        findings.append(
            Finding(
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
                    "batch_size": len(x),
                },
                suggestions=[
                    "a large negative bias or pre-activation shift: initialize biases at 0",
                    "lower the learning rate (a big step can kill ReLUs), normalize the inputs",
                    "use leaky_relu / gelu, or He initialization for ReLU layers",
                ],
            )
        )
    else:
        explained = []
    unexplained = [k for k in zero if k not in explained]
    if unexplained:
        every = len(unexplained) == len(g)
        findings.append(
            Finding(
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
        )

    ratios = {
        k: g_norm[k] / float(np.linalg.norm(p[k])) for k in g if g_norm[k] > 0 and np.any(p[k])
    }
    vanishing = {}
    if ratios:
        best = max(ratios.values())
        vanishing = {k: r for k, r in ratios.items() if r < VANISHING_RELATIVE_RATIO * best}
    tiny_global = 0 < global_norm < VANISHING_GLOBAL_NORM and loss > LOSS_NEAR_ZERO
    if vanishing or tiny_global:
        findings.append(
            Finding(
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
                    else f"the global gradient norm is {global_norm:.3g} while the loss is "
                    f"{loss:.3g}"
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
        )
    return findings


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
    loss, grads = _loss_and_grads(task, state, batch)
    # On the host: eager jnp checks would compile once per parameter shape.
    finite = bool(np.isfinite(np.asarray(loss))) and all(
        np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(grads)
    )
    if finite:  # masked intermediate NaNs (jnp.where(x > 0, log(x), 0)) are not reported
        return None
    phase = "loss" if not math.isfinite(float(loss)) else "gradient"
    model_state = training.fresh_variables(state.model_state)
    error = None
    # Eagerly (not under an outer jit), so each operation is checked as it runs; a jitted inner
    # function with a non-finite output is re-run de-optimized by JAX to name the primitive.
    # Not jax.disable_jit(): that would expose library constants such as the -inf initial value
    # of jnp.max inside softmax as false "inf" sources.
    with jax.debug_nans(True), jax.debug_infs(True):
        try:
            jax.value_and_grad(_data_loss, argnums=2, has_aux=True)(
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


# ----------------------------------------------------------------------------- all


def run_checks(setup: Any, batch: Batch | None = None) -> list[Finding]:
    """Every pre-training check on `setup` and one batch, most likely root cause first."""
    dataset, task, state = setup.dataset, setup.task, setup.state
    batch = batch if batch is not None else sample_batch(dataset)
    # Data first: unnormalized inputs or bad labels explain most model-side symptoms.
    findings = check_inputs(dataset) + check_dtypes(dataset, task, state, batch)
    findings += check_labels(dataset)
    if any(f.id == "labels_out_of_range" for f in findings):
        return sort_findings(findings)  # the loss would index outside the logits
    output_findings = check_output_and_loss(task, state, batch, dataset.num_classes)
    findings += output_findings
    blocking = [f for f in output_findings if f.id == "shape_mismatch" and f.severity == "error"]
    # Outputs of the wrong shape stop every model check; a loss that raises stops the gradients.
    bad_outputs = any("expected" in f.evidence for f in blocking)
    loss_fails = bad_outputs or any("error" in f.evidence for f in blocking)
    if not loss_fails and (nonfinite := locate_nonfinite(task, state, batch)):
        findings.append(nonfinite)
    if not bad_outputs:
        findings += check_batch_dependence(task, state, batch["x"])
        findings += check_train_eval_mode(task, state, batch["x"])
    if not loss_fails:
        findings += check_gradients(task, state, batch)
    return sort_findings(findings)
