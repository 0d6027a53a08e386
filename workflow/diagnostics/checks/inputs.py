"""Inputs far from zero mean and unit scale: `inputs_not_normalized`."""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow import data
from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding

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

_SUGGEST_NORMALIZE = [
    "set --config.dataset.normalize=True (per-channel mean/std from the training split)",
    "if the loader scales the data itself, check every split is scaled the same way "
    "(e.g. uint8 images divided by 255)",
    "check normalization is not applied twice or along the wrong axis",
]


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
        x = data.bounded(dataset.split(split)[0])  # a lazy training split: a sample
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


# Data first: unnormalized inputs or bad labels explain most model-side symptoms.
CHECKS = (Check("inputs", order=10, run=lambda setup, batch: check_inputs(setup.dataset)),)
