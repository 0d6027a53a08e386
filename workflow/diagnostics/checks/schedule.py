"""A learning-rate schedule that stops training (`lr_schedule_zero`).

A schedule is read over the run it is built for (config.num_steps), as the training stages build
it (engine.optimizer.lr_multiplier, the user's own schedule included): the steps at which the
rate is below ZERO_FACTOR of its peak train nothing. The common bug is a warm-up joined to a
decay that was sized to the warm-up alone (`optax.warmup_cosine_decay_schedule` with
`decay_steps` = the warm-up steps, a `join_schedules` boundary off by the warm-up), which leaves
the rate at 0 for the rest of the run; a cosine decay to 0 at the run's end, or a warm-up from 0,
spends only a few percent of the steps there. Nothing trains.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from workflow.diagnostics.checks.plugins import Check
from workflow.diagnostics.findings import Finding
from workflow.engine import optimizer

# A rate below this share of the schedule's peak trains nothing a run would notice.
ZERO_FACTOR = 1e-3
# The share of the run's steps at such a rate that is a bug: a cosine decay to 0 spends the last
# 2% there, a linear warm-up from 0 the first 0.1% of its length; a warning from 10%, an error
# from half the run.
MIN_ZERO_SHARE = 0.1
ERROR_ZERO_SHARE = 0.5


def schedule_factors(opt: Any, num_steps: int) -> np.ndarray | None:
    """The schedule's factor on the learning rate at each of the run's steps (None: constant)."""
    multiplier = optimizer.lr_multiplier(opt, num_steps)
    if multiplier is None:
        return None
    steps = np.arange(num_steps)
    try:  # optax's schedules take an array of steps at once
        factors = np.asarray(multiplier(steps), np.float64)
    except Exception:  # noqa: BLE001 - a user schedule of one step at a time
        factors = None
    if factors is None or factors.shape != steps.shape:
        factors = np.asarray([float(multiplier(int(s))) for s in steps], np.float64)
    return factors


def check_schedule(config: Any) -> list[Finding]:
    """`lr_schedule_zero` when the configured schedule leaves the rate near 0 over a share of
    the run's steps."""
    num_steps = int(config.num_steps)
    factors = schedule_factors(config.optimizer, num_steps)
    if factors is None or not np.isfinite(factors).all() or factors.max() <= 0:
        return []
    stalled = factors < ZERO_FACTOR * factors.max()
    share = float(stalled.mean())
    if share < MIN_ZERO_SHARE:
        return []
    peak_step = int(np.argmax(factors)) + 1
    after_peak = np.flatnonzero(stalled[peak_step:])
    first = peak_step + int(after_peak[0]) + 1 if after_peak.size else int(np.argmax(stalled)) + 1
    name = config.optimizer.schedule.name
    lr = float(config.optimizer.learning_rate)
    return [
        Finding(
            id="lr_schedule_zero",
            severity="error" if share >= ERROR_ZERO_SHARE else "warning",
            message=(
                f"the learning-rate schedule ({name}) keeps the rate below {ZERO_FACTOR:g} of its "
                f"peak ({lr * factors.max():.3g} at step {peak_step:,}) on {share:.0%} of the "
                f"run's {num_steps:,} steps, from step {first:,}: those steps train nothing"
            ),
            evidence={
                "schedule": name,
                "num_steps": num_steps,
                "stalled_share": share,
                "first_stalled_step": first,
                "peak_step": peak_step,
                "peak_learning_rate": lr * float(factors.max()),
            },
            suggestions=[
                "size the decay to the whole run: decay_steps = num_steps (optax's "
                "warmup_cosine_decay_schedule counts the warm-up inside decay_steps), and check "
                "the boundaries of join_schedules",
                "or train at a constant rate first: --config.optimizer.schedule.name=constant",
            ],
        )
    ]


CHECKS = (Check("schedule", order=86, run=lambda setup, batch: check_schedule(setup.config)),)
