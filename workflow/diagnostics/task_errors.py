"""Error analysis of the tasks beyond single-label classification (config.task), on train and
val side by side as error_analysis.py does for classes:

* regression: RMSE, MAE and R² in the targets' units, the mean residual (a bias the model keeps),
  the residuals against the targets (plots/residuals.png) and the worst examples by absolute
  error;
* multilabel: each label's error rate, F1 and positives, worst label first (plots/label_errors.png).

`analyze` returns the summary.json `error_analysis` block ({"task", "splits", ...}); `report_blocks`
renders it for report.md from that block alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow.diagnostics import error_analysis
from workflow.engine import tasks

SPLITS = error_analysis.SPLITS
# The worst examples listed per split, and the residual points drawn per split at most.
WORST_EXAMPLES = 10
MAX_DRAWN = 2000


def predict_outputs(task, state, x: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's raw (N, K) outputs in eval mode, in batches padded to one shape."""
    predict = error_analysis.make_predict(task, probabilities=False)
    return error_analysis.predict_in_batches(predict, state, x, batch_size).astype(np.float64)


def analyze(
    task, state, dataset, batch_size: int, max_examples: int = error_analysis.MAX_EXAMPLES
) -> tuple[dict, dict[str, np.ndarray]]:
    """The train and val analyses of `state` in the task's terms, and per split the worst
    examples' inputs (normalization undone), aligned with its worst_examples."""
    splits, worst_inputs = {}, {}
    for split in SPLITS:
        x, y = dataset.split(split)
        if not len(y):
            continue
        idx = error_analysis.subset_indices(len(y), max_examples)
        batch = max(1, min(batch_size, len(idx)))
        outputs = predict_outputs(task, state, x[idx], batch)
        if task.kind.name == tasks.REGRESSION:
            result = regression_split(task.kind, np.asarray(y[idx], np.float64), outputs, idx)
        else:
            result = multilabel_split(np.asarray(y[idx], np.float64), outputs)
        result["total"] = int(len(y))
        positions = [w["index"] for w in result.get("worst_examples", [])]
        raw = error_analysis.raw_inputs(x[positions], dataset.normalization)
        if dataset.kind == "tabular":
            for w, values in zip(result.get("worst_examples", []), raw, strict=True):
                w["inputs"] = [float(v) for v in np.ravel(values)[: error_analysis.TABLE_FEATURES]]
        splits[split], worst_inputs[split] = result, raw
    analysis = {
        "task": task.kind.name,
        "max_examples": max_examples,
        "num_features": int(np.prod(dataset.input_shape)),
        "splits": splits,
    }
    if task.kind.name == tasks.MULTILABEL:
        analysis["label_names"] = dataset.info.get("label_names") or [
            str(i) for i in range(dataset.num_classes)
        ]
    return analysis, worst_inputs


def regression_split(
    kind: tasks.Regression, y: np.ndarray, outputs: np.ndarray, idx: np.ndarray
) -> dict[str, Any]:
    """One split's regression analysis in the targets' units (all outputs together)."""
    targets, predictions = kind.to_target_units(y), kind.to_target_units(outputs)
    residuals = predictions - targets  # (N, K)
    abs_error = np.abs(residuals).mean(-1)
    worst = np.argsort(-abs_error, kind="stable")[:WORST_EXAMPLES]
    drawn = error_analysis.subset_indices(len(y), MAX_DRAWN)
    total = ((targets - targets.mean(0)) ** 2).sum(0)
    r2 = 1.0 - (residuals**2).sum(0) / np.where(total > 0, total, np.nan)
    return {
        "examples": int(len(y)),
        "rmse": float(np.sqrt(np.mean(residuals**2))),
        "mae": float(np.mean(np.abs(residuals))),
        "r2": float(np.nanmean(r2)),
        "mean_residual": [float(v) for v in residuals.mean(0)],
        "worst_examples": [
            {
                "index": int(idx[i]),
                "target": [float(v) for v in targets[i]],
                "predicted": [float(v) for v in predictions[i]],
                "absolute_error": float(abs_error[i]),
            }
            for i in worst
        ],
        # The residual plot's points (first output): drawn from summary.json alone.
        "residual_points": {
            "target": [float(v) for v in targets[drawn, 0]],
            "residual": [float(v) for v in residuals[drawn, 0]],
        },
    }


def multilabel_split(y: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
    """One split's multi-label analysis: each label's error, F1 and positives; worst first."""
    predicted = outputs > 0
    truth = y > 0.5
    tp = np.sum(predicted & truth, 0).astype(np.float64)
    fp = np.sum(predicted & ~truth, 0).astype(np.float64)
    fn = np.sum(~predicted & truth, 0).astype(np.float64)
    denominator = 2 * tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 1.0)
    label_errors = (fp + fn) / max(len(y), 1)
    return {
        "examples": int(len(y)),
        "error": float(np.mean(label_errors)),
        "macro_f1": tasks.macro_f1(tp, fp, fn),
        "label_errors": [float(v) for v in label_errors],
        "label_f1": [float(v) for v in f1],
        "label_positives": [int(v) for v in truth.sum(0)],
        "worst_labels": [int(i) for i in np.argsort(-label_errors, kind="stable")],
        "exact_match": float(np.mean(np.all(predicted == truth, -1))),
    }


# ----------------------------------------------------------------------------- report


def report_blocks(analysis: dict) -> list:
    """The error-analysis section as blocks (error_analysis.blocks_markdown renders them)."""
    if analysis["task"] == tasks.REGRESSION:
        return _regression_blocks(analysis)
    return _multilabel_blocks(analysis)


def _regression_blocks(analysis: dict) -> list:
    splits = analysis["splits"]
    rows = [
        [
            name,
            f"{s['examples']:,}",
            f"{s['rmse']:.4g}",
            f"{s['mae']:.4g}",
            f"{s['r2']:.3f}",
            ", ".join(f"{v:+.3g}" for v in s["mean_residual"]),
        ]
        for name, s in splits.items()
    ]
    blocks = [
        (
            "text",
            "How far the predictions are from the targets, in the targets' units, on data the "
            "model was trained on (train) and on data it has not seen (val). A mean residual far "
            "from 0 is a bias the model keeps; residuals that grow with the target (see the "
            "plot) are targets the model compresses toward the mean.",
        ),
        ("table", ["split", "examples", "RMSE", "MAE", "R²", "mean residual"], rows),
    ]
    width = min(error_analysis.TABLE_FEATURES, analysis.get("num_features", 0))
    headers = ["split", "example", "target", "predicted", "absolute error"]
    headers += [f"x{j}" for j in range(width)] if width else []
    worst_rows = []
    for name, s in splits.items():
        for w in s["worst_examples"]:
            worst_rows.append(
                [
                    name,
                    w["index"],
                    ", ".join(f"{v:.4g}" for v in w["target"]),
                    ", ".join(f"{v:.4g}" for v in w["predicted"]),
                    f"{w['absolute_error']:.4g}",
                ]
                + [f"{v:.3g}" for v in w.get("inputs", [])[:width]]
            )
    blocks.append(("text", "The worst examples by absolute error:"))
    blocks.append(("table", headers, worst_rows))
    return blocks


def _multilabel_blocks(analysis: dict) -> list:
    splits, names = analysis["splits"], analysis["label_names"]
    lead = splits.get("val") or splits.get("train")
    headers = ["label"]
    for name in splits:
        headers += [f"{name} positives", f"{name} error", f"{name} F1"]
    rows = []
    for i in lead["worst_labels"]:
        row = [names[i]]
        for s in splits.values():
            row += [f"{s['label_positives'][i]:,}", f"{s['label_errors'][i]:.2%}"]
            row.append(f"{s['label_f1'][i]:.3f}")
        rows.append(row)
    overall = ["all (mean; macro F1)"]
    for s in splits.values():
        overall += [f"{s['examples']:,} examples", f"**{s['error']:.2%}**", f"{s['macro_f1']:.3f}"]
    return [
        (
            "text",
            "Which labels the model gets wrong, worst first (by the val error), on train and "
            "val: a label wrong on both is one the model cannot fit; wrong only on val, one it "
            "does not generalize. Exact match (every label right): "
            + ", ".join(f"{name} {s['exact_match']:.1%}" for name, s in splits.items())
            + ".",
        ),
        ("table", headers, rows + [overall]),
    ]


# ----------------------------------------------------------------------------- plots


def plot_residuals(analysis: dict, title: str = ""):
    """Residual (prediction − target) against the target, train | val, first output."""
    from workflow.reporting.plots import plt

    splits = list(analysis["splits"].items())
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 4.0), squeeze=False)
    for ax, (name, split) in zip(axes[0], splits, strict=True):
        points = split["residual_points"]
        ax.scatter(points["target"], points["residual"], s=6, alpha=0.5)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("target")
        ax.set_ylabel("residual (prediction − target)")
        ax.set_title(f"{name}: RMSE {split['rmse']:.4g}", fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(f"residuals against targets: {title}")
    return fig


def plot_label_errors(analysis: dict, title: str = ""):
    """Each label's error rate, train beside val."""
    from workflow.reporting.plots import plt

    names = analysis["label_names"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 3.8))
    width = 0.8 / max(len(analysis["splits"]), 1)
    for k, (name, split) in enumerate(analysis["splits"].items()):
        positions = np.arange(len(names)) + k * width
        ax.bar(positions, split["label_errors"], width=width, label=name)
    ax.set_xticks(np.arange(len(names)) + width * (len(analysis["splits"]) - 1) / 2, names)
    ax.set_ylabel("error rate")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    ax.set_title(f"error per label: {title}")
    return fig
