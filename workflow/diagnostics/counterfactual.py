"""Counterfactual confirmation: a finding that blames a knob is tried with the knob changed.

A finding that blames the learning rate (`lr_too_low`, `lr_too_high`) names a change that should
help. Before it stands as a warning, the change is tried: a few short trials on the real training
data, the configured learning rate and the suggested ones, trained side by side as one vmapped
program (workflow/engine/trials.py) from the same initialization on the same batches. The finding
is confirmed when a changed rate reaches the configured rate's final training loss at least
`MIN_SPEEDUP` times sooner and ends clearly below it; it then states the measured result
("with lr 0.003 (x10) the loss reaches 1.52 in 40 of 300 steps: 7.5x sooner"). Unconfirmed, it is
lowered to `info` and says what the trials measured instead. Either way the trials are recorded in
its evidence under "counterfactual".
"""

import dataclasses
import math

import numpy as np

from workflow.diagnostics.findings import Finding
from workflow.engine.trials import TrialHparams, TrialRunner

# The findings this module confirms, and which way each moves the learning rate.
LR_FINDINGS = {"lr_too_low": "raise", "lr_too_high": "lower"}
# The changed rates tried, as factors of the configured one (decades, the notes' coarse grid).
RAISE_FACTORS = (10.0, 100.0)
LOWER_FACTORS = (0.1, 0.01)
# A rate below this is also tried at the workflow's default Adam rate: ten or a hundred times a
# rate far below the usual range is still far below it, and would refute nothing.
DEFAULT_LEARNING_RATE = 3e-4
# Confirmed: the changed rate reaches the configured rate's final loss 4x sooner (a difference a
# tuned run would not give up), and ends at least 10% below it (not within mini-batch noise).
MIN_SPEEDUP = 4.0
MIN_FINAL_GAIN = 0.1
# The trial curves are cut into this many windows: each window's mean loss averages out
# mini-batch noise while the step at which a level is reached stays within 1/30 of the run.
CURVE_WINDOWS = 30


@dataclasses.dataclass(frozen=True)
class LrTrial:
    """One learning rate's short trial: its window curve and verdict against the configured one."""

    learning_rate: float
    factor: float
    final_loss: float  # mean training loss of the last window (inf when it diverged)
    diverged: bool
    steps_to_base_final: int | None  # first window end at or below the configured rate's final

    def to_json(self) -> dict:
        """The evidence form."""
        return {
            "learning_rate": _r(self.learning_rate),
            "factor": _r(self.factor),
            "final_loss": _r(self.final_loss),
            "diverged": self.diverged,
            "steps_to_base_final": self.steps_to_base_final,
        }


def _r(value: float) -> float | None:
    """A JSON-friendly float with 4 significant digits (None for NaN/inf)."""
    value = float(value)
    return float(f"{value:.4g}") if math.isfinite(value) else None


def candidate_rates(learning_rate: float, direction: str) -> list[float]:
    """The learning rates a `direction` ("raise" or "lower") finding is tried at."""
    factors = RAISE_FACTORS if direction == "raise" else LOWER_FACTORS
    rates = [learning_rate * f for f in factors]
    if direction == "raise" and rates[-1] < DEFAULT_LEARNING_RATE:
        rates.append(DEFAULT_LEARNING_RATE)
    return rates


def run_lr_trials(setup, rates: list[float], steps: int) -> tuple[list[LrTrial], int]:
    """Train the configured rate and `rates` for `steps` steps side by side; (trials, steps).

    The first trial is the configured rate: every verdict compares with it."""
    config = setup.config.copy_and_resolve_references()
    config.log_every = max(1, steps // CURVE_WINDOWS)
    base_lr = float(config.optimizer.learning_rate)
    all_rates = [base_lr, *rates]
    runner = TrialRunner(
        config, setup.dataset.input_shape, setup.dataset.num_classes, task_kind=setup.dataset.task
    )
    hparams = TrialHparams(
        learning_rate=all_rates,
        l2=[float(config.l2)] * len(all_rates),
        seed=[int(config.seed)] * len(all_rates),
    )
    _, result = runner.run(hparams, setup.dataset, steps)
    curves = np.where(np.isfinite(result.train_loss_curve), result.train_loss_curve, np.inf)
    diverged = result.diverged_at >= 0
    base_final = float(curves[0, -1]) if not diverged[0] else math.inf
    trials = []
    for i, lr in enumerate(all_rates):
        final = math.inf if diverged[i] else float(curves[i, -1])
        reached = np.flatnonzero(curves[i] <= base_final)
        trials.append(
            LrTrial(
                learning_rate=lr,
                factor=lr / base_lr,
                final_loss=final,
                diverged=bool(diverged[i]),
                steps_to_base_final=int(result.curve_steps[reached[0]]) if reached.size else None,
            )
        )
    return trials, int(result.steps)


def best_change(trials: list[LrTrial], steps: int) -> tuple[LrTrial | None, float]:
    """The changed rate that helps most (lowest final loss) and its speedup (0: it does not)."""
    base, changed = trials[0], [t for t in trials[1:] if not t.diverged]
    if not changed:
        return None, 0.0
    best = min(changed, key=lambda t: t.final_loss)
    if best.steps_to_base_final is None:
        return best, 0.0
    return best, steps / best.steps_to_base_final if math.isfinite(base.final_loss) else math.inf


def confirmed(trials: list[LrTrial], steps: int) -> bool:
    """Whether a changed rate reaches the configured rate's final loss MIN_SPEEDUP times sooner
    and ends MIN_FINAL_GAIN below it (or the configured rate diverged and the change did not)."""
    base = trials[0]
    best, speedup = best_change(trials, steps)
    if best is None:
        return False
    if not math.isfinite(base.final_loss):
        return True
    return speedup >= MIN_SPEEDUP and best.final_loss <= (1 - MIN_FINAL_GAIN) * base.final_loss


def _outcome(trials: list[LrTrial], steps: int) -> str:
    """What the trials measured, as one clause for the finding's message."""
    base = trials[0]
    best, speedup = best_change(trials, steps)
    if best is None:
        rates = ", ".join(f"{t.learning_rate:g}" for t in trials[1:])
        return f"with lr {rates} the loss diverges within {steps} steps"
    at = f"with lr {best.learning_rate:g} (x{best.factor:g})"
    if not math.isfinite(base.final_loss):
        return (
            f"{at} the loss stays finite and ends at {best.final_loss:.3g} in {steps} steps, "
            f"where lr {base.learning_rate:g} diverges"
        )
    if best.steps_to_base_final is None:
        return (
            f"{at} the loss ends at {best.final_loss:.3g} in {steps} steps, no lower than "
            f"{base.final_loss:.3g} at lr {base.learning_rate:g}"
        )
    return (
        f"{at} the loss reaches {base.final_loss:.3g} (lr {base.learning_rate:g}'s level after "
        f"{steps} steps) in {best.steps_to_base_final} steps, {speedup:.1f}x sooner, and ends "
        f"at {best.final_loss:.3g}"
    )


def judged(finding: Finding, trials: list[LrTrial], steps: int) -> Finding:
    """`finding` with the trials' verdict: kept and stated when confirmed, else lowered to info."""
    ok = confirmed(trials, steps)
    outcome = _outcome(trials, steps)
    evidence = {
        **finding.evidence,
        "counterfactual": {
            "confirmed": ok,
            "steps": steps,
            "min_speedup": MIN_SPEEDUP,
            "speedup": _r(best_change(trials, steps)[1]),
            "trials": [t.to_json() for t in trials],
        },
    }
    if ok:
        best, _ = best_change(trials, steps)
        measured = (
            f"use lr {best.learning_rate:g}, the trials' best "
            f"(--config.optimizer.learning_rate={best.learning_rate:g})"
        )
        return dataclasses.replace(
            finding,
            message=f"{finding.message}; confirmed: {outcome}",
            evidence=evidence,
            suggestions=[measured, *finding.suggestions],
        )
    return dataclasses.replace(
        finding,
        severity="info",
        message=f"{finding.message}; not confirmed: {outcome}",
        evidence=evidence,
    )


def confirm_lr_findings(setup, findings: list[Finding], steps: int) -> list[Finding]:
    """`findings` with every warning/error lr_too_low/lr_too_high tried by counterfactual trials
    (one program for all of them); the others unchanged."""
    blamed = [
        i
        for i, f in enumerate(findings)
        if f.id in LR_FINDINGS and f.severity in ("warning", "error")
    ]
    if not blamed or steps <= 0:
        return findings
    base_lr = float(setup.config.optimizer.learning_rate)
    directions = sorted({LR_FINDINGS[findings[i].id] for i in blamed})
    rates = {d: candidate_rates(base_lr, d) for d in directions}
    trials, run_steps = run_lr_trials(setup, [r for d in directions for r in rates[d]], steps)
    by_direction, start = {}, 1
    for d in directions:
        count = len(rates[d])
        by_direction[d] = [trials[0], *trials[start : start + count]]
        start += count
    out = list(findings)
    for i in blamed:
        out[i] = judged(findings[i], by_direction[LR_FINDINGS[findings[i].id]], run_steps)
    return out
