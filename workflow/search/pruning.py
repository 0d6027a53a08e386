"""Rung pruning: successive halving over the lanes of batched trial programs.

A round's trials are cut at rungs: trial lengths r_0 < r_1 < ... < r_last (the round's trial
length), each `factor` times the one before. Every trial of a group trains to r_0; the best
1/factor of them by val loss there (`survivors`), and any other whose val score (the search's
metric) is clearly better than one of theirs, train on to r_1, the others are cut (pruned); and so
on to r_last. At each rung the trials still running (best first) fill the lanes of
programs of the search's width, one batch after another, so a lane freed by a cut is taken by
the next trial; on an accelerator the compiled program keeps its width and shape, on the CPU
(where every lane costs its compute) a program is as wide as its trials
(`trials.program_lanes`). A trial continues from its own state, kept between rungs.

Every trial sees the batches of its own step count (the same as without pruning), so a trial
that is never cut ends with the numbers of the unpruned search (to float32 rounding where its
CPU program is narrower than the unpruned one's), and the cuts are a pure
function of the trials' val numbers: a group trained again after a kill reaches the same cuts.
"""

import math
from collections.abc import Callable, Sequence


def rung_steps(total: int, num_rungs: int, factor: int, unit: int) -> tuple[int, ...]:
    """The rungs of trials `total` steps long: total / factor^k for k = num_rungs - 1, ..., 1,
    each rounded to whole host calls of `unit` steps (at least one: a cut inside a call would
    compile a shorter one), then `total` itself; (total,) with one rung."""
    rungs = {unit * max(1, round(total / factor**k / unit)) for k in range(num_rungs - 1, 0, -1)}
    return tuple(sorted(r for r in rungs if r < total)) + (total,)


def kept_by_loss(num_trials: int, factor: int) -> int:
    """How many of a rung's `num_trials` trials train on for their val loss: 1/factor, at least
    one."""
    return max(1, num_trials // factor)


def survivors(
    val_losses: Sequence[float],
    factor: int,
    clearly_better: Callable[[int, int], bool] | None = None,
) -> list[int]:
    """The indices (ascending) of the trials that train on past a rung: the best
    max(1, n // factor) of the n by val loss, ties to the lower index; and with
    `clearly_better(i, j)` (trial i's val score beats trial j's beyond the val set's noise),
    every other trial clearly better than one of those: val loss ranks the trials, but it
    cuts none that the search's own metric clearly prefers. Never a non-finite one."""
    finite = [i for i, v in enumerate(val_losses) if math.isfinite(v)]
    ranked = sorted(finite, key=lambda i: (val_losses[i], i))
    by_loss = ranked[: kept_by_loss(len(val_losses), factor)]
    if clearly_better is None:
        return sorted(by_loss)
    rest = ranked[len(by_loss) :]
    return sorted(by_loss + [i for i in rest if any(clearly_better(i, j) for j in by_loss)])


def halving_cost(num_trials: int, rungs: Sequence[int], factor: int) -> int:
    """Training steps of a group of `num_trials` trials (summed over trials) cut at `rungs`."""
    cost, previous, alive = 0, 0, num_trials
    for rung in rungs:
        cost += alive * (rung - previous)
        previous, alive = rung, kept_by_loss(alive, factor)
    return cost
