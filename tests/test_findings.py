"""The findings vocabulary: one declaration per id, one ranking, the docs page generated from it."""

import dataclasses
import pathlib
import re

import pytest

from workflow.diagnostics import findings
from workflow.diagnostics.findings import Finding, FindingKind, rank_findings

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The debug stage's reading order before the registry, with the ids added since (issue 16's zoo
# kinds): the registry must keep it exactly.
DEBUG_ROOT_CAUSE_ORDER = (
    "shape_mismatch",
    "labels_out_of_range",
    "index_out_of_range",
    "softmax_before_loss",
    "dtype_mismatch",
    "batch_dependence",
    "train_eval_mode",
    "output_ignores_input",
    "prng_key_reused",
    "prng_key_shared",
    "dropout_too_high",
    "batchnorm_small_batch",
    "nan_or_inf",
    "split_from_sorted_data",
    "labels_corrupted",
    "train_labels_noisy",
    "test_leaked_into_train",
    "duplicate_examples",
    "extreme_values",
    "target_in_inputs",
    "split_normalized_separately",
    "test_split_differs",
    "model_is_linear",
    "inputs_not_normalized",
    "no_gradient",
    "dead_units",
    "exploding_gradients",
    "gradients_never_reset",
    "lr_schedule_zero",
    "vanishing_gradients",
    "model_too_small",
    "lr_too_high",
    "lr_too_low",
    "initial_loss_off",
    "loss_exploding",
    "loss_increasing",
    "loss_oscillating",
    "loss_plateau",
    "cannot_overfit_batch",
)
# Which findings explained which error-severity symptom before the registry.
EXPLAINED_BY = {
    "cannot_overfit_batch": DEBUG_ROOT_CAUSE_ORDER[:-1],
    "loss_exploding": (
        "extreme_values",
        "lr_too_high",
        "exploding_gradients",
        "inputs_not_normalized",
        "initial_loss_off",
        "gradients_never_reset",
    ),
    "loss_increasing": ("lr_too_high",),
    "loss_oscillating": (
        "extreme_values",
        "lr_too_high",
        "labels_corrupted",
        "batchnorm_small_batch",
        "gradients_never_reset",
    ),
    "loss_plateau": (
        "output_ignores_input",
        "lr_too_low",
        "no_gradient",
        "dead_units",
        "vanishing_gradients",
        "softmax_before_loss",
        "labels_corrupted",
        "dropout_too_high",
        "model_too_small",
        "lr_schedule_zero",
    ),
    "lr_too_low": ("lr_schedule_zero",),
    # Added with issue 16's zoo kinds: the cause named before the symptom it produces.
    "nan_or_inf": ("index_out_of_range",),
    "initial_loss_off": ("dropout_too_high",),
    "labels_corrupted": ("split_from_sorted_data",),
    "test_split_differs": ("split_from_sorted_data", "split_normalized_separately"),
    # A model that never reads its input leaves its ReLUs as dead as the input it feeds them.
    "dead_units": ("output_ignores_input",),
}


def finding(finding_id: str, severity: str) -> Finding:
    return Finding(finding_id, severity, f"{finding_id} found")


def order(ranked: list[Finding]) -> list[tuple[str, str]]:
    return [(f.id, f.severity) for f in ranked]


# ----------------------------------------------------------------------------- the registry


def test_an_undeclared_id_is_refused_naming_the_closest():
    with pytest.raises(
        ValueError, match="'loss_plateu' is not declared: did you mean loss_plateau"
    ):
        Finding("loss_plateu", "warning", "a typo")
    with pytest.raises(ValueError, match="severity 'fatal'"):
        Finding("loss_plateau", "fatal", "")


def test_the_registry_keeps_the_debug_root_cause_order():
    declared = findings.declared_ids()
    assert [i for i in declared if i in DEBUG_ROOT_CAUSE_ORDER] == list(DEBUG_ROOT_CAUSE_ORDER)


def test_explains_is_the_old_explained_by_inverted():
    inverted = {}
    for k in findings.KINDS:
        for symptom in k.explains:
            inverted.setdefault(symptom, set()).add(k.id)
    assert inverted == {symptom: set(causes) for symptom, causes in EXPLAINED_BY.items()}


def test_groups_hold_the_verdicts_and_the_error_analysis_ids():
    assert findings.declared_ids(findings.VERDICT) == (
        "underfit",
        "overfit",
        "val_overfit",
        "goal_met",
    )
    assert findings.declared_ids(findings.ERROR_ANALYSIS) == (
        "label_noise_suspected",
        "class_too_few_examples",
        "class_error_concentrated",
        "input_errors_concentrated",
    )


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda kinds: (*kinds, kinds[0]), "declared twice"),
        (  # a cause declared below the symptom it explains
            lambda kinds: (
                *kinds,
                FindingKind("late", "warning", "", "", explains=("nan_or_inf",)),
            ),
            "late explains 'nan_or_inf', which is not declared below it",
        ),
        (
            lambda kinds: (*kinds, FindingKind("row", "warning", "", "", checklist="no such row")),
            "checklist row 'no such row'",
        ),
        (lambda kinds: (*kinds, FindingKind("odd", "fatal", "", "")), "severity 'fatal'"),
    ],
)
def test_an_inconsistent_registry_is_refused(change, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        findings.check_registry(change(findings.KINDS))


def test_the_checklist_rows_come_from_the_registry():
    rows = findings.checklist()
    assert [row for row, _ in rows] == list(findings.CHECKLIST_ROWS)
    listed = [i for _, ids in rows for i in ids]
    assert sorted(listed) == sorted(k.id for k in findings.KINDS if k.checklist)
    assert dict(rows)["gradients reach every parameter"] == (
        "no_gradient",
        "dead_units",
        "exploding_gradients",
        "vanishing_gradients",
    )
    # Every debug finding has a row; the evaluate/run/tune ones have none.
    assert set(listed) == set(DEBUG_ROOT_CAUSE_ORDER)


# ----------------------------------------------------------------------------- the ranking


def test_a_cause_is_promoted_and_read_before_the_symptom_it_explains():
    ranked = rank_findings(
        [
            finding("loss_plateau", "error"),
            finding("inputs_not_normalized", "warning"),  # explains no plateau: stays a warning
            finding("lr_too_low", "warning"),
            finding("softmax_before_loss", "info"),  # an info is never promoted
        ]
    )
    assert order(ranked) == [
        ("lr_too_low", "error"),
        ("loss_plateau", "error"),
        ("inputs_not_normalized", "warning"),
        ("softmax_before_loss", "info"),
    ]
    # Without the error-severity symptom nothing is promoted: the rank orders the warnings.
    assert order(
        rank_findings([finding("loss_plateau", "warning"), finding("lr_too_low", "warning")])
    ) == [
        ("lr_too_low", "warning"),
        ("loss_plateau", "warning"),
    ]


def test_promotion_looks_at_the_symptoms_as_found_not_as_promoted():
    """A plateau warning promoted by the batch it explains does not promote its own causes."""
    ranked = rank_findings(
        [
            finding("cannot_overfit_batch", "error"),
            finding("loss_plateau", "warning"),
            finding("lr_too_low", "info"),
        ]
    )
    assert order(ranked) == [
        ("loss_plateau", "error"),
        ("cannot_overfit_batch", "error"),
        ("lr_too_low", "info"),
    ]


def test_the_first_of_an_id_is_kept_unless_it_repeats():
    first = Finding("nan_or_inf", "error", "located at the op")
    ranked = rank_findings(
        [
            Finding("search_range_edge", "warning", "lr at the edge"),
            first,
            Finding("nan_or_inf", "error", "the loss became nan"),
            Finding("search_range_edge", "warning", "L2 at the edge"),
            Finding("nan_or_inf", "warning", "a weaker duplicate ranked later"),
        ]
    )
    assert [f.message for f in ranked] == ["located at the op", "lr at the edge", "L2 at the edge"]
    assert ranked[0] is first


def test_an_evaluation_reads_verdicts_then_error_analysis_then_the_training_run():
    emitted = [
        finding("underfit", "warning"),
        finding("overfit", "warning"),
        finding("label_noise_suspected", "warning"),
        finding("class_too_few_examples", "warning"),
        finding("class_error_concentrated", "info"),
        finding("input_errors_concentrated", "info"),
        finding("loss_plateau", "warning"),  # the training run's, then what was carried over
        finding("corrupt_checkpoint", "warning"),
        finding("out_of_memory", "warning"),
    ]
    by_severity = sorted(emitted, key=lambda f: findings.SEVERITIES.index(f.severity))
    assert rank_findings(emitted) == by_severity
    assert rank_findings(emitted[::-1]) == by_severity


def test_ranking_is_idempotent_and_leaves_its_input_alone():
    emitted = [finding("loss_exploding", "error"), finding("lr_too_high", "warning")]
    ranked = rank_findings(emitted)
    assert rank_findings(ranked) == ranked
    assert emitted[1].severity == "warning"  # promoted in a copy
    assert dataclasses.replace(ranked[0], severity="warning") == emitted[1]


# ----------------------------------------------------------------------------- docs and code


def test_the_docs_page_is_generated_from_the_registry():
    page = (ROOT / "docs" / "findings.md").read_text()
    assert page == findings.markdown(), (
        "docs/findings.md is stale: python -m workflow.diagnostics.findings --markdown "
        "> docs/findings.md"
    )
    for k in findings.KINDS:
        assert f"| `{k.id}` | {k.severity} | {k.meaning} | {k.raised_by} |" in page


def test_the_generator_prints_the_page_and_refuses_other_arguments(capsys):
    assert findings.main(["findings", "--markdown"]) == 0
    assert capsys.readouterr().out == findings.markdown()
    assert findings.main(["findings"]) == 2
    assert "--markdown" in capsys.readouterr().err


# The ways code names a finding id: raising one (a Finding, keyword id=, a bias-variance Gap whose
# verdict is the id) and reading one (comparing f.id / f["id"] with a literal or a tuple of them).
EMITTED = [
    re.compile(r'\bFinding\(\s*"([^"]+)"'),
    re.compile(r'\bGap\(\s*"([^"]+)"'),
    re.compile(r'\bid\s*=\s*"([^"]+)"'),
    re.compile(r'(?:\.id|\[\s*"id"\s*\]|\.verdict)\s*[!=]=\s*"([^"]+)"'),
]
COMPARED_WITH_TUPLE = re.compile(r'(?:\.id|\[\s*"id"\s*\])\s+(?:not\s+)?in\s+\(([^)]*)\)')


def ids_in_code() -> dict[str, set[str]]:
    """{finding id: the files of workflow/ that raise or read it}, the registry left out."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "workflow").rglob("*.py")):
        if path.name == "findings.py" and path.parent.name == "diagnostics":
            continue
        text, name = path.read_text(), str(path.relative_to(ROOT))
        literals = [m.group(1) for pattern in EMITTED for m in pattern.finditer(text)]
        for m in COMPARED_WITH_TUPLE.finditer(text):
            literals += re.findall(r'"([^"]+)"', m.group(1))
        for literal in literals:
            found.setdefault(literal, set()).add(name)
    return found


def test_every_id_the_code_raises_or_reads_is_declared_and_every_declared_id_is_used():
    in_code = ids_in_code()
    undeclared = {i: files for i, files in in_code.items() if i not in findings.declared_ids()}
    assert not undeclared, f"declare these in workflow/diagnostics/findings.py: {undeclared}"
    unused = set(findings.declared_ids()) - set(in_code)
    assert not unused, f"declared but raised nowhere in workflow/: {sorted(unused)}"
    # The scan sees the emitters the brief names, not only the checks.
    assert "workflow/run/__init__.py" in in_code["workflow_step"]
    assert "workflow/experiment.py" in in_code["corrupt_checkpoint"]
    assert "workflow/diagnostics/bias_variance.py" in in_code["underfit"]
