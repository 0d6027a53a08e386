"""Verified fixes: the top finding's first config-level suggestion, applied and checked.

With `debug.fix` on, the debug stage takes its top finding (a warning or an error). When its
kind is declared fixable by config (`FindingKind.config_fix` in findings.py), its suggestions
are read in order and the first one that names `--config.key=value` flags changing the config
is the fix: the stage applies those values to a copy of the config, builds the setup again and
reruns every debug check on it. A `config_fix` finding then says what was applied and what the
rerun measured: whether the finding is gone, whether the overfit run passed and whether the
rerun stands without any warning or error (the setup is then repaired, and the flags are what
to rerun with). A top finding with no config-level fix (a bug in the model, the loss or the
data) gets a `config_fix` finding that says so and names its first suggestion.
"""

import ast
import dataclasses
import re
from typing import Any

import ml_collections

from workflow.diagnostics.findings import Finding, kind

# `--config.key=value` in a suggestion: a dotted key and a value up to a space or punctuation.
FLAG = re.compile(r"--config\.([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)=([^\s,;()`]+)")
SERIOUS = ("error", "warning")


@dataclasses.dataclass(frozen=True)
class ConfigFix:
    """The config values one suggestion of a finding names."""

    finding_id: str
    suggestion: str
    overrides: dict[str, Any]  # flattened config key -> new value

    def flags(self) -> str:
        """The command-line flags that apply it, e.g. '--config.optimizer.learning_rate=0.1'."""
        return " ".join(f"--config.{key}={value}" for key, value in self.overrides.items())


def _lookup(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key in `config`."""
    node = config
    for part in key.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _parse(text: str, current: Any) -> Any:
    """A flag's value as Python reads it, in the type of the value it replaces."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, bool) or current is None:
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def suggestion_overrides(suggestion: str, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config values `suggestion`'s flags change ({} when none, or none changes anything)."""
    overrides = {}
    for key, text in FLAG.findall(suggestion):
        found, current = _lookup(config, key)
        if not found:
            continue
        value = _parse(text, current)
        if value != current:
            overrides[key] = value
    return overrides


def top_finding(findings: list[Finding]) -> Finding | None:
    """The finding a fix is for: the first (ranked) one, when it is a warning or an error."""
    return findings[0] if findings and findings[0].severity in SERIOUS else None


def config_fix(finding: Finding, config: ml_collections.ConfigDict) -> ConfigFix | None:
    """The first config-level suggestion of `finding` that changes `config`, or None (its kind
    is not fixable by config, or none of its flags changes anything)."""
    if not kind(finding.id).config_fix:
        return None
    for suggestion in finding.suggestions:
        overrides = suggestion_overrides(suggestion, config)
        if overrides:
            return ConfigFix(finding.id, suggestion, overrides)
    return None


def fixed_config(config: ml_collections.ConfigDict, fix: ConfigFix) -> ml_collections.ConfigDict:
    """A copy of `config` with the fix's values."""
    fixed = config.copy_and_resolve_references()
    fixed.update_from_flattened_dict(fix.overrides)
    return fixed


@dataclasses.dataclass(frozen=True)
class Rerun:
    """What the debug checks found on the fixed config."""

    findings: list[Finding]
    overfit_passed: bool
    short_run_steps: int


def verified_finding(fix: ConfigFix, rerun: Rerun) -> Finding:
    """`config_fix`: the fix applied and the rerun's verdict (info when repaired, else a
    warning)."""
    serious = [f for f in rerun.findings if f.severity in SERIOUS]
    gone = all(f.id != fix.finding_id for f in serious)
    repaired = gone and rerun.overfit_passed and not serious
    outcome = [
        f"`{fix.finding_id}` is {'gone' if gone else 'still there'}",
        f"the overfit run {'passes' if rerun.overfit_passed else 'still fails'}",
        "the rerun stands without a warning or error"
        if not serious
        else "the rerun still has " + ", ".join(f"{f.severity} `{f.id}`" for f in serious),
    ]
    verdict = "repaired" if repaired else "not repaired"
    return Finding(
        id="config_fix",
        severity="info" if repaired else "warning",
        message=(
            f"{verdict} by config: applied {fix.flags()} (`{fix.finding_id}`'s first "
            f"config-level suggestion) and reran the debug checks: {'; '.join(outcome)}"
        ),
        evidence={
            "finding": fix.finding_id,
            "overrides": dict(fix.overrides),
            "finding_gone": gone,
            "overfit_passed": rerun.overfit_passed,
            "rerun_clean": not serious,
            "repaired": repaired,
            "short_run_steps": rerun.short_run_steps,
            "rerun_findings": [[f.id, f.severity] for f in rerun.findings],
        },
        suggestions=(
            [f"rerun with {fix.flags()}"]
            if repaired
            else [
                f"the fix alone is not enough: start from the rerun's top finding ("
                f"{serious[0].id if serious else 'none'})"
            ]
        ),
    )


def unfixable_finding(finding: Finding) -> Finding:
    """`config_fix` (info): the top finding has no config-level fix; the code must change."""
    first = finding.suggestions[0] if finding.suggestions else "see the finding's message"
    return Finding(
        id="config_fix",
        severity="info",
        message=(
            f"`{finding.id}` cannot be fixed by config: none of its suggestions is a config "
            f"change; it is fixed in the code (the model, the loss or the data): {first}"
        ),
        evidence={"finding": finding.id, "overrides": {}, "repaired": False, "fixable": False},
        suggestions=[first],
    )
