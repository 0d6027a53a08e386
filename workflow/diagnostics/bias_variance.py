"""The bias-variance decomposition against the goal: error rates in, table rows and findings out.

    test error = irreducible error + bias + variance + val overfit

The goal stands in for the irreducible error (the workflow's "goal performance"); when the data
knows its irreducible error and the goal lies below it, the goal is unreachable and the gaps are
measured against the irreducible error instead. Each gap is called only when it exceeds both its
configured tolerance and the sampling noise of the two error rates it compares.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from workflow.diagnostics.findings import Finding

TREND_FALLING, TREND_FLAT = "falling", "flat"


@dataclasses.dataclass(frozen=True)
class Errors:
    """Errors of one model on each split, and the split sizes: error rates (1 - accuracy), or
    the error measure of `kind` (engine/tasks.py TaskKind; an RMSE for regression)."""

    train: float
    val: float
    test: float
    n_train: int
    n_val: int
    n_test: int
    kind: Any = dataclasses.field(default=None, compare=False)  # None: a classification's rates

    def fmt(self, value: float) -> str:
        """An error as a person reads it: a rate as % (pct), an RMSE in the targets' units."""
        return error_format(self.kind)(value)

    def variance(self, error: float, n: int) -> float:
        """The sampling variance of an error measured on n examples."""
        if self.kind is None:
            return rate_variance(error, n)
        return self.kind.error_variance(error, n)


@dataclasses.dataclass(frozen=True)
class Tolerances:
    """Gaps at or below these are "ok"; `noise_z` standard errors set the sampling-noise floor."""

    underfit: float = 0.01
    overfit: float = 0.01
    val_overfit: float = 0.01
    noise_z: float = 2.0

    @classmethod
    def from_config(cls, evaluate_config) -> "Tolerances":
        """The tolerances of a config's `evaluate` block."""
        return cls(
            underfit=float(evaluate_config.underfit_tolerance),
            overfit=float(evaluate_config.overfit_tolerance),
            val_overfit=float(evaluate_config.val_overfit_tolerance),
            noise_z=float(evaluate_config.noise_z),
        )


def rate_variance(p: float, n: int) -> float:
    """The Wald variance p(1-p)/n of an error rate measured on n examples."""
    return p * (1.0 - p) / n


def gap_noise(
    z: float,
    *rates: tuple[float, int | None],
    variance: Callable[[float, int], float] = rate_variance,
) -> float:
    """The sampling noise of a gap between errors: `z` standard errors of their difference,
    each error given as `(error, examples)` on its own set.

    An exact reference (the goal, the irreducible error) is given with `examples=None` and adds
    no variance. The Wald estimate p(1-p)/n (another error measure: its `variance`) treats the
    sets as independent samples.
    """
    total = sum(variance(p, n) for p, n in rates if n)
    return z * math.sqrt(max(total, 0.0))


@dataclasses.dataclass(frozen=True)
class Gap:
    """One term of the decomposition: `upper - lower` error, and the tolerance it is held to."""

    verdict: str  # the finding id it raises: underfit, overfit, val_overfit
    component: str  # its name in summary.json metrics: bias, variance, val_overfit
    upper: str
    lower: str
    value: float
    configured_tolerance: float
    noise_floor: float
    fmt: Callable[[float], str] = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def tolerance(self) -> float:
        """The tolerance used: the configured one or the noise floor, whichever is larger."""
        return max(self.configured_tolerance, self.noise_floor)

    @property
    def exceeds(self) -> bool:
        """Whether the gap reaches its tolerance (a gap below it is not called)."""
        # The epsilon keeps a gap equal to the tolerance, up to float rounding, called.
        return self.value > 0 and self.value >= self.tolerance - 1e-12

    @property
    def label(self) -> str:
        """'Train − Goal = 19%'."""
        return f"{self.upper} − {self.lower} = {(self.fmt or pct)(self.value)}"

    def evidence(self) -> dict:
        """The gap and the tolerance it was held to, for a finding."""
        return {
            "gap": self.value,
            "tolerance": self.tolerance,
            "configured_tolerance": self.configured_tolerance,
            "noise_floor": self.noise_floor,
        }


@dataclasses.dataclass(frozen=True)
class Decomposition:
    """Test error as the reference (goal or irreducible error) + bias + variance + val overfit."""

    errors: Errors
    goal: float
    irreducible: float | None
    bias: Gap
    variance: Gap
    val_overfit: Gap
    goal_floor: float  # sampling noise of the test error against the reference

    def fmt(self, value: float) -> str:
        """An error in the decomposition's units (Errors.fmt)."""
        return self.errors.fmt(value)

    @property
    def gaps(self) -> tuple[Gap, Gap, Gap]:
        """Bias, variance and val overfit, in the workflow's order."""
        return (self.bias, self.variance, self.val_overfit)

    @property
    def goal_reachable(self) -> bool:
        """False when the data's irreducible error is known to lie above the goal."""
        return self.irreducible is None or self.goal >= self.irreducible

    @property
    def reference(self) -> float:
        """The error the gaps are measured against: the goal, or the irreducible error above it."""
        return self.goal if self.goal_reachable else self.irreducible

    @property
    def goal_excess(self) -> float:
        """Test error minus the reference (= bias + variance + val overfit)."""
        return self.errors.test - self.reference

    @property
    def goal_met(self) -> bool:
        """Test error at or below the reference, up to the test set's sampling noise."""
        return self.goal_excess <= self.goal_floor

    def called_gaps(self) -> list[Gap]:
        """The gaps the verdict names: those past their tolerance or, when the goal is missed and
        none is, the largest one (the excess is their sum, so together they are significant)."""
        if self.goal_met:
            return []
        past = [g for g in self.gaps if g.exceeds]
        return past or [max(self.gaps, key=lambda g: g.value)]

    def metrics(self) -> dict:
        """The numbers for summary.json metrics."""
        return {
            "train_error": self.errors.train,
            "val_error": self.errors.val,
            "test_error": self.errors.test,
            "goal_error": self.goal,
            "irreducible_error": self.irreducible,
            "bias": self.bias.value,
            "variance": self.variance.value,
            "val_overfit": self.val_overfit.value,
            "goal_met": self.goal_met,
        }

    def base_evidence(self) -> dict:
        """The error rates and set sizes every verdict cites."""
        e = self.errors
        evidence = {
            "train_error": e.train,
            "val_error": e.val,
            "test_error": e.test,
            "goal_error": self.goal,
        }
        if self.irreducible is not None:
            evidence["irreducible_error"] = self.irreducible
            evidence["goal_reachable"] = self.goal_reachable
        evidence.update(n_train=e.n_train, n_val=e.n_val, n_test=e.n_test)
        return evidence


def error_format(kind: Any = None) -> Callable[[float], str]:
    """How errors of a task kind (engine/tasks.py; None: classification) read: `pct` for
    rates, the number in the targets' units for an RMSE."""
    if kind is None or kind.error_is_rate:
        return pct
    return lambda value: kind.format_error(value).replace("-", "−")


def pct(value: float) -> str:
    """An error rate as a person reads it: 0.19 -> '19%', 0.0043 -> '0.43%', -0.02 -> '−2%'."""
    percent = round(100 * value, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{percent:.3g}%".replace("-", "−")


_gap_noise = gap_noise  # decompose's own gap_noise shadows the name


def decompose(
    errors: Errors, goal: float, irreducible: float | None, tol: Tolerances
) -> Decomposition:
    """Bias, variance and val overfit of `errors` against the goal, with their tolerances."""
    reachable = irreducible is None or goal >= irreducible
    reference = goal if reachable else irreducible
    lower = "Goal" if reachable else "Irreducible"
    z, fmt = tol.noise_z, errors.fmt

    def gap_noise(z, *rates):  # the errors' own sampling variance
        return _gap_noise(z, *rates, variance=errors.variance)

    bias = Gap(
        "underfit",
        "bias",
        "Train",
        lower,
        errors.train - reference,
        tol.underfit,
        gap_noise(z, (errors.train, errors.n_train)),
        fmt,
    )
    variance = Gap(
        "overfit",
        "variance",
        "Val",
        "Train",
        errors.val - errors.train,
        tol.overfit,
        gap_noise(z, (errors.val, errors.n_val), (errors.train, errors.n_train)),
        fmt,
    )
    val_overfit = Gap(
        "val_overfit",
        "val_overfit",
        "Test",
        "Val",
        errors.test - errors.val,
        tol.val_overfit,
        gap_noise(z, (errors.test, errors.n_test), (errors.val, errors.n_val)),
        fmt,
    )
    goal_floor = gap_noise(z, (errors.test, errors.n_test))
    return Decomposition(errors, goal, irreducible, bias, variance, val_overfit, goal_floor)


GAP_NAMES = {"underfit": "underfit", "overfit": "overfit", "val_overfit": "val overfit"}
ROW_OF_GAP = {"underfit": "Train error", "overfit": "Validation error", "val_overfit": "Test error"}


def table_rows(d: Decomposition) -> list[list[str]]:
    """The workflow's table: error source, value, analysis (gap and verdict)."""
    called = {g.verdict for g in d.called_gaps()}
    rows = []
    if d.irreducible is not None:
        margin = d.goal - d.irreducible
        status = "reachable" if d.goal_reachable else "goal unreachable"
        rows.append(
            [
                "Irreducible error",
                d.fmt(d.irreducible),
                f"Goal − Irreducible = {d.fmt(margin)}: {status}",
            ]
        )
    met = "goal met" if d.goal_met else "goal not met"
    ref = "Goal" if d.goal_reachable else "Irreducible"
    rows.append(
        ["Goal performance", d.fmt(d.goal), f"Test − {ref} = {d.fmt(d.goal_excess)}: {met}"]
    )
    values = {"underfit": d.errors.train, "overfit": d.errors.val, "val_overfit": d.errors.test}
    for gap in d.gaps:
        if gap.exceeds:
            verdict = GAP_NAMES[gap.verdict]
        elif gap.verdict in called:
            verdict = f"{GAP_NAMES[gap.verdict]} (largest share of the missed goal)"
        else:
            verdict = f"ok (tolerance {d.fmt(gap.tolerance)})"
        rows.append(
            [ROW_OF_GAP[gap.verdict], d.fmt(values[gap.verdict]), f"{gap.label}: {verdict}"]
        )
    return rows


def decomposition_line(d: Decomposition) -> str:
    """'Test error 28% = goal 1% + bias 19% + variance 7% + val overfit 1%'."""
    if d.irreducible is not None and d.goal_reachable:
        head = f"irreducible {d.fmt(d.irreducible)} + goal margin {d.fmt(d.goal - d.irreducible)}"
    elif d.irreducible is not None:
        head = f"irreducible {d.fmt(d.irreducible)}"
    else:
        head = f"goal {d.fmt(d.goal)}"
    names = ("bias", "variance", "val overfit")
    terms = " + ".join(f"{name} {d.fmt(g.value)}" for name, g in zip(names, d.gaps, strict=True))
    line = f"Test error {d.fmt(d.errors.test)} = {head} + {terms}"
    # A negative term is an error below the one it is measured from; say so in words.
    notes = [
        f"{name} {d.fmt(g.value)}: {NEGATIVE_GAP[name]}"
        for name, g in zip(names, d.gaps, strict=True)
        if g.value < 0
    ]
    return line + (f" ({'; '.join(notes)})" if notes else "")


# What a negative term of the decomposition means, for a reader.
NEGATIVE_GAP = {
    "bias": "train error below the goal, so no bias is left to remove",
    "variance": "val error below train error (regularization or augmentation acts in training "
    "only, or val is easier)",
    "val overfit": "test error below val error (the val set is no easier than test)",
}


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What the suggestions name concretely: the model, its training, and the data left unused."""

    model: str = "the model"
    num_params: int | None = None
    num_steps: int | None = None
    learning_rate: float | None = None
    l2: float = 0.0
    weight_decay: float = 0.0
    val_fraction: float | None = None  # None when the dataset brings its own val split
    available_train: int | None = None  # training examples the data has (>= n_train)
    best_val_step: int | None = None  # the step of the lowest val loss in the run
    last_step: int | None = None


@dataclasses.dataclass(frozen=True)
class SizePoint:
    """Train and val error of a run on a subset of the training set."""

    fraction: float
    train_size: int
    train_error: float
    val_error: float


@dataclasses.dataclass(frozen=True)
class SizeTrend:
    """Whether val error still falls as the training set grows (between the two largest sizes)."""

    points: tuple[SizePoint, ...]
    trend: str  # TREND_FALLING or TREND_FLAT
    drop: float  # val error at the second-largest size minus at the largest
    drop_per_doubling: float
    tolerance: float  # the drop below which the curve counts as flat
    fmt: Callable[[float], str] = dataclasses.field(default=pct, compare=False, repr=False)

    def evidence(self) -> dict:
        """Evidence for a finding: the trend, the drop, and val error by training-set size."""
        return {
            "train_size_trend": self.trend,
            "val_error_drop": self.drop,
            "val_error_drop_per_doubling": self.drop_per_doubling,
            "train_size_tolerance": self.tolerance,
            "val_error_by_train_size": {p.train_size: p.val_error for p in self.points},
        }

    def text(self) -> str:
        """One sentence for a person: add data, or regularize / a bigger model."""
        a, b = self.points[-2], self.points[-1]
        change = (
            f"val error {self.fmt(a.val_error)} at {a.train_size:,} examples, "
            f"{self.fmt(b.val_error)} at {b.train_size:,}"
        )
        if self.trend == TREND_FALLING:
            return f"val error still falls as the training set grows ({change}): add data"
        return (
            f"val error is flat in training-set size ({change}): more data alone will not help "
            "much; regularize, or make the model bigger if it also underfits"
        )


def train_size_trend(
    points: list[SizePoint], n_val: int, tol: Tolerances, errors: Errors | None = None
) -> SizeTrend | None:
    """Classify the error-vs-size curve; None with fewer than two finished runs. `errors`: the
    run's (their units and sampling variance; error rates without)."""
    errors = errors or Errors(0.0, 0.0, 0.0, 0, 0, 0)
    finite = sorted(
        (p for p in points if math.isfinite(p.val_error) and math.isfinite(p.train_error)),
        key=lambda p: p.train_size,
    )
    if len(finite) < 2:
        return None
    a, b = finite[-2], finite[-1]
    drop = a.val_error - b.val_error
    # The same val set scores both runs, so their errors are positively correlated: the
    # independent-samples floor is conservative and a drop past it is real.
    floor = gap_noise(
        tol.noise_z, (a.val_error, n_val), (b.val_error, n_val), variance=errors.variance
    )
    tolerance = max(tol.overfit, floor)
    doublings = math.log2(b.train_size / a.train_size)
    return SizeTrend(
        points=tuple(finite),
        trend=TREND_FALLING if drop > tolerance else TREND_FLAT,
        drop=drop,
        drop_per_doubling=drop / doublings if doublings > 0 else 0.0,
        tolerance=tolerance,
        fmt=errors.fmt,
    )


def more_data_suggestion(n_train: int, facts: RunFacts) -> str:
    """Add data: the unused examples of this dataset first, with the flag that uses them."""
    if facts.available_train and facts.available_train > n_train:
        return (
            f"add more training data: {n_train:,} of the {facts.available_train:,} available "
            f"examples are used (--config.dataset.train_size={facts.available_train})"
        )
    return (
        f"add more training data: all {n_train:,} examples are in use; collect or synthesize more"
    )


def underfit_suggestions(facts: RunFacts) -> list[str]:
    """Reduce bias, in the workflow's order."""
    size = f" ({facts.model} has {facts.num_params:,} parameters)" if facts.num_params else ""
    lr = f" (now {facts.learning_rate:g})" if facts.learning_rate else ""
    steps = f" (now {facts.num_steps:,} steps: raise --config.num_steps)" if facts.num_steps else ""
    return [
        f"make the model bigger{size}: more units or layers (--config.model.*)",
        f"reduce regularization (l2={facts.l2:g}, weight_decay={facts.weight_decay:g}, dropout)",
        "choose a different architecture, closer to the state of the art for the data",
        f"tune the learning rate{lr} and other hyperparameters (workflow.tune)",
        f"train longer{steps}",
    ]


def overfit_suggestions(n_train: int, facts: RunFacts, trend: SizeTrend | None) -> list[str]:
    """Reduce variance, in the workflow's order (more data last when the size curve is flat)."""
    best, last = facts.best_val_step, facts.last_step
    if best is not None and last and best < last:
        early = f"stop early: val loss was lowest at step {best:,} of {last:,}"
    else:
        early = "stop early, at the step of the lowest val loss"
    size = f" (now {facts.num_params:,} parameters)" if facts.num_params else ""
    rest = [
        "add normalization layers (BatchNorm, LayerNorm)",
        "add data augmentation",
        f"increase regularization: dropout, l2 (now {facts.l2:g}), "
        f"weight decay (now {facts.weight_decay:g})",
        early,
        f"reduce the model size{size}",
    ]
    more_data = more_data_suggestion(n_train, facts)
    if trend is not None and trend.trend == TREND_FLAT:
        return [
            *rest,
            f"{more_data} (little gain expected: val error is flat in training-set size)",
        ]
    return [more_data, *rest]


def val_overfit_suggestions(d: Decomposition, facts: RunFacts) -> list[str]:
    """Val error understates test error: the val set, not the model, is the problem."""
    bigger = "get a bigger val set"
    if facts.val_fraction is not None:
        bigger += f" (--config.dataset.val_fraction, now {facts.val_fraction:g})"
    return [
        f"the val set ({d.errors.n_val:,} examples) may be too small to select on: its error is "
        f"uncertain by about ±{d.fmt(d.val_overfit.noise_floor)}",
        "it may have been selected on too often (many tuning rounds): keep a fresh one for the end",
        bigger,
    ]


def gap_message(d: Decomposition, gap: Gap) -> str:
    """'val error 27% is 7% above train error 20%', with why a gap within tolerance was called."""
    e = d.errors
    if gap.verdict == "underfit":
        against = f"the goal {d.fmt(d.goal)}"
        if not d.goal_reachable:
            against = (
                f"the irreducible error {d.fmt(d.irreducible)} (the goal {d.fmt(d.goal)} lies "
                "below it and is unreachable)"
            )
        message = f"train error {d.fmt(e.train)} is {d.fmt(gap.value)} above {against}"
    elif gap.verdict == "overfit":
        message = (
            f"val error {d.fmt(e.val)} is {d.fmt(gap.value)} above train error {d.fmt(e.train)}"
        )
    else:
        message = f"test error {d.fmt(e.test)} is {d.fmt(gap.value)} above val error {d.fmt(e.val)}"
    if not gap.exceeds:
        message += (
            f"; within its tolerance {d.fmt(gap.tolerance)}, but the largest share of the "
            f"{d.fmt(d.goal_excess)} by which test error misses the goal"
        )
    return message


def verdict_findings(
    d: Decomposition, facts: RunFacts, trend: SizeTrend | None = None
) -> list[Finding]:
    """The verdict: `goal_met`, or `underfit` / `overfit` / `val_overfit` for each gap called."""
    base = d.base_evidence()
    if d.goal_met:
        return [goal_met_finding(d, base | (trend.evidence() if trend else {}))]
    findings = []
    for gap in d.called_gaps():
        message, evidence = gap_message(d, gap), base | gap.evidence()
        if not gap.exceeds:
            evidence["reason"] = "largest share of the test error above the goal"
        if gap.verdict == "underfit":
            suggestions = underfit_suggestions(facts)
        elif gap.verdict == "overfit":
            suggestions = overfit_suggestions(d.errors.n_train, facts, trend)
        else:
            suggestions = val_overfit_suggestions(d, facts)
        if trend is not None and gap.verdict in ("underfit", "overfit"):
            # The size curve tells "add data" from "regularize / a bigger model".
            evidence |= trend.evidence()
            message += f"; {trend.text()}"
        findings.append(Finding(gap.verdict, "warning", message, evidence, suggestions))
    return findings


def goal_met_finding(d: Decomposition, evidence: dict) -> Finding:
    """The info finding that ends the workflow: nothing left to fix against the goal."""
    evidence = evidence | {"goal_excess": d.goal_excess, "goal_noise_floor": d.goal_floor}
    test, goal = d.fmt(d.errors.test), d.fmt(d.goal)
    if not d.goal_reachable:
        message = (
            f"test error {test} is at the data's irreducible error {d.fmt(d.irreducible)}; the "
            f"goal {goal} lies below it and is unreachable: nothing left to fix"
        )
        suggestions = [
            f"set goal.test_error at or above the irreducible error {d.fmt(d.irreducible)}"
        ]
    elif d.goal_excess <= 0:
        message = f"test error {test} meets the goal {goal}"
        suggestions = []
    else:
        message = (
            f"test error {test} is within the sampling noise (±{d.fmt(d.goal_floor)} on "
            f"{d.errors.n_test:,} test examples) of the goal {goal}"
        )
        suggestions = ["confirm on a larger test set before calling it done"]
    return Finding("goal_met", "info", message, evidence, suggestions)
