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

from typing import Any

from workflow.diagnostics.checks.dtypes import check_dtypes
from workflow.diagnostics.checks.gradients import check_gradients
from workflow.diagnostics.checks.inputs import check_inputs
from workflow.diagnostics.checks.labels import check_labels, label_summary, labels_signal_finding
from workflow.diagnostics.checks.modes import check_batch_dependence, check_train_eval_mode
from workflow.diagnostics.checks.numerics import locate_nonfinite
from workflow.diagnostics.checks.outputs import check_output_and_loss
from workflow.diagnostics.checks.probes import Batch, sample_batch
from workflow.diagnostics.findings import Finding, sort_findings

__all__ = [
    "check_batch_dependence",
    "check_dtypes",
    "check_gradients",
    "check_inputs",
    "check_labels",
    "check_output_and_loss",
    "check_train_eval_mode",
    "label_summary",
    "labels_signal_finding",
    "locate_nonfinite",
    "run_checks",
    "sample_batch",
]


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
