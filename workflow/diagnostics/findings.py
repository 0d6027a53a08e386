"""Findings: what a stage found, with evidence and the workflow's ranked suggestions.

`KINDS` is the findings vocabulary, each id declared once: its default severity, what it means,
which stage or detector raises it, the symptoms it explains, its row in the debug report's
checklist and its group. An id's rank is its position in `KINDS`: the reading order within a
severity. `rank_findings` is the one order every stage gives its findings in.
`Finding` refuses an id that is not declared here, so a typo fails where it is made.

    python -m workflow.diagnostics.findings --markdown > docs/findings.md
"""

import dataclasses
import difflib
import functools
import sys
from typing import Any

SEVERITIES = ("error", "warning", "info")

# The debug report's checklist: what was checked, in this order; each kind names its row.
INPUTS_ROW = "inputs are normalized"
DTYPES_ROW = "dtypes as expected"
LABELS_ROW = "labels in range and informative"
EXAMPLES_ROW = "splits consistent (no test leak, no copies, same processing)"
LOGITS_ROW = "outputs are logits, not probabilities"
SHAPES_ROW = "shapes match in the loss (no silent broadcasting)"
INITIAL_LOSS_ROW = "initial loss near ln C"
BATCH_ROW = "examples independent of their batch (eval)"
MODE_ROW = "dropout / BatchNorm follow train and eval mode"
INPUT_USED_ROW = "the outputs depend on the input"
LINEAR_ROW = "the model is nonlinear (activations between layers)"
INDICES_ROW = "integer indices inside their tables (nothing clamped)"
LAYERS_ROW = "dropout and BatchNorm settings leave room to learn"
RANDOMNESS_ROW = "a fresh random key for every draw and step"
OPTIMIZER_ROW = "each gradient applied once (no accumulation left unreset)"
SCHEDULE_ROW = "the learning-rate schedule stays above 0 over the run"
GRADIENTS_ROW = "gradients reach every parameter"
NONFINITE_ROW = "no NaN/inf"
OVERFIT_ROW = "overfits one batch"
CURVE_ROW = "loss curve of a short run"
CHECKLIST_ROWS = (
    INPUTS_ROW,
    DTYPES_ROW,
    EXAMPLES_ROW,
    LABELS_ROW,
    LOGITS_ROW,
    INDICES_ROW,
    SHAPES_ROW,
    INITIAL_LOSS_ROW,
    BATCH_ROW,
    MODE_ROW,
    INPUT_USED_ROW,
    RANDOMNESS_ROW,
    LAYERS_ROW,
    LINEAR_ROW,
    GRADIENTS_ROW,
    OPTIMIZER_ROW,
    SCHEDULE_ROW,
    NONFINITE_ROW,
    OVERFIT_ROW,
    CURVE_ROW,
)

# Groups that code reads as a set.
VERDICT = "verdict"  # the bias-variance verdicts against the goal
ERROR_ANALYSIS = "error_analysis"  # recomputed on every evaluation of a model


@dataclasses.dataclass(frozen=True)
class FindingKind:
    """One id of the findings vocabulary; its rank is its position in `KINDS`."""

    id: str
    severity: str  # the default; `meaning` says when another is used
    meaning: str  # one line: what the finding says about the run
    raised_by: str  # the stage or detector that raises it
    # The symptoms it is a cause of: found beside one of error severity, it is promoted to an
    # error itself, so that the cause, not the symptom, is read first. Each is ranked below it.
    explains: tuple[str, ...] = ()
    checklist: str | None = None  # its row in the debug report's checklist
    group: str | None = None  # VERDICT, ERROR_ANALYSIS: a set some code reads
    repeats: bool = False  # several stand side by side (one per step, per parameter)
    # Its suggestions name config flags (`--config.key=value`) that may fix it: the debug
    # stage's `debug.fix` applies the first that changes the config (diagnostics/fixes.py).
    config_fix: bool = False


KINDS = (
    # How the final model of `workflow.run` came about: read before the final model's findings.
    FindingKind(
        "workflow_step",
        "info",
        "one step of the whole workflow: what it ran and decided, with its evidence (one per step)",
        "run",
        repeats=True,
    ),
    # An evaluation reads the verdict first, then what its error analysis found, then the
    # findings of the training run.
    FindingKind(
        "underfit",
        "warning",
        "bias-variance verdict: train error lies above the goal by more than its tolerance "
        "(or is the largest share of a missed goal)",
        "evaluate",
        group=VERDICT,
    ),
    FindingKind(
        "overfit",
        "warning",
        "bias-variance verdict: val error lies above train error by more than its tolerance "
        "(or is the largest share of a missed goal)",
        "evaluate",
        group=VERDICT,
    ),
    FindingKind(
        "val_overfit",
        "warning",
        "bias-variance verdict: test error lies above val error by more than its tolerance (or "
        "is the largest share of a missed goal): the val set, not the model, is the problem",
        "evaluate",
        group=VERDICT,
    ),
    FindingKind(
        "goal_met",
        "info",
        "bias-variance verdict: test error meets the goal, up to the test set's sampling noise "
        "(or sits at the data's irreducible error): nothing left to fix",
        "evaluate",
        group=VERDICT,
    ),
    # Each class is explained once, by the most specific finding first.
    FindingKind(
        "label_noise_suspected",
        "warning",
        "wrong predictions the model is as sure of as of its correct ones concentrate in one "
        "class: its labels may be wrong",
        "evaluate's error analysis",
        group=ERROR_ANALYSIS,
    ),
    FindingKind(
        "class_too_few_examples",
        "warning",
        "a class whose error is far above the overall error also has at most half the median "
        "class's training examples",
        "evaluate's error analysis",
        group=ERROR_ANALYSIS,
    ),
    FindingKind(
        "class_error_concentrated",
        "info",
        "one class's error (or the error of what the model predicts as one class) is far above "
        "the overall error, on train and/or val",
        "evaluate's error analysis",
        group=ERROR_ANALYSIS,
    ),
    FindingKind(
        "input_errors_concentrated",
        "info",
        "errors pile up in inputs of one kind: the examples in one quartile of a per-example "
        "input statistic (mean, spread, largest value) have far more error than the split",
        "evaluate's error analysis",
        group=ERROR_ANALYSIS,
    ),
    # The root causes, most specific first, then the symptoms they explain: a softmax before
    # the loss explains an initial loss far off, which explains a plateau, which explains a
    # batch that cannot be overfit. The debug stage reads its findings in this order.
    FindingKind(
        "shape_mismatch",
        "error",
        "shapes that broadcast silently in the loss, a loss that fails on (N, C) outputs, or "
        "outputs not (batch, C) (info when a rank broadcast leaves each example's loss intact)",
        "debug, tune",
        explains=("cannot_overfit_batch",),
        checklist=SHAPES_ROW,
    ),
    FindingKind(
        "labels_out_of_range",
        "error",
        "labels outside [0, C)",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=LABELS_ROW,
    ),
    FindingKind(
        "index_out_of_range",
        "error",
        "integer indices past the table a gather reads (token ids past an embedding table, "
        "labels past the outputs in a hand-written loss): JAX clamps them or fills NaN silently",
        "debug",
        explains=("nan_or_inf", "cannot_overfit_batch"),
        checklist=INDICES_ROW,
    ),
    FindingKind(
        "softmax_before_loss",
        "error",
        "outputs are already (log-)probabilities, or pass through a sigmoid, tanh or relu head, "
        "but the loss expects logits (a warning for log-probabilities, or into a loss of your "
        "own)",
        "debug, tune",
        explains=("loss_plateau", "cannot_overfit_batch"),
        checklist=LOGITS_ROW,
    ),
    FindingKind(
        "dtype_mismatch",
        "warning",
        "inputs or labels in an unexpected dtype as the loader returned them, which the "
        "pipeline's cast to float32/int32 would hide: float64 inputs whose variation float32 "
        "rounds away, integer inputs fed unnormalized (info where the cast loses nothing: "
        "float64 of ordinary range, float labels that are whole numbers), or as fed; "
        "parameters in float64 or mixed dtypes and silently promoted by the computation, "
        "non-float32 outputs, `jax_enable_x64` turned on; each array named",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=DTYPES_ROW,
    ),
    FindingKind(
        "batch_dependence",
        "error",
        "an example's eval output depends on the rest of its batch",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=BATCH_ROW,
    ),
    FindingKind(
        "train_eval_mode",
        "error",
        "dropout/BatchNorm behave the same in train and eval, or eval is not deterministic",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=MODE_ROW,
    ),
    FindingKind(
        "output_ignores_input",
        "error",
        "the model's output is the same for every input, even after training on one batch: "
        "the input never reaches the output (a constant fed instead of x, x overwritten)",
        "debug",
        explains=("dead_units", "loss_plateau", "cannot_overfit_batch"),
        checklist=INPUT_USED_ROW,
    ),
    FindingKind(
        "prng_key_reused",
        "warning",
        "random draws of the train-mode pass use the same key at the next step: the same "
        "dropout mask (or noise) every step (a key made once, never split)",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=RANDOMNESS_ROW,
    ),
    FindingKind(
        "prng_key_shared",
        "warning",
        "random draws of one train-mode pass share a key: layers draw the same random numbers "
        "(a key passed to several layers unsplit)",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=RANDOMNESS_ROW,
    ),
    FindingKind(
        "dropout_too_high",
        "warning",
        "a dropout rate above 0.5: training keeps too few units for the model to fit (in "
        "debug: info unless lower rates measurably help the val loss in counterfactual trials)",
        "debug",
        explains=("initial_loss_off", "loss_plateau", "cannot_overfit_batch"),
        checklist=LAYERS_ROW,
    ),
    FindingKind(
        "batchnorm_small_batch",
        "warning",
        "BatchNorm over batches of fewer than 8 examples: its batch statistics are noise and "
        "eval's running averages drift from training (in debug: info unless batch size 32 "
        "measurably helps the val loss on as many examples in counterfactual trials)",
        "debug",
        explains=("loss_oscillating", "cannot_overfit_batch"),
        checklist=LAYERS_ROW,
        config_fix=True,
    ),
    FindingKind(
        "nan_or_inf",
        "error",
        "a loss, gradient or parameter became NaN/inf (with the step and, where found, the op "
        "and source line)",
        "every training stage, debug",
        explains=("cannot_overfit_batch",),
        checklist=NONFINITE_ROW,
    ),
    FindingKind(
        "split_from_sorted_data",
        "warning",
        "the training examples come in class order and the splits hold different classes: the "
        "splits were cut from sorted data (info when every split holds the same classes: the "
        "workflow shuffles its batches)",
        "debug",
        explains=("labels_corrupted", "test_split_differs", "cannot_overfit_batch"),
        checklist=EXAMPLES_ROW,
    ),
    FindingKind(
        "labels_corrupted",
        "error",
        "labels that carry no signal: one class only, a class distribution that differs "
        "wildly between splits (warning), or memorized but at chance on val",
        "debug",
        explains=("loss_oscillating", "loss_plateau", "cannot_overfit_batch"),
        checklist=LABELS_ROW,
    ),
    FindingKind(
        "train_labels_noisy",
        "warning",
        "the short run's model agrees with the training labels clearly less than with the test "
        "labels it never saw (regression, multi-label: its error on them is clearly larger): a "
        "share of the training labels looks wrong (randomized, shifted, misaligned)",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=LABELS_ROW,
    ),
    FindingKind(
        "test_leaked_into_train",
        "error",
        "test examples that are exact copies of training (or val) examples: the test error "
        "reads too low",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=EXAMPLES_ROW,
    ),
    FindingKind(
        "duplicate_examples",
        "warning",
        "a tenth or more of the training rows are exact copies of another (a split or "
        "concatenation applied twice)",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=EXAMPLES_ROW,
    ),
    FindingKind(
        "extreme_values",
        "warning",
        "a few values of an input feature or a regression target lie far beyond all the others "
        "(a code for a missing value, a unit mixed up on some rows): they dominate the loss",
        "debug",
        explains=("loss_oscillating", "loss_exploding", "cannot_overfit_batch"),
        checklist=INPUTS_ROW,
    ),
    FindingKind(
        "target_in_inputs",
        "warning",
        "one input feature alone gives the label or the target (the label column, or one "
        "computed from the outcome, left among the inputs): the model can read the answer",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=LABELS_ROW,
    ),
    FindingKind(
        "split_normalized_separately",
        "warning",
        "the test split is standardized to float rounding, far closer than its sampling noise "
        "allows: it was normalized with its own statistics, not the training split's",
        "debug",
        explains=("test_split_differs", "cannot_overfit_batch"),
        checklist=EXAMPLES_ROW,
    ),
    # Unscaled inputs are what make the gradients explode or vanish downstream.
    FindingKind(
        "test_split_differs",
        "warning",
        "the short run's model scores clearly worse on the test split than on the val split it "
        "never saw either: the test inputs or labels are processed differently (transposed, "
        "normalized otherwise, another label map)",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=EXAMPLES_ROW,
    ),
    FindingKind(
        "model_is_linear",
        "warning",
        "a model of several weight layers is affine in its input: the activations between its "
        "layers are missing, so it is one linear layer however deep",
        "debug",
        explains=("cannot_overfit_batch",),
        checklist=LINEAR_ROW,
    ),
    FindingKind(
        "inputs_not_normalized",
        "warning",
        "inputs far from zero mean / unit scale (in debug: info unless standardizing them "
        "measurably helps in counterfactual trials)",
        "debug",
        explains=("loss_exploding", "cannot_overfit_batch"),
        checklist=INPUTS_ROW,
        config_fix=True,
    ),
    FindingKind(
        "no_gradient",
        "error",
        "parameters that get no gradient at all (a stop_gradient, a detached branch)",
        "debug",
        explains=("loss_plateau", "cannot_overfit_batch"),
        checklist=GRADIENTS_ROW,
    ),
    FindingKind(
        "dead_units",
        "warning",
        "ReLU units that never activate on the batch (error when a whole layer is dead)",
        "debug",
        explains=("loss_plateau", "cannot_overfit_batch"),
        checklist=GRADIENTS_ROW,
    ),
    FindingKind(
        "exploding_gradients",
        "warning",
        "a gradient norm far too large (error when gradients are NaN/inf; in debug, a finite "
        "one is info unless smaller initial weights or gradient clipping measurably help in "
        "counterfactual trials)",
        "debug",
        explains=("loss_exploding", "cannot_overfit_batch"),
        checklist=GRADIENTS_ROW,
        config_fix=True,
    ),
    FindingKind(
        "gradients_never_reset",
        "warning",
        "the optimizer keeps applying a gradient long after its step: gradients are "
        "accumulated and never reset (JAX's forgotten zero_grad)",
        "debug",
        explains=("loss_exploding", "loss_oscillating", "cannot_overfit_batch"),
        checklist=OPTIMIZER_ROW,
    ),
    FindingKind(
        "lr_schedule_zero",
        "warning",
        "the learning-rate schedule (a built-in or the user's) leaves the rate below 1/1000 of "
        "its peak on 10% or more of the run's steps, e.g. a warm-up joined to a decay sized "
        "to the warm-up alone (error from half the run)",
        "debug",
        explains=("loss_plateau", "lr_too_low", "cannot_overfit_batch"),
        checklist=SCHEDULE_ROW,
        config_fix=True,
    ),
    FindingKind(
        "vanishing_gradients",
        "warning",
        "gradients that shrink to nothing on their way to the first layers",
        "debug",
        explains=("loss_plateau", "cannot_overfit_batch"),
        checklist=GRADIENTS_ROW,
    ),
    FindingKind(
        "model_too_small",
        "warning",
        "not a bug: a model with fewer parameters than one batch has outputs to fit could not "
        "memorize it: too little capacity for the data (underfit); make it larger",
        "debug",
        explains=("loss_plateau", "cannot_overfit_batch"),
        checklist=OVERFIT_ROW,
    ),
    FindingKind(
        "lr_too_high",
        "warning",
        "the learning rate is too high: the curve goes wrong from its first steps, or the "
        "configured lr lies above the range test's band (in debug: info unless lowering it "
        "measurably helps in counterfactual trials; in tune: info once the search has replaced "
        "the rate with its best)",
        "curve diagnosis, tune",
        explains=("loss_exploding", "loss_increasing", "loss_oscillating", "cannot_overfit_batch"),
        checklist=CURVE_ROW,
        config_fix=True,
    ),
    FindingKind(
        "lr_too_low",
        "warning",
        "the learning rate is too low: the curve falls steadily but slowly, one batch is "
        "memorized only at 10x the lr or its loss does not move at all, or the configured lr "
        "lies below the range test's band "
        "(info when only a little below; in debug: info unless raising it measurably helps in "
        "counterfactual trials, or when the batch still learns at the configured lr; in tune: "
        "info once the search has replaced the rate with its best)",
        "curve diagnosis, debug, tune",
        explains=("loss_plateau", "cannot_overfit_batch"),
        checklist=CURVE_ROW,
        config_fix=True,
    ),
    FindingKind(
        "initial_loss_off",
        "warning",
        "loss at step 0 far from ln C (info for a loss other than softmax cross-entropy; in "
        "debug: info unless smaller initial weights measurably help in counterfactual trials)",
        "debug, tune",
        explains=("loss_exploding", "cannot_overfit_batch"),
        checklist=INITIAL_LOSS_ROW,
    ),
    FindingKind(
        "loss_exploding",
        "error",
        "error explodes (numerics in exp/log/div, lr too high)",
        "curve diagnosis",
        explains=("cannot_overfit_batch",),
        checklist=CURVE_ROW,
    ),
    FindingKind(
        "loss_increasing",
        "error",
        "error goes up (flipped sign, lr too high, softmax over the wrong axis)",
        "curve diagnosis",
        explains=("cannot_overfit_batch",),
        checklist=CURVE_ROW,
    ),
    FindingKind(
        "loss_oscillating",
        "warning",
        "error oscillates (lr too high, corrupted or mis-shuffled data/labels; error when it "
        "never leaves its initial level)",
        "curve diagnosis",
        explains=("cannot_overfit_batch",),
        checklist=CURVE_ROW,
    ),
    FindingKind(
        "loss_plateau",
        "warning",
        "error plateaus (lr too low, gradients not flowing, too much regularization, "
        "probabilities into a logits loss, corrupted data; error when it never leaves its "
        "initial level, or when no trial of a search trained; in debug with l2 > 0 or AdamW "
        "weight_decay > 0, counterfactual trials at a lower l2 or weight decay confirm or "
        "refute the regularization)",
        "curve diagnosis, tune",
        explains=("cannot_overfit_batch",),
        checklist=CURVE_ROW,
        config_fix=True,
    ),
    FindingKind(
        "cannot_overfit_batch",
        "error",
        "the model cannot memorize one small batch",
        "debug",
        checklist=OVERFIT_ROW,
    ),
    # What the search itself says, and what happened to the run rather than the model.
    FindingKind(
        "search_range_edge",
        "warning",
        "the search's best lr or L2 lies at the edge of the last round's range: search further "
        "that way (one per hyperparameter)",
        "tune",
        repeats=True,
    ),
    FindingKind(
        "time_budget_cut",
        "info",
        "the debug stage's overfit run or short run stopped at its time budget "
        "(`debug.overfit_seconds`, `debug.train_seconds`) before its steps, with the measured "
        "step time and what the shorter run means for the verdict",
        "debug",
    ),
    FindingKind(
        "config_fix",
        "info",
        "with `debug.fix`: the top finding's first config-level suggestion, applied and the debug "
        "checks rerun: whether the finding is gone and the overfit and short runs now pass (a "
        "warning when the fix did not repair the setup; info naming the code to change when the "
        "finding has no config-level fix)",
        "debug",
    ),
    FindingKind(
        "corrupt_checkpoint",
        "warning",
        "a checkpoint was unreadable, partial or changed since it was written: set aside, the "
        "one before used",
        "every training stage",
    ),
    FindingKind(
        "out_of_memory",
        "error",
        "the device ran out of memory (XLA `RESOURCE_EXHAUSTED`): batch size, parameters, "
        "optimizer state, activations of one step, what to scale back in order (batch size, "
        "model size, sequence/image size, precision); with `memory.retry_halving` the attempts "
        "at halved batch sizes (warning if one fit; one per invocation that ran out)",
        "every stage",
        repeats=True,
    ),
)


def check_registry(kinds: tuple[FindingKind, ...]) -> None:
    """Raise ValueError unless `kinds` is a consistent vocabulary (see FindingKind)."""
    rank = {}
    for position, k in enumerate(kinds):
        if k.id in rank:
            raise ValueError(f"finding id {k.id!r} is declared twice")
        rank[k.id] = position
        if k.severity not in SEVERITIES:
            raise ValueError(f"{k.id}: severity {k.severity!r} not in {SEVERITIES}")
        if k.checklist is not None and k.checklist not in CHECKLIST_ROWS:
            raise ValueError(f"{k.id}: checklist row {k.checklist!r} not in CHECKLIST_ROWS")
    for k in kinds:
        for symptom in k.explains:
            if rank.get(symptom, -1) <= rank[k.id]:
                raise ValueError(f"{k.id} explains {symptom!r}, which is not declared below it")


@functools.lru_cache(maxsize=4)
def _index(kinds: tuple[FindingKind, ...]) -> dict[str, tuple[int, FindingKind]]:
    """{id: (rank, kind)} of a checked vocabulary."""
    check_registry(kinds)
    return {k.id: (position, k) for position, k in enumerate(kinds)}


_index(KINDS)  # a vocabulary that contradicts itself fails on import


def kind(finding_id: str) -> FindingKind:
    """The declaration of `finding_id`; ValueError naming the closest ids when undeclared."""
    index = _index(KINDS)
    if finding_id not in index:
        close = difflib.get_close_matches(finding_id, index, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ValueError(
            f"finding id {finding_id!r} is not declared: {hint}declare it in KINDS "
            "(workflow/diagnostics/findings.py)"
        )
    return index[finding_id][1]


def declared_ids(group: str | None = None) -> tuple[str, ...]:
    """Every declared id in rank order, or those of one group."""
    return tuple(k.id for k in KINDS if group is None or k.group == group)


def checklist() -> list[tuple[str, tuple[str, ...]]]:
    """The debug report's checklist: (row, the ids that mean it failed, in rank order)."""
    return [(row, tuple(k.id for k in KINDS if k.checklist == row)) for row in CHECKLIST_ROWS]


@dataclasses.dataclass
class Finding:
    """One diagnosis; `id` is declared in `KINDS` (docs/findings.md lists them)."""

    id: str
    severity: str
    message: str
    evidence: dict[str, Any] = dataclasses.field(default_factory=dict)
    suggestions: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        kind(self.id)
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} not in {SEVERITIES}")

    def to_json(self) -> dict[str, Any]:
        """The summary.json form."""
        return dataclasses.asdict(self)


def has_error(findings: list[Finding]) -> bool:
    """Whether any finding blocks the workflow (exit code 1)."""
    return any(f.severity == "error" for f in findings)


def promote_causes(findings: list[Finding]) -> list[Finding]:
    """Raise each warning that explains an error-severity symptom beside it to an error."""
    symptoms = {f.id for f in findings if f.severity == "error"}
    return [
        dataclasses.replace(f, severity="error")
        if f.severity == "warning" and symptoms.intersection(kind(f.id).explains)
        else f
        for f in findings
    ]


def rank_findings(findings: list[Finding]) -> list[Finding]:
    """The one order: causes promoted, most severe first, then by rank; repeated ids dropped."""
    # Of an id that does not repeat, the first in this order stands: the most severe, then the
    # one emitted first (a check's located NaN before the curve's).
    index = _index(KINDS)
    ranked = sorted(
        promote_causes(findings),
        key=lambda f: (SEVERITIES.index(f.severity), index[f.id][0]),
    )
    seen, unique = set(), []
    for f in ranked:
        if f.id not in seen or index[f.id][1].repeats:
            seen.add(f.id)
            unique.append(f)
    return unique


def markdown() -> str:
    """docs/findings.md: the vocabulary as a table, in rank order."""
    rows = [
        "| id | default severity | meaning | raised by | explains |",
        "|---|---|---|---|---|",
    ]
    for k in KINDS:
        explains = ", ".join(f"`{s}`" for s in k.explains) or "-"
        rows.append(f"| `{k.id}` | {k.severity} | {k.meaning} | {k.raised_by} | {explains} |")
    return "\n".join(
        [
            "# Findings",
            "",
            "<!-- Generated from workflow/diagnostics/findings.py: edit KINDS there, then run",
            "     python -m workflow.diagnostics.findings --markdown > docs/findings.md -->",
            "",
            'Every finding in `summary.json` is `{"id", "severity", "message", "evidence",',
            '"suggestions"}`. The ids are a stable vocabulary, listed here in rank order: a stage',
            "lists its findings most severe first and, within a severity, in this order. A",
            "finding beside an error it explains (its *explains* column) is raised to an error",
            "and read before it: the cause first.",
            "",
            *rows,
            "",
            "Thresholds and where each comes from are documented as constants in",
            "`workflow/diagnostics/checks/`, `workflow/diagnostics/curves.py` and",
            "`workflow/diagnostics/error_analysis.py`.",
            "",
        ]
    )


def main(argv: list[str]) -> int:
    """`--markdown`: print docs/findings.md."""
    if argv[1:] != ["--markdown"]:
        print(
            f"usage: python -m workflow.diagnostics.findings --markdown (got {argv[1:]})",
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
