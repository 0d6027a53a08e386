"""Findings: what a stage found, with evidence and the workflow's ranked suggestions."""

import dataclasses
from typing import Any

SEVERITIES = ("error", "warning", "info")


@dataclasses.dataclass
class Finding:
    """One diagnosis; `id` is from the stable vocabulary documented in README."""

    id: str
    severity: str
    message: str
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    suggestions: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not in {SEVERITIES}")

    def to_json(self) -> dict[str, Any]:
        """The summary.json form."""
        return dataclasses.asdict(self)


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Most severe first; the order within a severity (most likely cause first) is kept."""
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def has_error(findings: list[Finding]) -> bool:
    """Whether any finding blocks the workflow (exit code 1)."""
    return any(f.severity == "error" for f in findings)


# Within one severity, the most specific root cause first and the symptoms it explains last:
# a softmax before the loss explains an initial loss far off, which explains a plateau, which
# explains a batch that cannot be overfit.
ROOT_CAUSE_ORDER = (
    "shape_mismatch",
    "labels_out_of_range",
    "softmax_before_loss",
    "dtype_mismatch",
    "batch_dependence",
    "train_eval_mode",
    "nan_or_inf",
    "labels_corrupted",
    # Unscaled inputs are what make the gradients explode or vanish downstream.
    "inputs_not_normalized",
    "no_gradient",
    "dead_units",
    "exploding_gradients",
    "vanishing_gradients",
    "lr_too_high",
    "lr_too_low",
    "initial_loss_off",
    "loss_exploding",
    "loss_increasing",
    "loss_oscillating",
    "loss_plateau",
    "cannot_overfit_batch",
)


# Error-severity symptoms and the findings that explain them. A cause found beside its symptom
# is promoted to the symptom's severity, so that ranking puts the cause, not the symptom, first
# (a plateau warning explains the batch that cannot be overfit; lr_too_high explains a blow-up).
EXPLAINED_BY = {
    "cannot_overfit_batch": ROOT_CAUSE_ORDER[: ROOT_CAUSE_ORDER.index("cannot_overfit_batch")],
    "loss_exploding": (
        "lr_too_high",
        "exploding_gradients",
        "inputs_not_normalized",
        "initial_loss_off",
    ),
    "loss_increasing": ("lr_too_high",),
    "loss_oscillating": ("lr_too_high", "labels_corrupted"),
    "loss_plateau": (
        "lr_too_low",
        "no_gradient",
        "dead_units",
        "vanishing_gradients",
        "softmax_before_loss",
        "labels_corrupted",
    ),
}


def promote_causes(findings: list[Finding]) -> list[Finding]:
    """Raise each warning that explains an error-severity symptom to an error."""
    symptoms = {f.id for f in findings if f.severity == "error" and f.id in EXPLAINED_BY}
    causes = {c for s in symptoms for c in EXPLAINED_BY[s]}
    return [
        dataclasses.replace(f, severity="error")
        if f.severity == "warning" and f.id in causes
        else f
        for f in findings
    ]


def rank_findings(findings: list[Finding]) -> list[Finding]:
    """Causes promoted to their symptoms' severity, then by severity, root cause first."""
    findings = promote_causes(findings)
    severity = {"error": 0, "warning": 1, "info": 2}
    order = {fid: i for i, fid in enumerate(ROOT_CAUSE_ORDER)}
    ranked = sorted(findings, key=lambda f: (severity[f.severity], order.get(f.id, len(order))))
    seen, unique = set(), []
    for f in ranked:
        if f.id not in seen:
            seen.add(f.id)
            unique.append(f)
    return unique
