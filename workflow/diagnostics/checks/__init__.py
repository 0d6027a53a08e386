"""Pre-training sanity checks: the 'implement & debug' bugs that are visible before training.

Each check returns a list of `Finding`s (empty = passed) with the numbers in `evidence` and the
workflow's ranked causes and fixes in `suggestions`. The checks run on one batch at
initialization, so they are cheap enough to run before every training run. Model passes go
through pure jitted functions of the split state, so no check mutates `state` (merging eagerly
would share NNX Variables with `state.model_state` and advance its RNG counters).

Each module declares its checks (`CHECKS`, see plugins.py) and `run_checks` finds them by
module name, so a new check touches only its module and the findings registry. Thresholds are
named module constants; the comment above each says where it comes from. The
"built-in models" below are mlp/lenet/lstm/tcn on their kind of synthetic data at init, which
tests/test_checks.py keeps quiet.
"""

from __future__ import annotations

from typing import Any

from workflow.diagnostics.checks import plugins
from workflow.diagnostics.checks.dtypes import check_dtypes
from workflow.diagnostics.checks.gradients import check_gradients
from workflow.diagnostics.checks.inputs import check_inputs
from workflow.diagnostics.checks.labels import (
    check_labels,
    held_out_error_findings,
    label_summary,
    labels_signal_finding,
    test_split_finding,
    train_labels_noise_finding,
    training_label_sample,
)
from workflow.diagnostics.checks.modes import check_batch_dependence, check_train_eval_mode
from workflow.diagnostics.checks.numerics import locate_nonfinite
from workflow.diagnostics.checks.outputs import check_output_and_loss
from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.checks.probes import Batch, sample_batch
from workflow.diagnostics.findings import Finding, rank_findings

__all__ = [
    "check_batch_dependence",
    "check_dtypes",
    "check_gradients",
    "check_inputs",
    "check_labels",
    "check_output_and_loss",
    "check_train_eval_mode",
    "held_out_error_findings",
    "test_split_finding",
    "train_labels_noise_finding",
    "training_label_sample",
    "declared_checks",
    "label_summary",
    "labels_signal_finding",
    "locate_nonfinite",
    "run_checks",
    "sample_batch",
]


def run_checks(setup: Any, batch: Batch | None = None) -> list[Finding]:
    """Every declared check on `setup` and one batch, most likely root cause first."""
    batch = batch if batch is not None else sample_batch(setup.dataset)
    findings: list[Finding] = []
    task = setup.task.kind.name
    for check in declared_checks():
        if check.applies_to(task) and not check.blocked_by(findings):
            findings += check.run(setup, batch)
    return rank_findings(findings)


def declared_checks() -> list[Check]:
    """The checks this package's modules declare (their CHECKS), in the order they run."""
    return plugins.declared_checks(__path__, __name__)
