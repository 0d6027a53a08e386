"""Early stopping: the best validation metric, its step, and resuming with it."""

import dataclasses
import math
import warnings
from collections.abc import Sequence

import ml_collections

from workflow.engine.state import TrainState, copy_state
from workflow.errors import UsageError


@dataclasses.dataclass
class EarlyStopping:
    """The best value of a validation metric, where it was reached, and evaluations since."""

    metric: str  # "val_accuracy" (higher is better) or "val_loss" (lower is better)
    patience: int
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    waited: int = 0  # evaluations since the last improvement

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "EarlyStopping | None":
        """A tracker for config.early_stopping, or None when it is off (or absent)."""
        es = config.get("early_stopping")
        if es is None or not es.enabled:
            return None
        return cls(es.metric, int(es.patience), float(es.min_delta))

    def update(self, step: int, record: dict) -> bool:
        """Count one evaluation record; True when it is a new best (by more than min_delta)."""
        value = float(record[self.metric])
        sign = -1.0 if self.metric.endswith("loss") else 1.0
        better = math.isfinite(value) and (
            self.best is None or sign * (value - self.best) > self.min_delta
        )
        if better:
            self.best, self.best_step, self.waited = value, step, 0
        else:
            self.waited += 1
        return better

    @property
    def exhausted(self) -> bool:
        """Whether `patience` evaluations in a row have not improved (patience 0: one)."""
        return self.waited > 0 and self.waited >= self.patience

    def replay(self, records: Sequence[dict], until: int) -> None:
        """Count the evaluation records of steps <= `until` (a resumed run's logged history)."""
        for record in records:
            if self.metric in record and record["step"] <= until:
                self.update(int(record["step"]), record)


def checkpoints_to_keep(config: ml_collections.ConfigDict, default: int = 3) -> int:
    """How many checkpoints a run must keep so early stopping's best one is never evicted.

    After the best step, at most `patience` evaluations (patience * eval_every steps) pass before
    the run stops, so the periodic checkpoints saved meanwhile (window // checkpoint_every + 1),
    the stop one and the final one of a run since extended (num_steps raised) bound how many
    are newer than the best.
    """
    es = config.get("early_stopping")
    if es is None or not es.enabled or not config.checkpoint_every:
        return default
    newer = max(es.patience, 1) * config.eval_every // config.checkpoint_every + 3
    return max(default, newer + 1)


def resume_early_stopping(
    config: ml_collections.ConfigDict,
    history: Sequence[dict],
    state: TrainState,
    start_step: int,
    checkpointer,
) -> tuple[EarlyStopping | None, TrainState | None]:
    """Early stopping's tracker as a resumed run left it, and the best state it names.

    The tracker replays the evaluation records of `history` up to `start_step`; (None, None)
    when early stopping is off, (tracker, None) when no evaluation has been seen yet.
    """
    tracker = EarlyStopping.from_config(config)
    if tracker is None:
        return None, None
    tracker.replay(history, start_step)
    return tracker, resume_best(tracker, state, start_step, checkpointer)


def resume_best(
    tracker: EarlyStopping, state: TrainState, start_step: int, checkpointer
) -> TrainState | None:
    """The best state of the replayed history: `state` itself, or its checkpoint."""
    if tracker.best_step is None:
        return None
    if tracker.best_step == start_step:
        return copy_state(state)
    try:
        if checkpointer is None:
            raise UsageError("no checkpointer")
        return checkpointer.restore(tracker.best_step, state)
    except UsageError as e:
        # Only a checkpoint deleted by hand gets here (checkpoints_to_keep keeps the best):
        # tracking restarts from the resumed state rather than report a state it cannot load.
        warnings.warn(
            f"early stopping: the best state (step {tracker.best_step}) cannot be restored "
            f"({e}); tracking restarts at step {start_step}",
            stacklevel=4,  # fit's caller
        )
        tracker.best, tracker.best_step, tracker.waited = None, None, 0
        return None
