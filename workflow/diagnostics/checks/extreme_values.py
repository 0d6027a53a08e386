"""A few values far beyond all the others, in an input feature or a regression target
(`extreme_values`): a code standing for a missing value (-999, 99999), or a unit mixed up on a
few rows (metres among millimetres).

A code is also found by its form (`missing_codes`): -1, or 9, 99, 999... of either sign, on
several rows, outside the range of every other value of the column.

Such values dominate a squared error and the statistics inputs are standardized with. They are
told from a heavy tail by a gap: each column's values are measured in robust standard
deviations from its median (median absolute deviation x 1.4826), and the column is flagged when
its largest such distances jump at least `GAP` times between one value and the next, the values
past the jump lie at least `MIN_ROBUST_Z` robust standard deviations out and are at most
`MAX_SHARE` of the column and at least `MIN_COUNT` (codes and mixed units come on several rows).
A heavy tail (incomes, areas, counts) rises smoothly, with no such jump: even a power law's
largest values are several times apart from the next less often than not, and three of them
past one jump is rare; a column of few distinct values (categories, flags, sparse pixels) is not
judged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow.diagnostics.checks import training_table
from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding

SAMPLE_ROWS = 20_000  # rows read at most (a seeded sample beyond)
MAX_FEATURES = 4096  # wider tables are left alone
MIN_DISTINCT = 20  # fewer distinct values: categories or flags, not judged
MIN_ROBUST_Z = 20.0
GAP = 5.0
MAX_SHARE = 0.05
MIN_COUNT = 3
SHOWN = 3  # columns named in the message


def isolated_extremes(column: np.ndarray) -> dict | None:
    """The values of `column` past a jump in robust distance from its median, or None."""
    if len(np.unique(column)) < MIN_DISTINCT:
        return None
    median = np.median(column)
    scale = 1.4826 * np.median(np.abs(column - median))
    if scale <= 0:
        return None
    z = np.abs(column - median) / scale
    order = np.argsort(z)
    ranked = z[order]
    most = max(1, int(MAX_SHARE * len(column)))
    # Jumps among the largest `most` + 1 distances: ranked[i] -> ranked[i + 1].
    tail = ranked[-(most + 1) :]
    ratios = tail[1:] / np.maximum(tail[:-1], 1e-12)
    for i in np.flatnonzero((ratios >= GAP) & (tail[1:] >= MIN_ROBUST_Z)):
        # The first qualifying jump from the bulk: everything past it is extreme.
        past = order[len(column) - (len(tail) - 1 - i) :]
        if len(past) < MIN_COUNT:
            continue
        values = column[past]
        return {
            "count": int(len(past)),
            "values": sorted({float(v) for v in values})[:5],
            "median": float(median),
            "robust_z": float(ranked[-1]),
            "gap": float(ratios[i]),
        }
    return None


def missing_codes(column: np.ndarray) -> dict | None:
    """A value of the usual missing-value form (-1, or +-9, 99, 999...) on at least MIN_COUNT
    rows (and at most MAX_SHARE of them), outside the range of every other value by at least
    their interquartile range: -999 among areas of 140 to 2,500, or 9999 among ages."""
    values, counts = np.unique(column, return_counts=True)
    for v, count in zip(values, counts, strict=True):
        magnitude = abs(float(v))
        code = v == -1 or (magnitude >= 9 and float(np.log10(magnitude + 1)).is_integer())
        if not code or count < MIN_COUNT or count > MAX_SHARE * len(column):
            continue
        rest = column[column != v]
        if len(np.unique(rest)) < MIN_DISTINCT:
            continue
        low, q1, q3, high = np.percentile(rest, [0, 25, 75, 100])
        margin = max(q3 - q1, 1e-12)
        if v < low - margin or v > high + margin:
            return {
                "count": int(count),
                "values": [float(v)],
                "median": float(np.median(rest)),
                "range_of_the_rest": [float(low), float(high)],
            }
    return None


def _raw_inputs(dataset: Any, x: np.ndarray) -> np.ndarray:
    """Inputs (n, F) in the loader's units: the workflow's per-feature standardization undone."""
    norm = getattr(dataset, "normalization", None) or {}
    mean, std = np.asarray(norm.get("mean", []), np.float64), np.asarray(norm.get("std", []))
    if norm.get("axis") == "per-channel" and mean.shape == (x.shape[1],) == std.shape:
        return x * std + mean
    return x


def _columns(setup: Any, seed: int) -> list[tuple[str, np.ndarray]]:
    """(name, values in the loader's units) of the columns judged: a table's features (not an
    image's pixels or a sequence's steps) and regression targets."""
    dataset, kind = setup.dataset, setup.task.kind
    columns = []
    rows = training_table.sample_rows(dataset, SAMPLE_ROWS, seed)
    # A table's columns only: codes and mixed units are a table's faults, and judging every
    # pixel of an image set one column at a time would cost seconds before each verdict.
    if rows is not None and getattr(dataset, "kind", "tabular") == "tabular":
        x = training_table.features(dataset, rows)
        if x.shape[1] <= MAX_FEATURES:
            x = _raw_inputs(dataset, x)
            for j in range(x.shape[1]):
                name = training_table.feature_name(dataset, j)
                columns.append((f"input feature {name}", x[:, j]))
    if kind.name == "regression" and len(dataset.y_train):
        if rows is None:  # a lazy split's targets are in memory: a sample of them alone
            rows = np.random.default_rng(seed).permutation(len(dataset.y_train))[:SAMPLE_ROWS]
        y = np.asarray(dataset.y_train, np.float64)[rows].reshape(len(rows), -1)
        y = np.asarray(kind.to_target_units(y), np.float64).reshape(len(rows), -1)
        for t in range(y.shape[1]):
            columns.append(("the target" if y.shape[1] == 1 else f"target #{t}", y[:, t]))
    return columns


def _described(name: str, d: dict) -> str:
    """One flagged column in words: its values and how far out they lie."""
    rows = f"{d['count']} row{'s' if d['count'] > 1 else ''}"
    if "robust_z" in d:
        return (
            f"{name} ({rows} with values such as {d['values'][0]:.6g}, {d['robust_z']:.0f} robust "
            f"standard deviations from its median {d['median']:.4g})"
        )
    low, high = d["range_of_the_rest"]
    return f"{name} ({rows} at {d['values'][0]:.6g}, the others within {low:.4g} .. {high:.4g})"


def check_extreme_values(setup: Any, seed: int = 0) -> list[Finding]:
    """`extreme_values` when an input feature or a regression target holds a few values far
    beyond the rest."""
    flagged = {}
    for name, column in _columns(setup, seed):
        finite = column[np.isfinite(column)]
        found = isolated_extremes(finite) or missing_codes(finite)
        if found is not None:
            flagged[name] = found
    if not flagged:
        return []
    shown = [_described(name, d) for name, d in list(flagged.items())[:SHOWN]]
    more = f" and {len(flagged) - SHOWN} more columns" if len(flagged) > SHOWN else ""
    return [
        Finding(
            id="extreme_values",
            severity="warning",
            message=(
                "a few training values lie far beyond all the others in "
                + "; ".join(shown)
                + more
                + ": a code for a missing value, or a unit mixed up on a few rows? They dominate "
                "a squared error and the statistics the inputs are standardized with"
            ),
            evidence={"columns": flagged},
            suggestions=[
                "look at those rows: replace missing-value codes (impute, or drop the rows) and "
                "convert mixed units before training",
                "if the values are real, a robust loss (--config.loss=huber) or a log transform "
                "of the target keeps them from dominating",
            ],
        )
    ]


CHECKS = (
    Check(
        "extreme_values",
        order=12,
        run=lambda setup, batch: check_extreme_values(setup),
    ),
)
