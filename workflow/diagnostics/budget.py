"""Time budgets of the debug stage's runs: a slower model trains fewer steps, and says so.

The overfit run and the short run stop at a budget of seconds of training steps
(`debug.overfit_seconds`, `debug.train_seconds`), compilation and the loop form's measurement
excluded: those cost the same whatever the budget, and counting them would cut a small model's
run short on a busy machine. A run's first call compiles, so its steps are charged at the
loop's measured seconds per step (engine.loop_form.LoopChoice) when it has them, else at the
call's whole time (an over-estimate, which only cuts sooner); every later call at its own time.
No call starts whose steps the measured time says would end past the budget.

A run the budget cut short is reported by a `time_budget_cut` finding that says what the cut
means for the verdict: curve findings read fewer steps; an overfit run stopped while its loss
was still falling says nothing about whether the model can memorize the batch.
"""

import dataclasses
import math

from workflow.diagnostics.curves import LR_GRID_LOW
from workflow.diagnostics.findings import Finding

# Warnings that a slow start explains: on a short run the budget cut, a healthy model at a
# moderate rate (an LSTM at Adam 3e-4) is still early in its descent, and a learning rate ten
# times higher does win over so few steps; they stand as info, the cut named.
SLOW_START_WARNINGS = ("lr_too_low", "loss_plateau")

# An overfit run the budget stopped with its batch loss below this fraction of its start was
# still learning: not memorizing the batch within the budget is then no evidence that the model
# cannot (the same level at which the stage tries a 10x learning rate).
FALLING_LOSS_FRACTION = 0.5


@dataclasses.dataclass
class StepBudget:
    """Seconds of training steps a run may spend (None: no limit), and what it has spent."""

    seconds: float | None
    spent: float = 0.0
    seconds_per_step: float | None = None  # the latest estimate; None before the first call
    calls: int = 0

    def charge(self, steps: int, wall_seconds: float, choice=None) -> None:
        """Count one call of `steps` steps that took `wall_seconds` (its first compiled: charged
        at the loop's measured time per step when `choice`, a LoopChoice, has one)."""
        per_step = wall_seconds / max(steps, 1)
        if self.calls == 0:
            per_step = measured_seconds_per_step(choice) or per_step
        self.calls += 1
        self.spent += per_step * steps
        self.seconds_per_step = per_step

    def fits(self, steps: int) -> bool:
        """Whether `steps` more steps fit in what is left (always before the first call)."""
        if self.seconds is None or self.seconds_per_step is None:
            return True
        return self.spent + steps * self.seconds_per_step <= self.seconds

    def steps_left(self) -> int | float:
        """How many more steps fit in what is left (inf without a limit or an estimate)."""
        if self.seconds is None or not self.seconds_per_step:
            return math.inf
        return max(0, math.floor((self.seconds - self.spent) / self.seconds_per_step))


def measured_seconds_per_step(choice) -> float | None:
    """The seconds per step a loop measured for the form it chose (None: not measured)."""
    if choice is None:
        return None
    times = choice if isinstance(choice, dict) else dataclasses.asdict(choice)
    # The chosen form's time, else the other's: a slow step moved to the step form after its
    # first call ran under the scan was timed there only (loop_form.scan_unraced).
    value = times.get(f"{times.get('form')}_seconds_per_step") or times.get("scan_seconds_per_step")
    return float(value) if value else None


@dataclasses.dataclass(frozen=True)
class BudgetCut:
    """One run the budget stopped: which, where, and at what measured speed."""

    run: str  # "overfit" or "short run"
    config_key: str  # the budget's config key, e.g. "debug.train_seconds"
    budget_seconds: float
    steps: int  # steps run
    planned_steps: int  # the step budget it had (debug.overfit_steps, debug.train_steps)
    seconds_per_step: float
    consequence: str  # what the cut means for the verdict, one clause

    def to_json(self) -> dict:
        """The evidence form."""
        return {
            "run": self.run,
            "config_key": self.config_key,
            "budget_seconds": self.budget_seconds,
            "steps": self.steps,
            "planned_steps": self.planned_steps,
            "seconds_per_step": float(f"{self.seconds_per_step:.4g}"),
        }

    def describe(self) -> str:
        """e.g. 'the short run stopped at 90 of 300 steps at its 5 s budget (55 ms/step): ...'."""
        return (
            f"the {self.run} stopped at {self.steps} of {self.planned_steps} steps at its "
            f"{self.budget_seconds:g} s budget ({self.config_key}; "
            f"{1e3 * self.seconds_per_step:.3g} ms/step): {self.consequence}"
        )


def overfit_cut(result, config) -> BudgetCut | None:
    """The overfit run's cut (an `OverfitResult`), or None when the budget did not stop it."""
    if not result.budget_cut:
        return None
    falling = still_learning(result)
    consequence = (
        f"its batch loss was still falling ({result.initial_loss:.3g} -> "
        f"{result.final_loss:.3g}), so not memorizing the batch yet says nothing against the model"
        if falling
        else f"its batch loss did not fall below {FALLING_LOSS_FRACTION:.0%} of its start in "
        "those steps"
    )
    return BudgetCut(
        run="overfit run",
        config_key="debug.overfit_seconds",
        budget_seconds=float(config.debug.overfit_seconds),
        steps=int(result.steps),
        planned_steps=int(config.debug.overfit_steps),
        seconds_per_step=float(result.seconds_per_step or 0.0),
        consequence=consequence,
    )


def still_learning(result) -> bool:
    """Whether an overfit run's batch loss fell below FALLING_LOSS_FRACTION of its start."""
    return bool(result.final_loss < FALLING_LOSS_FRACTION * result.initial_loss)


def short_run_cut(steps: int, config, seconds_per_step: float) -> BudgetCut | None:
    """The short run's cut when it ran fewer than debug.train_steps steps, else None."""
    if steps >= config.debug.train_steps:
        return None
    return BudgetCut(
        run="short run",
        config_key="debug.train_seconds",
        budget_seconds=float(config.debug.train_seconds),
        steps=int(steps),
        planned_steps=int(config.debug.train_steps),
        seconds_per_step=float(seconds_per_step),
        consequence=(
            "the loss curve and the held-out checks read this shorter run, so its slow-start "
            "warnings stand as info (and the counterfactual trials run as many steps)"
        ),
    )


def judged_on_cut_run(
    findings: list[Finding], cut: BudgetCut | None, learning_rate: float
) -> list[Finding]:
    """`findings` with each slow-start warning (SLOW_START_WARNINGS) lowered to info when the
    budget cut the short run (`cut`); an `lr_too_low` on a rate below the usual range is not
    about the run's length and stays. Errors stay."""
    if cut is None:
        return findings
    note = (
        f"; judged on {cut.steps} of {cut.planned_steps} steps ({cut.config_key} cut the run): "
        "a slow start over so few steps is no evidence against the setup"
    )
    out = []
    for f in findings:
        tiny_rate = f.id == "lr_too_low" and learning_rate < LR_GRID_LOW
        if f.id in SLOW_START_WARNINGS and f.severity == "warning" and not tiny_rate:
            f = dataclasses.replace(f, severity="info", message=f.message + note)
        out.append(f)
    return out


def budget_cut_finding(cuts: list[BudgetCut]) -> list[Finding]:
    """`time_budget_cut` (info) naming every run the budget stopped, or [] when none was."""
    if not cuts:
        return []
    return [
        Finding(
            id="time_budget_cut",
            severity="info",
            message="; ".join(cut.describe() for cut in cuts),
            evidence={"runs": [cut.to_json() for cut in cuts]},
            suggestions=[
                f"raise {cut.config_key} (now {cut.budget_seconds:g} s) to run all "
                f"{cut.planned_steps} steps, about {cut.planned_steps * cut.seconds_per_step:.0f} "
                "s at this speed"
                for cut in cuts
            ],
        )
    ]
