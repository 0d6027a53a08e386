"""How a check module declares its checks, which `run_checks` finds by module name.

Any module of this package may define `CHECKS`, a tuple of `Check`s. `run_checks` imports every
module of the package and runs the declared checks by increasing `order`, each unless a finding
of the checks before it closed a gate it `needs`. A new check is a module (or one more `Check` in
one) and its finding ids in workflow/diagnostics/findings.py: nothing else names it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any

from workflow.diagnostics.findings import Finding

# What a check can need, each closed by a finding of an earlier check.
LABELS_IN_RANGE = "labels_in_range"  # else the loss would index outside the logits
OUTPUTS_SHAPED = "outputs_shaped"  # outputs are (batch, C): else no model check means anything
LOSS_RUNS = "loss_runs"  # the loss runs on them: else there is no gradient or NaN to look at


def _shape_error(f: Finding, *keys: str) -> bool:
    """A blocking shape_mismatch: outputs not (batch, C) ("expected"), or the loss raised."""
    return f.id == "shape_mismatch" and f.severity == "error" and any(k in f.evidence for k in keys)


GATES: dict[str, Callable[[Finding], bool]] = {
    LABELS_IN_RANGE: lambda f: f.id == "labels_out_of_range",
    OUTPUTS_SHAPED: lambda f: _shape_error(f, "expected"),
    LOSS_RUNS: lambda f: _shape_error(f, "expected", "error"),
}


@dataclasses.dataclass(frozen=True)
class Check:
    """One pre-training check: `run(setup, batch)` -> findings, with `setup` an
    experiment.Setup (its dataset, task and state) and `batch` one batch of it."""

    name: str
    order: int  # run_checks runs checks by increasing order: data first, then the model
    run: Callable[[Any, dict], list[Finding]]
    needs: tuple[str, ...] = ()  # GATES that must be open
    # The tasks (config.task, engine/tasks.py) whose terms it checks in; others skip it.
    tasks: tuple[str, ...] = ("classification", "regression", "multilabel")

    def __post_init__(self):
        unknown = [n for n in self.needs if n not in GATES]
        if unknown:
            raise ValueError(f"check {self.name!r} needs {unknown}; valid: {sorted(GATES)}")

    def applies_to(self, task: str) -> bool:
        """Whether the check means something for `task` (config.task)."""
        return task in self.tasks

    def blocked_by(self, findings: Iterable[Finding]) -> bool:
        """Whether a finding so far closed a gate this check needs."""
        return any(GATES[gate](f) for gate in self.needs for f in findings)


def declared_checks(package_path: Iterable[str], package_name: str) -> list[Check]:
    """The `CHECKS` of every module of a package, in run order (order, then name)."""
    found: list[Check] = []
    for module in pkgutil.iter_modules(package_path, package_name + "."):
        found += getattr(importlib.import_module(module.name), "CHECKS", ())
    names = [c.name for c in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"check names declared twice in {package_name}: {twice}")
    return sorted(found, key=lambda c: (c.order, c.name))
