"""Raw data that cannot be trained on is refused, with one line naming what is wrong."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

import models
from workflow.data.lazy import is_lazy
from workflow.errors import UsageError

_EXPECTED_SHAPE = {"image": "(N, H, W, C)", "sequence": "(N, T, F)", "tabular": "(N, D)"}
_NDIM = {"image": 4, "sequence": 3, "tabular": 2}


# ----------------------------------------------------------------------------- validation


def shown_name(name: str) -> str:
    """A dataset's name as a message gives it: data handed to workflow.api is named for what
    it is (the arrays, the loader given), not by its registered `...@python` name."""
    if not name.endswith(models.IN_PROCESS_SUFFIX):
        return name
    label = name.removesuffix(models.IN_PROCESS_SUFFIX)
    if label.startswith("arrays-"):
        return "(the arrays given)"
    return f"{label} (the loader given)"


def validate_raw(raw: dict[str, Any], name: str, task: str = "classification") -> dict[str, Any]:
    """Reject raw data that cannot be trained on; return it converted to float32/int32.

    `task` (config.task, engine/tasks.py) says what the targets are: class indices
    (classification), float targets (regression: (N,) or (N, K), kept as (N, K)) or multi-hot
    0/1 targets (multilabel: (N, L)); num_classes is then the targets' count per example."""
    name = shown_name(name)
    required = ("x_train", "y_train", "x_test", "y_test", "kind")
    if task == "classification":
        required += ("num_classes",)
    missing = [k for k in required if k not in raw or raw[k] is None]
    if missing:
        raise UsageError(
            f"dataset {name} lacks {', '.join(missing)}; required: {', '.join(required)}"
        )
    if (raw.get("x_val") is None) != (raw.get("y_val") is None):
        raise UsageError(f"dataset {name} gives only one of x_val, y_val; give both or neither")

    kind = raw["kind"]
    if kind not in KINDS:
        raise UsageError(f"dataset {name} kind={kind!r} is unknown; valid: {', '.join(KINDS)}")
    if task == "classification":
        c = raw.get("num_classes")
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 2:
            raise UsageError(f"dataset {name} num_classes={c!r} must be an integer >= 2")
    else:  # the targets per example
        c = _num_targets(raw, name, task)
    c = int(c)
    irreducible = raw.get("irreducible_error")
    # A rate for classification tasks; regression's is an RMSE in the targets' units.
    high = math.inf if task == "regression" else 1.0
    if irreducible is not None:
        if not isinstance(irreducible, numbers.Real) or not 0.0 <= irreducible <= high:
            raise UsageError(
                f"dataset {name} irreducible_error={irreducible!r} must be in [0, {high:g}] or None"
            )
        irreducible = float(irreducible)

    splits = ["train", "val", "test"] if raw.get("x_val") is not None else ["train", "test"]
    out = dict(raw, kind=kind, num_classes=c, irreducible_error=irreducible)
    if "val" not in splits:  # explicit x_val=None means "no val split": carve one
        out.pop("x_val", None)
        out.pop("y_val", None)
    tokens = raw.get("token_ids") is not None
    feature_shape = None  # x_train's examples', which the other splits' must match
    for split in splits:
        x, y = _checked_split(raw, name, split, kind, c, tokens, feature_shape, task)
        feature_shape = x.shape[1:]
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def _checked_split(
    raw: dict[str, Any],
    name: str,
    split: str,
    kind: str,
    c: int,
    tokens: bool,
    feature_shape: tuple[int, ...] | None,
    task: str = "classification",
) -> tuple[np.ndarray, np.ndarray]:
    """One split's (x, y) as float32 (int32 token ids) and int32, checked: shapes that match
    the kind, each other and `feature_shape` (x_train's), finite inputs, labels in [0, c).
    A lazy split's inputs (data.lazy) are checked by shape here; its reader checks each
    example's values as it reads it."""
    x = raw[f"x_{split}"]
    lazy = is_lazy(x)
    if not lazy:
        x = as_inputs(x, name, split, tokens=tokens)
    if task == "classification":
        y = _as_labels(raw[f"y_{split}"], name, split)
    else:
        y = _as_targets(raw[f"y_{split}"], name, split, task, c)
    if x.ndim != _NDIM[kind]:
        raise UsageError(
            f"dataset {name} x_{split} has shape {x.shape} but kind={kind!r} needs "
            f"{_EXPECTED_SHAPE[kind]} ({_NDIM[kind]} dims)"
        )
    if x.shape[0] != y.shape[0]:
        raise UsageError(
            f"dataset {name} {split} split has {x.shape[0]} inputs but {y.shape[0]} labels"
        )
    if x.shape[0] == 0:
        raise UsageError(f"dataset {name} {split} split is empty")
    if feature_shape is not None and x.shape[1:] != feature_shape:
        raise UsageError(
            f"dataset {name} x_{split} examples have shape {x.shape[1:]} but x_train "
            f"examples have {feature_shape}"
        )
    bad = np.zeros(0, bool) if lazy else ~np.isfinite(x)
    if bad.any():
        n_nan = int(np.isnan(x).sum())
        raise UsageError(
            f"dataset {name} x_{split} has {int(bad.sum())} non-finite values "
            f"({n_nan} NaN, {int(bad.sum()) - n_nan} inf) in "
            f"{int(bad.reshape(len(x), -1).any(1).sum())} examples; inputs must be finite"
        )
    outside = (y < 0) | (y >= c) if task == "classification" else np.zeros(0, bool)
    if outside.any():
        values = np.unique(y[outside])
        shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
        raise UsageError(
            f"dataset {name} y_{split} has {int(outside.sum())} labels outside "
            f"[0, {c}) (values: {shown}); labels must be class indices 0..{c - 1}"
        )
    return x, y


def as_inputs(x: Any, name: str, split: str, tokens: bool = False) -> np.ndarray:
    x = np.asarray(x)
    if tokens:
        # Kept integer: config.dtype=bfloat16 casts floating inputs, and bfloat16 holds integers
        # exactly only up to 256, so float token ids would be merged into their neighbours.
        if not np.issubdtype(x.dtype, np.integer) or (x.size and x.min() < 0):
            raise UsageError(
                f"dataset {name} x_{split} holds token ids, which must be integers >= 0 "
                f"(0 padding, 1 unknown); got dtype {x.dtype}"
            )
        return x.astype(np.int32, copy=False)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise UsageError(f"dataset {name} x_{split} has dtype {x.dtype}; inputs must be numeric")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise UsageError(f"dataset {name} x_{split} is complex; inputs must be real")
    # Checked after the cast so values that overflow float32 are caught as inf.
    return x.astype(np.float32, copy=False)


def _as_labels(y: Any, name: str, split: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        hint = " (one-hot? pass class indices, e.g. y.argmax(-1))" if y.ndim == 2 else ""
        raise UsageError(
            f"dataset {name} y_{split} has shape {y.shape}; labels must be class indices "
            f"shaped (N,){hint}"
        )
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int32, copy=False)
    if np.issubdtype(y.dtype, np.floating):
        finite = np.isfinite(y)
        fractional = ~finite | (np.floor(np.where(finite, y, 0)) != y)
        if fractional.any():
            examples = ", ".join(str(v) for v in np.unique(y[fractional])[:5])
            raise UsageError(
                f"dataset {name} y_{split} has {int(fractional.sum())} non-integer labels "
                f"(e.g. {examples}); labels must be integer class indices"
            )
        return y.astype(np.int32)
    raise UsageError(
        f"dataset {name} y_{split} has dtype {y.dtype}; labels must be integer class indices"
    )


KINDS = ("image", "sequence", "tabular")


def _num_targets(raw: dict[str, Any], name: str, task: str) -> int:
    """The targets per example of a regression or multi-label dataset (y_train's columns); a
    loader's num_classes, when it gives one, must agree (a value < 2 is allowed here)."""
    y = np.asarray(raw["y_train"])
    count = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
    given = raw.get("num_classes")
    if given is not None and not isinstance(given, bool) and given != count:
        raise UsageError(
            f"dataset {name} num_classes={given!r} but y_train has {count} {task} targets per "
            "example; leave num_classes unset or make them agree"
        )
    return count


def _as_targets(y: Any, name: str, split: str, task: str, count: int) -> np.ndarray:
    """Regression or multi-label targets as float32 (N, K): finite numbers; 0/1 for multilabel."""
    y = np.asarray(y)
    if y.dtype == np.bool_:
        y = y.astype(np.float32)
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise UsageError(
            f"dataset {name} y_{split} has dtype {y.dtype}; task={task} targets must be numbers"
        )
    if y.ndim == 1:
        y = y[:, None]
    y = y.reshape(len(y), -1).astype(np.float32)
    bad = ~np.isfinite(y)
    if bad.any():
        raise UsageError(
            f"dataset {name} y_{split} has {int(bad.sum())} non-finite targets (NaN/inf) in "
            f"{int(bad.any(1).sum())} examples; task={task} targets must be finite"
        )
    if task == "multilabel":
        off = (y != 0) & (y != 1)
        if off.any():
            shown = ", ".join(f"{v:g}" for v in np.unique(y[off])[:5])
            raise UsageError(
                f"dataset {name} y_{split} has {int(off.sum())} targets that are not 0 or 1 "
                f"(e.g. {shown}); task=multilabel targets are multi-hot rows of 0/1"
            )
    return y


def val_count(val_fraction: float, num_train: int, name: str) -> int:
    n_val = int(round(val_fraction * num_train))
    if not 1 <= n_val < num_train:
        raise UsageError(
            f"val_fraction={val_fraction} leaves {n_val} val and {num_train - n_val} "
            f"train examples of {num_train} in {name}; pick a fraction that keeps both >= 1"
        )
    return n_val


def check_train_size(train_size: int, num_train: int, name: str) -> None:
    if train_size > num_train:
        raise UsageError(
            f"train_size={train_size} exceeds the {num_train} training examples of "
            f"{name} (after carving val); use train_size <= {num_train} or None"
        )
