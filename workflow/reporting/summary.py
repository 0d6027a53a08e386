"""summary.json: one stage's result, as the next stage, workflow.run and a person read it.

Every field is declared once, here. The common fields come first; each stage's own sections
are optional (None: absent from the file). The sections tune, improve and run write together
(`GROUPS`) appear all at once, None written as null, as those stages have always written them.
A section's contents are JSON data built where the stage computes them; `findings` are
`Finding` objects. A stage fills a `Summary`, `RunDir.write_summary` writes it, and
`Summary.from_json` reads one back (workflow.run keeps its steps' summaries in workflow.json).
"""

import dataclasses
from typing import Any

from workflow.diagnostics.findings import Finding


def device_kind() -> str:
    """The kind of the first device: what the stage ran on."""
    import jax

    return jax.devices()[0].device_kind


@dataclasses.dataclass(kw_only=True, slots=True)
class Summary:
    """One stage's summary.json. Slots: assigning a field that is not declared fails."""

    # Every stage's.
    stage: str  # the stage that wrote it: start_simple, debug, evaluate, tune, improve, run
    status: str  # ok, failed (an error-severity finding stands) or diverged (NaN/inf in training)
    config: dict[str, Any]  # the resolved config as JSON data (what config.json holds)
    metrics: dict[str, Any]  # the stage's numbers by name: accuracies, losses, steps, seconds
    findings: list[Finding]  # what the stage found, most severe and most likely cause first
    next: list[str] = dataclasses.field(default_factory=list)  # the next stages' command lines
    dataset: dict[str, Any] | None = None  # the data's splits, classes, shapes (Dataset.summary)
    device: str = dataclasses.field(default_factory=device_kind)  # the device kind it ran on
    model_summary: list[dict] | None = None  # the model's layers (reporting/model_summary.py)
    loops: dict[str, dict] | None = None  # each training loop's form, why, seconds per step
    # evaluate
    bias_variance: dict[str, Any] | None = None  # the decomposition's rows, line and tolerances
    train_size: dict[str, Any] | None = None  # error against training-set size (train_sizes)
    error_analysis: dict[str, Any] | None = None  # per-class errors, confusions, worst examples
    # tune (best_config: improve's too)
    best: dict[str, Any] | None = None  # the best trial's record (null: no trial finished)
    best_config: str | None = None  # best_config.py's path (null: none written)
    overrides: list[str] | None = None  # the best values as --config.* flags
    range_test: dict[str, Any] | None = None  # the learning-rate range test (null: disabled)
    improved_band: list[float] | None = None  # lowest, highest lr of the trials that improved
    rounds: list[dict] | None = None  # each round's ranges, length and trial count
    trials: list[dict] | None = None  # every trial's record, all rounds
    search_stop: dict[str, Any] | None = None  # the trial that met the goal, what was skipped
    # improve (with best_config, and the starting point's bias_variance)
    verdicts: list[str] | None = None  # the starting point's verdicts the remedies answer
    candidates: list[dict] | None = None  # each remedy's run: errors, size, time, why tried
    decision: dict[str, Any] | None = None  # {"chosen": remedy or null, "why", "notes"}
    # out of memory (workflow/diagnostics/memory.py)
    memory: dict[str, Any] | None = None  # {"attempts": batch sizes and results, "estimate"}
    # run
    stopped: str | None = None  # why the workflow stopped early (null: it ran to its end)
    final: dict[str, Any] | None = None  # the final model's step, config, workdir and model
    reproduce: list[str] | None = None  # the commands that train and evaluate it again
    steps: list[dict] | None = None  # each finished step: name, stage, workdir, config source

    def to_json(self) -> dict[str, Any]:
        """The summary.json form: the set fields (and the groups of set sections), findings as
        dicts; values as they are (RunDir.write_summary makes numpy values and NaN JSON-safe)."""
        grouped = {
            name for group in GROUPS if getattr(self, group[0]) is not None for name in group
        }
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name not in grouped:
                continue
            out[field.name] = [f.to_json() for f in value] if field.name == "findings" else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Summary":
        """A summary read back from its summary.json form; ValueError names a key not declared
        here or a missing one."""
        declared = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - declared)
        if unknown:
            raise ValueError(f"summary has undeclared keys {unknown}; declared: {sorted(declared)}")
        values = dict(data)
        if "findings" in values:
            values["findings"] = [Finding(**f) for f in values["findings"]]
        try:
            return cls(**values)
        except TypeError as e:  # a required field is missing
            raise ValueError(f"summary is incomplete: {e}") from None

    def has_finding(self, finding_id: str) -> bool:
        """Whether a finding with this id stands."""
        return any(f.id == finding_id for f in self.findings)


# Sections a stage writes as a group, null where None: present whenever the first is set.
GROUPS = (
    ("trials", "rounds", "range_test", "best", "best_config", "overrides", "improved_band"),
    ("candidates", "verdicts", "decision", "best_config", "bias_variance"),
    ("steps", "stopped", "final", "reproduce"),
)
