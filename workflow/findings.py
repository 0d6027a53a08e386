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
