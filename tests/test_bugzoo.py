"""The bug zoo: each broken setup gets its expected finding on top; clean setups stay quiet.

The fast cases (small synthetic data) run by default with small debug budgets, a representative
subset: at least one case of every detector family. The rest are marked slow and run with the
stage's default budgets, as python -m benchmarks.bugzoo does: the real-config clean runs, the
user-model clean runs on images, the cases whose verdict needs the full budget (lr 10: at 200
steps the run is still called loss_exploding; x100 init: 400 steps cannot overfit the batch), the
known detector issues (strict xfail, so a fix shows up) and the slower variants of a family
already covered by default (tanh beside sigmoid heads, 10% beside 30% label noise, ...), to keep
the default run short; shuffled labels and the repair of lr 1e-8 run by default through the
benchmark's smoke test.
"""

import json

import pytest

from tests.bugzoo.cases import CASES, CATEGORIES, CATEGORY_OF, Case, with_budget
from workflow import debug, experiment
from workflow.diagnostics.findings import kind as finding_kind

OVERFIT_STEPS = 400
TRAIN_STEPS = 200
UNLIMITED_SECONDS = 1e9


# Fast cases whose family another default case already covers (softmax_output for the heads
# into a logits loss, tests/test_start_simple.py's diverging run for NaN, the other clean MLPs).
SLOW_IN_FAMILY = (
    "sigmoid_head_into_logits_loss",
    "multilabel_sigmoid_head",
    "log_of_zero",
    "clean_user_mlp",
    "norm_over_batch_axis",  # batch dependence: tests/test_checks.py fires and quiets it
    # Issue 16's further kinds: tests/test_zoo_checks.py fires and quiets each detector by
    # default; the whole debug stage on them runs with the slow tests.
    "normalized_per_split",
    "sorted_by_class_then_split",
    "dropout_0.9",
    "prng_key_reused_every_step",
    "prng_key_not_split_between_layers",
    "token_ids_past_embedding_table",
    "clean_normalized_with_train_statistics",
    "clean_hand_dropout_split_keys",
    "clean_token_bag_classifier",
    # Proven by default by their detectors' own tests: model_is_linear (tests/test_zoo_detectors.py)
    # and dropout with BatchNorm used right (tests/test_checks.py).
    "deep_linear_stack",
    "clean_dropout_batchnorm",
    # A user's optimizer and schedule: tests/test_optimizer_plugins.py fires and quiets both.
    "gradients_accumulated_never_reset",
    "warmup_schedule_ends_at_zero",
    "clean_user_optimizer_and_schedule",
)


def _param(case: Case):
    marks = [] if case.fast and case.name not in SLOW_IN_FAMILY else [pytest.mark.slow]
    if case.known_issue:
        marks.append(pytest.mark.xfail(reason=case.known_issue, strict=True))
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bugzoo_case(case: Case, tmp_path) -> None:
    """Broken: the expected id is the top finding. Clean: no warning or error."""
    config = case.build_config()
    if case.fast:
        config = with_budget(config, OVERFIT_STEPS, TRAIN_STEPS)
    # Every step of the budgets runs, however busy the machine: the verdict must not depend on
    # its speed here (benchmarks/bugzoo.py measures the verdicts within the time budgets).
    config.debug.overfit_seconds = config.debug.train_seconds = UNLIMITED_SECONDS
    summary = debug.run_debug(experiment.prepare(config), str(tmp_path))
    findings = [(f.id, f.severity) for f in summary.findings]
    if case.expected_id is None:
        serious = [f for f in findings if f[1] in ("error", "warning")]
        assert serious == [], findings
    else:
        assert findings and findings[0][0] == case.expected_id, findings


def test_zoo_has_the_required_cases() -> None:
    """At least 45 broken setups and 15 clean ones (issue 16), with unique names, each broken one
    in a fault category."""
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)
    assert sum(case.expected_id is not None for case in CASES) >= 45
    assert sum(case.expected_id is None for case in CASES) >= 15
    broken = {case.name for case in CASES if case.expected_id is not None}
    assert set(CATEGORY_OF) == broken
    assert set(CATEGORY_OF.values()) == set(CATEGORIES)
    # A case a config change repairs expects a finding whose suggestions carry config flags.
    fixable = [case for case in CASES if case.config_fixable]
    assert len(fixable) >= 4
    assert all(finding_kind(case.expected_id).config_fix for case in fixable)


def test_benchmark_writes_totals_and_the_repair_rate(tmp_path) -> None:
    """benchmarks/bugzoo.py on two cases, one of them fixable by config: exit 0, and the totals
    and the repair rate in --out (debug.fix repairs lr 1e-8 with the trials' best rate)."""
    from benchmarks import bugzoo

    out = tmp_path / "bugzoo.json"
    assert bugzoo.main(["--only=shuffled_labels,lr_1e-8", f"--out={out}"]) == 0
    written = json.loads(out.read_text())
    assert len(written.pop("load_average")) == 3  # the machine's, as the times depend on it
    seconds = {r["name"]: r["seconds"] for r in written["cases_detail"]}

    def times(name):
        return {
            "seconds_median": round(seconds[name], 2),
            "seconds_max": round(seconds[name], 2),
        }

    scores = {"correct_top1": 1, "top1_accuracy": 1.0, "detection_rate": 1.0}
    assert written == {
        "cases": 2,
        "correct_top1": 2,
        "detected": 2,
        "clean_runs": 0,
        "false_alarms": 0,
        "config_fixable": 1,
        "repaired": 1,
        "time_to_verdict": {},  # neither is one of the timed cases
        "per_category": {
            "data": {
                "cases": 1,
                **times("shuffled_labels"),
                **scores,
                "config_fixable": 0,
                "repaired": 0,
                "repair_rate": None,
            },
            "optimization": {
                "cases": 1,
                **times("lr_1e-8"),
                **scores,
                "config_fixable": 1,
                "repaired": 1,
                "repair_rate": 1.0,
            },
        },
        "cases_detail": [
            {
                "name": "lr_1e-8",
                "category": "optimization",
                "expected": "lr_too_low",
                "top": "lr_too_low",
                "correct": True,
                "seconds": seconds["lr_1e-8"],
                "config_fixable": True,
                "fix": {"optimizer.learning_rate": 0.0003},
                "repaired": True,
            },
            {
                "name": "shuffled_labels",
                "category": "data",
                "expected": "labels_corrupted",
                "top": "labels_corrupted",
                "correct": True,
                "seconds": seconds["shuffled_labels"],
                "config_fixable": False,
                "fix": None,
                "repaired": False,
            },
        ],
    }
