"""Layer settings that keep a correct model from learning: dropout that drops most units, and
BatchNorm over batches too small for its statistics (`dropout_too_high`, `batchnorm_small_batch`).

Both read the model's nnx.Dropout and nnx.BatchNorm layers (checks/modes.py's `mode_layers`)
and the configured batch size; nothing runs.
"""

from __future__ import annotations

from typing import Any

from workflow.diagnostics.checks.modes import mode_layers
from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding

# Dropout above 0.5 keeps fewer than half the units: the rates in use stay at or below it
# (0.5 is the original paper's hidden-layer rate, 0.1-0.3 the common ones), and at 0.9 the
# train-mode outputs are 10x rescaled survivors of a tenth of the units.
MAX_DROPOUT_RATE = 0.5
# BatchNorm's error climbs steeply below 8 examples per batch (Wu & He, "Group Normalization",
# 2018: ResNet-50 on ImageNet, 23.6% at 32 per batch, 34.7% at 2): the batch mean and variance
# of a few examples are noise, and train mode (batch statistics) drifts away from eval mode
# (running averages). At 2 examples every normalized feature is +-1.
MIN_BATCHNORM_BATCH = 8


def check_layers(setup: Any) -> list[Finding]:
    """`dropout_too_high` and `batchnorm_small_batch` from the model's layers and batch size."""
    layers = mode_layers(setup.task, setup.state)
    findings = []
    high = [layer for layer in layers if layer.get("rate", 0.0) > MAX_DROPOUT_RATE]
    if high:
        findings.append(_dropout_finding(high))
    norms = [layer["layer"] for layer in layers if layer["type"] == "BatchNorm"]
    batch_size = int(setup.config.batch_size)
    if norms and batch_size < MIN_BATCHNORM_BATCH:
        findings.append(_batchnorm_finding(norms, batch_size))
    return findings


def _dropout_finding(high: list[dict]) -> Finding:
    rate = max(layer["rate"] for layer in high)
    return Finding(
        id="dropout_too_high",
        severity="warning",
        message=(
            f"dropout rate {rate:g} keeps only {1 - rate:.0%} of the units in training "
            f"({', '.join(layer['layer'] for layer in high)}): the model can hardly fit even "
            "one batch, and its train-mode outputs are rescaled by "
            f"{1 / max(1 - rate, 1e-9):.3g}"
        ),
        evidence={"layers": high, "max_rate": MAX_DROPOUT_RATE},
        suggestions=[
            "lower the dropout rate to 0.1-0.5 (nnx.Dropout(rate) is the share dropped, not "
            "kept: a keep probability of 0.1 is rate=0.9)",
            "add regularization only once the model overfits (the workflow's improve stage)",
        ],
    )


def _batchnorm_finding(norms: list[str], batch_size: int) -> Finding:
    return Finding(
        id="batchnorm_small_batch",
        severity="warning",
        message=(
            f"BatchNorm ({', '.join(norms)}) normalizes over batches of {batch_size}: the "
            f"statistics of fewer than {MIN_BATCHNORM_BATCH} examples are noise, and the "
            "running averages used in eval drift away from what training saw"
        ),
        evidence={
            "batchnorm_layers": norms,
            "batch_size": batch_size,
            "min_batch": MIN_BATCHNORM_BATCH,
        },
        suggestions=[
            f"raise the batch size to {MIN_BATCHNORM_BATCH} or more "
            f"(--config.batch_size={4 * MIN_BATCHNORM_BATCH})",
            "where memory limits the batch, use nnx.LayerNorm or nnx.GroupNorm, which do not "
            "depend on the batch",
        ],
    )


CHECKS = (Check("layers", order=72, run=lambda setup, batch: check_layers(setup)),)
