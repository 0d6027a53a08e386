"""Coarse-to-fine random search over config keys, recorded by Optuna.

The searched keys are config.search.space (workflow/search/space.py): the learning rate and
the L2 weight by default. Keys that change the compiled program (a width, the batch size...)
split a round's trials into groups, one per combination of their values; the round's slots are
ordered by group (a stable sort of its points), and each program trains trials of one group.

Each round is one Optuna study (`<name>/round-<r>`) in one storage (SQLite in the run directory
by default, any SQLAlchemy URL for workers on several machines). A round has `num_trials` slots;
slot s of round r has a fixed point (point s of the round's quasi-random sequence, mapped onto
its ranges) and a fixed seed (`trial_seed`), and its trial is created with both in one write,
so no trial ever mixes two points. Slots are trained in fixed batches (slots [kP, (k+1)P) for P
trials per program), each slot at its own lane of a program of the batch's width, so the numbers
do not depend on which worker trained what, or how often a batch was interrupted.

Rung pruning (config.search.prune_rungs > 1, workflow/search/pruning.py): a round's slots are
claimed in fixed groups (search.group_trials, the whole round by default) instead, and each
group is halved at the round's rungs in programs of P lanes; each trial's val loss at each rung
is an Optuna intermediate value, a cut trial ends PRUNED. A group interrupted midway is trained
again whole (its finished trials are not recorded twice), so it reaches the same cuts.

Stopping at the goal: with a `goal_val_error` (tune sets it from config.goal when
config.search.stop_at_goal is on), the search ends as soon as a trial has a val error at or
below it, at its end or at any rung before (`Search.goal_at`: it then ends there, complete, and
its config at that length is the run that met the goal; only where the learning-rate schedule
does not depend on the run's length up to the rung), skipping the round's other slots and the
later rounds (`Search.stopped` says which trial and what was skipped). The decision is a
function of the finished slots alone: the lowest such slot, checked before any batch is
claimed, so a resumed search stops where the uninterrupted one did.

Resuming: a trial that was running when its worker died is failed, and its slot gets a new trial
with the same point and seed; a search killed at any point and started again therefore ends with
the trial table of the uninterrupted search, and runs no finished trial twice. A dead worker on
this host is recognised at once by its process id; one on another host by its heartbeat going
stale. Workers sharing a study claim trials atomically (a waiting trial becomes running for one
of them only); a slot given two trials by a race is owned by the older one.
"""

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import functools
import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np

from workflow import files, killpoints
from workflow.engine import optimizer
from workflow.engine import trials as trials_lib
from workflow.engine.progress import Progress
from workflow.errors import UsageError
from workflow.search import space as space_lib

SAMPLERS = ("halton", "sobol", "random")
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize"}
# How many standard errors of a val error make a difference in it clear. A trial that ends worse
# than at an earlier rung by more is taken at that rung (stopped_at_best_rung): a late collapse of
# a high learning rate is not the search's pick, and a near tie keeps the trial's whole length.
# A rung cuts no trial whose val score beats a kept one's by more (Search.clearly_better): the
# rung's proxy, val loss, does not overrule clear evidence on the metric the search picks by.
NOISE_Z = 2.0
PARAMS = ("learning_rate", "l2")  # the default space's hyperparameters, in sampling order


@dataclasses.dataclass(frozen=True)
class Round:
    """One round of the search: its space, size and trial length. The default space is the
    learning rate and the L2 weight over `lr_range` and `reg_range` (log-uniform); a round of
    another space (config.search.space) holds it in `space`, each dimension with this round's
    range."""

    index: int
    lr_range: tuple[float, float]
    reg_range: tuple[float, float]
    num_trials: int
    epochs: float
    steps: int  # a trial's length (with pruning: the last rung's)
    rungs: tuple[int, ...] = ()  # the trial lengths at which trials are cut (pruning.rung_steps)
    space: tuple[space_lib.Dimension, ...] = ()  # (): the default space

    @property
    def dimensions(self) -> tuple[space_lib.Dimension, ...]:
        """The searched keys with this round's ranges, in sampling-dimension order."""
        return self.space or space_lib.default_space(self.lr_range, self.reg_range)

    def to_json(self) -> dict[str, Any]:
        """The summary.json form (`space` only for a space other than the default)."""
        stored = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        stored["lr_range"], stored["reg_range"] = list(self.lr_range), list(self.reg_range)
        stored["rungs"] = list(self.rungs)
        stored["space"] = [d.to_json() for d in self.space]
        if not self.space:
            del stored["space"]
        return stored

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> "Round":
        """A round back from its to_json form."""
        stored = dict(stored)
        stored["lr_range"], stored["reg_range"] = (
            tuple(stored["lr_range"]),
            tuple(stored["reg_range"]),
        )
        stored["rungs"] = tuple(stored.get("rungs", ()))
        stored["space"] = tuple(space_lib.Dimension.from_json(d) for d in stored.get("space", ()))
        return cls(**stored)


def check_range(name: str, value: Any) -> tuple[float, float]:
    """A (low, high) range of positive numbers with low < high, or a one-line UsageError."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise UsageError(f"invalid value {name}={value!r}: must be a pair (low, high)") from None
    if not (0 < low < high and math.isfinite(high)):
        problem = "empty or inverted" if low >= high else "not positive and finite"
        raise UsageError(
            f"invalid value {name}=({low:g}, {high:g}): the range is {problem}; it must satisfy "
            "0 < low < high (sampled log-uniformly)"
        )
    return low, high


def validate_search_config(search: ml_collections.ConfigDict) -> None:
    """Reject search settings that cannot run, naming the key and what is valid."""
    check_range("search.lr_range", search.lr_range)
    check_range("search.reg_range", search.reg_range)
    if search.sampler not in SAMPLERS:
        raise UsageError(
            f"invalid value search.sampler={search.sampler!r}: one of {', '.join(SAMPLERS)}"
        )
    if search.metric not in METRICS:
        raise UsageError(
            f"invalid value search.metric={search.metric!r}: one of {', '.join(METRICS)}"
        )
    for key in ("num_trials", "refine_trials", "trials_per_program"):
        if not (isinstance(search[key], int) and search[key] > 0):
            raise UsageError(f"invalid value search.{key}={search[key]!r}: a positive integer")
    if not (isinstance(search.rounds, int) and search.rounds >= 1):
        raise UsageError(f"invalid value search.rounds={search.rounds!r}: an integer >= 1")
    if not search.epochs > 0 or not search.refine_epochs_factor >= 1:
        raise UsageError(
            f"invalid value search.epochs={search.epochs!r} / search.refine_epochs_factor="
            f"{search.refine_epochs_factor!r}: epochs > 0 and a factor >= 1"
        )
    if not 0 < search.top_fraction <= 1:
        raise UsageError(
            f"invalid value search.top_fraction={search.top_fraction!r}: must lie in (0, 1]"
        )
    if not (isinstance(search.prune_rungs, int) and search.prune_rungs >= 1):
        raise UsageError(
            f"invalid value search.prune_rungs={search.prune_rungs!r}: an integer >= 1 "
            "(1: no pruning)"
        )
    if not (isinstance(search.prune_factor, int) and search.prune_factor >= 2):
        raise UsageError(
            f"invalid value search.prune_factor={search.prune_factor!r}: an integer >= 2"
        )
    group = search.group_trials
    if group is not None and not (isinstance(group, int) and group > 0):
        raise UsageError(
            f"invalid value search.group_trials={group!r}: a positive integer, or None for "
            "the whole round"
        )
    z = search.get("goal_noise_z", 1.0)
    if not (isinstance(z, int | float) and math.isfinite(z) and z >= 0):
        raise UsageError(f"invalid value search.goal_noise_z={z!r}: a finite number >= 0")


def goal_val_error(goal_error: float, num_val: int, noise_z: float) -> float:
    """The val error a trial must reach for the search to stop at the goal: the goal less
    `noise_z` standard errors of an error rate at the goal measured on `num_val` examples."""
    noise = math.sqrt(goal_error * (1 - goal_error) / max(num_val, 1))
    return goal_error - noise_z * noise


def meets_goal(val_accuracy: float, goal_error: float | None) -> bool:
    """Whether a val accuracy's error is at or below `goal_error` (never without a goal)."""
    return goal_error is not None and 1 - val_accuracy <= goal_error


def goal_trial(records: Sequence[dict], goal_error: float | None) -> dict | None:
    """The finished trial (lowest slot, never a pruned one) whose val error is at or below
    `goal_error`; None when none is, or without a goal."""
    for record in sorted(records, key=lambda r: (r["round"], r["slot"])):
        if record.get("pruned_at") is None and meets_goal(record["val_accuracy"], goal_error):
            return record
    return None


def steps_for(epochs: float, num_train: int, batch_size: int) -> int:
    """Training steps of `epochs` passes over the training split (at least one step)."""
    return max(1, round(epochs * num_train / batch_size))


def first_round(
    search: ml_collections.ConfigDict,
    num_train: int,
    batch_size: int,
    lr_band: tuple[float, float] | None = None,
    full_steps: int | None = None,
    space: Sequence[space_lib.Dimension] = (),
) -> Round:
    """The coarse round: the configured ranges (search.space's, or the default space's), a
    log-uniform learning rate's widened to the range test's band; its trials never longer
    than `full_steps` (the config's run)."""
    lr_low, lr_high = check_range("search.lr_range", search.lr_range)
    banded = lr_band is not None and all(math.isfinite(v) and v > 0 for v in lr_band)
    if banded:
        lr_low, lr_high = min(lr_low, lr_band[0]), max(lr_high, lr_band[1])
        space = [
            dataclasses.replace(d, low=min(d.low, lr_band[0]), high=max(d.high, lr_band[1]))
            if d.key == "optimizer.learning_rate" and d.scale == "log"
            else d
            for d in space
        ]
    epochs, steps = float(search.epochs), steps_for(search.epochs, num_train, batch_size)
    if full_steps is not None and steps > full_steps:
        epochs, steps = full_steps * batch_size / num_train, full_steps
    return Round(
        index=0,
        lr_range=(lr_low, lr_high),
        reg_range=check_range("search.reg_range", search.reg_range),
        num_trials=search.num_trials,
        epochs=epochs,
        steps=steps,
        space=tuple(space),
    )


def refined_range(values: list[float], previous: tuple[float, float]) -> tuple[float, float]:
    """The span of the best trials' values in log space, widened by a quarter of the previous
    range's width on each side (at least 0.1 decade): narrow, but room to move off an edge."""
    logs = np.log10(values)
    margin = max(0.1, 0.25 * (math.log10(previous[1]) - math.log10(previous[0])) / 2)
    return float(10 ** (logs.min() - margin)), float(10 ** (logs.max() + margin))


def best_records(records: list[dict], metric: str, fraction: float) -> list[dict]:
    """The top `fraction` (at least two) of the trials whose loss went down, by the metric;
    of all finished trials when none improved. A trial that met the goal ranks first (the
    search stopped for it); with pruning, a trial that trained longer ranks above every trial
    cut before it (it beat them at each rung they shared)."""
    sign = -1.0 if METRICS[metric] == "maximize" else 1.0
    finite = [r for r in records if math.isfinite(r[metric])]
    candidates = [r for r in finite if r["improved"] or r.get("goal_at") is not None] or finite

    def rank(r: dict) -> tuple:
        # Ties (common on a small val split) go to the lower val loss.
        return (r.get("goal_at") is None, -r.get("steps", 0), sign * r[metric], r["val_loss"])

    ranked = sorted(candidates, key=rank)
    return ranked[: max(2, math.ceil(fraction * len(ranked)))]


def next_round(
    previous: Round,
    records: list[dict],
    search: ml_collections.ConfigDict,
    num_train: int,
    batch_size: int,
    full_steps: int | None = None,
) -> Round:
    """A refined round: ranges narrowed around the previous round's best trials, longer runs
    (the last round, with `full_steps`, as long as the config's full run)."""
    top = best_records(records, search.metric, search.top_fraction)
    space = previous.space
    if not top:  # every trial diverged: keep the ranges and only train longer
        lr_range, reg_range = previous.lr_range, previous.reg_range
    elif space:
        lr_range, reg_range = previous.lr_range, previous.reg_range
        space = tuple(space_lib.refined(d, [r[d.name] for r in top]) for d in space)
    else:
        lr_range = refined_range([r["learning_rate"] for r in top], previous.lr_range)
        reg_range = refined_range([r["l2"] for r in top], previous.reg_range)
    epochs = previous.epochs * search.refine_epochs_factor
    steps = steps_for(epochs, num_train, batch_size)
    if full_steps is not None and (previous.index + 2 == search.rounds or steps > full_steps):
        # The last round trains as long as the real run: its best is then chosen for the length
        # it will be used at (short runs favour larger learning rates and less regularization).
        steps, epochs = full_steps, full_steps * batch_size / num_train
    return Round(
        index=previous.index + 1,
        lr_range=lr_range,
        reg_range=reg_range,
        num_trials=search.refine_trials,
        epochs=epochs,
        steps=steps,
        space=space,
    )


def _sqlite_file(url: str) -> str | None:
    """The database file of a SQLite URL (None for other databases and in-memory ones)."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database if url.startswith("sqlite") else None
    return os.path.abspath(database) if database not in (None, "", ":memory:") else None


@contextlib.contextmanager
def full_disk_as_oserror(url: str) -> Iterator[None]:
    """Turn SQLite's "database or disk is full" (raised by SQLAlchemy or Optuna, inside any
    write of the study) into OSError(ENOSPC) naming the file: a full disk, which the stages
    report in one line like any other, not a broken storage URL."""
    try:
        yield
    except Exception as e:
        chain, error = [], e
        while error is not None and len(chain) < 8:
            chain.append(error)
            error = error.__cause__ or error.__context__
        if any("database or disk is full" in str(x) for x in chain):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), _sqlite_file(url)) from None
        raise


def open_storage(url: str, heartbeat_seconds: int):
    """The Optuna RDB storage at `url`; an unreachable or invalid URL is bad input."""
    with full_disk_as_oserror(url):
        return _open_storage(url, heartbeat_seconds)


def _open_storage(url: str, heartbeat_seconds: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and stale-trial handling are "experimental" in Optuna; we rely on them.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with _sqlite_lock(url):
                # No stale-trial callback: a failed trial's slot gets its new trial from
                # Search._fill_slots, with the slot's own point and seed.
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=3 * heartbeat_seconds,
                )
        except Exception as e:  # noqa: BLE001 - any failure to reach the database is bad input
            if "database or disk is full" in str(e):
                raise  # not the URL's fault: see full_disk_as_oserror
            # Two workers creating a new database server's schema at once race on it: again.
            text = f"{type(e).__name__} {e}"
            if any(word in text for word in ("IntegrityError", "locked", "already exists")):
                if attempt < 4:
                    time.sleep(0.5 * (attempt + 1))
                    continue
            reason = " ".join(str(e).split())[:200]
            raise UsageError(
                f"cannot open the study storage search.storage={url!r} ({type(e).__name__}: "
                f"{reason}); use sqlite:///path/study.db or a reachable SQLAlchemy URL such as "
                "postgresql://user:password@host/database"
            ) from None


@contextlib.contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock on a SQLite study's folder while its tables are created and
    checked, or a round's missing trials created: two workers opening one fresh database at
    once would otherwise both create its tables (one fails: "table trials already exists"), and
    two filling one round would give its slots two trials each. Other databases serialize the
    former themselves (open_storage retries the loser); a slot given two trials keeps the older."""
    database = _sqlite_file(url)
    folder = os.path.dirname(database) if database is not None else None
    if folder is None or not os.path.isdir(folder):
        yield  # nothing to share, or SQLite will say the folder is missing
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def unit_points(
    sampler: str, seed: int, round_index: int, count: int, dims: int = len(PARAMS)
) -> np.ndarray:
    """The unit-cube points of a round's `count` slots, shape (count, dims): row s is slot s's,
    the same in every worker and after any restart. Halton and Sobol: the first points of the
    scrambled sequence seeded by (seed, round); random: a generator seeded by
    (seed, round, slot)."""
    if sampler == "random":
        rows = [np.random.default_rng([seed, round_index, s]).random(dims) for s in range(count)]
        return np.reshape(rows, (count, dims))
    from scipy.stats import qmc

    engine = (qmc.Halton if sampler == "halton" else qmc.Sobol)(
        dims, scramble=True, seed=seed * 1000 + round_index
    )
    # Sobol is balanced at powers of two: draw one and keep the first `count` points.
    return engine.random(max(64, 2 ** math.ceil(math.log2(max(count, 1)))))[:count]


def log_uniform(u: float, value_range: tuple[float, float]) -> float:
    """The value at fraction `u` of a range in log space (u in [0, 1))."""
    low, high = value_range
    value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    return float(min(high, max(low, value)))


def round_points(sampler: str, seed: int, round_: Round) -> np.ndarray:
    """The points of a round's slots: `unit_points`, stably sorted by group (space.group_order)
    so that a batch of consecutive slots trains as few programs as it can; unsorted when every
    searched key is per-trial (the default space)."""
    dims = round_.dimensions
    points = unit_points(sampler, seed, round_.index, round_.num_trials, len(dims))
    if all(d.per_trial for d in dims):
        return points
    order = sorted(
        range(len(points)),
        key=lambda s: space_lib.group_order(dims, slot_params(round_, points[s])),
    )
    return points[order]


def slot_params(round_: Round, point: Sequence[float]) -> dict[str, Any]:
    """A slot's searched values (by dimension name): its unit point mapped onto the round's
    ranges."""
    return {d.name: d.value(point[i]) for i, d in enumerate(round_.dimensions)}


def decoded_params(round_: Round, stored: dict[str, Any]) -> dict[str, Any]:
    """A trial's searched values back from its Optuna params."""
    return {d.name: d.decode(stored[d.name]) for d in round_.dimensions}


def trial_values(config: ml_collections.ConfigDict, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values as its record holds them: its learning rate and L2 weight (searched or
    the config's), then the other searched keys."""
    return {
        "learning_rate": float(config.optimizer.learning_rate),
        "l2": float(config.l2),
        **params,
    }


def trial_seed(seed: int, round_index: int, slot: int) -> int:
    """The initialization seed of slot `slot` of round `round_index` (config.seed's search)."""
    return seed + 7919 * round_index + slot


def slot_trial(round_: Round, slot: int, point: Sequence[float], seed: int):
    """The waiting Optuna trial of one slot, its point, seed and slot in one record (written in
    one transaction: no trial ever holds the learning rate of one point and the L2 of another)."""
    import optuna

    values = slot_params(round_, point)
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING,
        params={d.name: d.encode(values[d.name]) for d in round_.dimensions},
        distributions={d.name: d.distribution() for d in round_.dimensions},
        user_attrs={"slot": slot, "seed": seed},
    )


def slot_owners(trials: Sequence) -> dict[int, Any]:
    """Each slot's trial: the oldest (lowest number) of its trials that has not failed. A newer
    trial never becomes older, so every worker agrees on it until it fails."""
    import optuna

    owners = {}
    for trial in sorted(trials, key=lambda t: t.number):
        slot = trial.user_attrs.get("slot")
        if slot is not None and trial.state != optuna.trial.TrialState.FAIL:
            owners.setdefault(slot, trial)
    return owners


def batch_slots(slot: int, width: int, num_trials: int) -> range:
    """The slots trained together with `slot`: [kP, (k+1)P) of the round, P = `width`."""
    first = slot - slot % width
    return range(first, min(first + width, num_trials))


@dataclasses.dataclass(frozen=True)
class Worker:
    """Who runs a trial: a dead process on this host is recognised without waiting."""

    host: str
    pid: int

    @classmethod
    def this_process(cls) -> "Worker":
        """The current process."""
        return cls(socket.gethostname(), os.getpid())

    def is_dead(self) -> bool:
        """Whether this worker is a process of this host that no longer runs."""
        if self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def reclaim_interrupted(study, storage) -> int:
    """Fail the running trials whose worker died (their slots then get new trials); returns
    how many."""
    import optuna

    optuna.storages.fail_stale_trials(study)  # other hosts: heartbeat older than the grace
    reclaimed = 0
    grace = 3 * storage.get_heartbeat_interval()
    now = datetime.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        # No worker recorded: its worker died right after claiming it; reclaim it once it is old.
        orphan = worker is None and (now - trial.datetime_start).total_seconds() > grace
        if orphan or (worker and Worker(worker["host"], worker["pid"]).is_dead()):
            try:
                storage.set_trial_state_values(trial._trial_id, state=optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker reclaimed it first
            reclaimed += 1
    return reclaimed


# The fields of a trial record (trial_record) other than the searched keys beyond the
# learning rate and the L2 weight (`searched_extras`).
RECORD_FIELDS = (
    "round",
    "slot",
    "learning_rate",
    "l2",
    "seed",
    "steps",
    "epochs",
    "val_accuracy",
    "val_loss",
    "initial_loss",
    "final_loss",
    "improved",
    "diverged_at",
    "loss_curve",
    "pruned_at",
    "goal_at",
    "stopped_at",
    "rungs",
)


def searched_extras(record: dict) -> dict[str, Any]:
    """A trial record's searched values beyond the learning rate and L2 weight (config keys)."""
    return {k: v for k, v in record.items() if k not in RECORD_FIELDS}


def rung_val_records(log: list[dict]) -> list[dict]:
    """A trial's val numbers at its rungs (its log) as metrics.jsonl val records."""
    return [
        {"step": e["step"], "val_loss": e["val_loss"], "val_accuracy": e["val_accuracy"]}
        for e in log
        if e["val_loss"] is not None
    ]


def trial_record(slot: int, values: dict, attrs: dict, round_: Round) -> dict:
    """A finished trial as the plain record the reports use (`values`: trial_values)."""
    return {
        "round": round_.index,
        "slot": slot,
        "learning_rate": values["learning_rate"],
        "l2": values["l2"],
        **{k: v for k, v in values.items() if k not in ("learning_rate", "l2")},
        "seed": attrs["seed"],
        "steps": attrs["steps"],
        "epochs": attrs["epochs"],
        "val_accuracy": attrs["val_accuracy"],
        "val_loss": math.inf if attrs["val_loss"] is None else attrs["val_loss"],
        "initial_loss": attrs["initial_loss"],
        "final_loss": attrs["final_loss"],
        "improved": attrs["improved"],
        "diverged_at": attrs["diverged_at"],
        "loss_curve": attrs.get("loss_curve", []),
        "pruned_at": attrs.get("pruned_at"),
        "goal_at": attrs.get("goal_at"),
        "stopped_at": attrs.get("stopped_at"),
        "rungs": attrs.get("rungs", []),
    }


def trial_attrs(
    result: trials_lib.TrialsResult,
    i: int,
    seed: int,
    round_: Round,
    rungs: Sequence[dict] = (),
    goal_at: int | None = None,
) -> dict:
    """Trial i's result as stored in its study (JSON: non-finite values as None); `rungs`, its
    val numbers at each rung it reached (the last one where it was cut, if it was); `goal_at`,
    the step at which it met the search's goal (then it ended there, complete)."""
    pruned = bool(rungs) and result.steps < round_.steps and goal_at is None
    return {
        "seed": seed,
        "steps": result.steps,
        "epochs": round_.epochs * result.steps / round_.steps,
        "pruned_at": result.steps if pruned else None,
        "goal_at": goal_at,
        "rungs": list(rungs),
        "val_accuracy": float(result.val_accuracy[i]),
        "val_loss": files.finite_or_none(result.val_loss[i]),
        "initial_loss": files.finite_or_none(result.initial_loss[i]),
        "final_loss": files.finite_or_none(result.final_loss[i]),
        "improved": bool(result.improved[i]),
        "diverged_at": int(result.diverged_at[i]),
        "loss_curve": [files.finite_or_none(v) for v in result.train_loss_curve[i]],
    }


def rung_rank(point: dict, metric: str) -> tuple[float, float]:
    """How good a trial's val numbers at a rung are (higher is better): the search's metric,
    then the lower val loss."""
    sign = 1.0 if METRICS[metric] == "maximize" else -1.0
    return sign * point[metric], -point["val_loss"]


def clearly_better(
    scores: Sequence[float], num_val: int, error_variance: Callable[[float, int], float]
) -> Callable[[int, int], bool]:
    """Whether trial i's val score in `scores` (1 - error) beats trial j's by more than NOISE_Z
    standard errors of their difference, each error's variance on `num_val` examples from
    `error_variance` (the task's)."""

    def better(i: int, j: int) -> bool:
        a, b = scores[i], scores[j]
        if not (math.isfinite(a) and math.isfinite(b)):
            return False
        noise = math.sqrt(error_variance(1.0 - a, num_val) + error_variance(1.0 - b, num_val))
        return a - b > NOISE_Z * noise

    return better


def stopped_at_best_rung(
    attrs: dict, metric: str, num_val: int, same_rates: Callable[[int], bool]
) -> dict:
    """`attrs` of a trial that reached its round's end, or, when it was clearly better at an
    earlier rung (its val loss lower and its metric better by more than NOISE_Z standard
    errors of the end's val error on `num_val` examples), its numbers there, `stopped_at` that
    rung's step: early stopping at the points the halving evaluated. Only a rung where
    `same_rates(step)` holds counts (the config at that length trains what the trial trained).
    The trial's `steps` stay what it trained, which ranks it (best_records)."""
    sign = 1.0 if METRICS[metric] == "maximize" else -1.0
    error = min(max(1.0 - attrs["val_accuracy"], 0.0), 1.0)
    noise = NOISE_Z * math.sqrt(error * (1 - error) / max(num_val, 1))
    end_loss = math.inf if attrs["val_loss"] is None else attrs["val_loss"]
    end_value = attrs[metric] if attrs[metric] is not None else -sign * math.inf

    def beats_end(point: dict) -> bool:
        margin = noise if metric == "val_accuracy" else 0.0
        return (
            point["val_loss"] is not None
            and point["val_loss"] < end_loss
            and sign * (point[metric] - end_value) > margin
        )

    earlier = [
        p
        for p in attrs["rungs"]
        if p["step"] < attrs["steps"] and beats_end(p) and same_rates(p["step"])
    ]
    if not earlier:
        return attrs
    best = max(earlier, key=lambda p: rung_rank(p, metric))
    return {
        **attrs,
        "stopped_at": best["step"],
        "val_accuracy": best["val_accuracy"],
        "val_loss": best["val_loss"],
    }


def finished_records(
    owners: dict[int, Any], round_: Round, config: ml_collections.ConfigDict
) -> list[dict]:
    """The records of the round's finished slots (pruned ones included), in slot order."""
    import optuna

    ended = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return [
        trial_record(
            slot,
            trial_values(config, decoded_params(round_, trial.params)),
            trial.user_attrs["result"],
            round_,
        )
        for slot, trial in sorted(owners.items())
        if trial.state in ended
    ]


class Search:
    """A coarse-to-fine search of one config in one storage, resumable and shareable."""

    def __init__(
        self,
        runner: trials_lib.TrialRunner,
        dataset,
        config: ml_collections.ConfigDict,
        storage_url: str,
        study_name: str,
        *,
        progress: bool = True,
        goal_val_error: float | None = None,
    ):
        self.runner, self.dataset, self.config = runner, dataset, config
        self.goal_val_error = goal_val_error  # stop at the first trial at or below it
        self.search = config.search
        self.storage_url = storage_url
        self.storage = open_storage(storage_url, self.search.heartbeat_seconds)
        self.study_name = study_name
        self.worker = Worker.this_process()
        self.progress = progress
        self.trained_here = 0  # trials this process trained (the rest came from the study)
        self.stopped: dict | None = None  # set when the search stopped at the goal
        self._runners: dict[tuple, trials_lib.TrialRunner] = {}  # by group (runner_for)
        self._ran: trials_lib.TrialRunner | None = None  # the first runner that trained
        # The best trial this process trained to the config's full length, as trained (its
        # record and state): the tune stage records it as the best run instead of training it
        # again (held_trial).
        self._held: tuple[dict, trials_lib.TrainedTrial] | None = None

    def keep_trained(self, record: dict, trained: Callable[[], trials_lib.TrainedTrial]) -> None:
        """Hold `trained()` when `record` is a full-length trial (or one that ended at the goal:
        its best config has its length) that best_record would rank above the one held (a later
        round's first, then the metric)."""
        if record["steps"] != self.config.num_steps and record.get("goal_at") is None:
            return
        if self._held is not None:
            held = self._held[0]
            if record["round"] < held["round"]:
                return
            ranked = best_records([held, record], self.search.metric, 0.0)
            if record["round"] == held["round"] and (not ranked or ranked[0] is not record):
                return
        self._held = (record, trained())

    def held_trial(self, best: dict | None) -> trials_lib.TrainedTrial | None:
        """The state of the trial `best` as this process trained it, or None (not trained here
        to the full length: a shorter round's, another worker's, or one before a resume)."""
        if best is None or self._held is None:
            return None
        record, trained = self._held
        same = (record["round"], record["slot"]) == (best["round"], best["slot"])
        return trained if same else None

    def goal_at(self, step: int, val_accuracy: float) -> int | None:
        """`step` when a trial with `val_accuracy` there meets the goal and its config at that
        length trains what the trial trained (the schedule's rates agree up to it); else None."""
        if not meets_goal(val_accuracy, self.goal_val_error):
            return None
        return step if self.same_rates(step) else None

    def clearly_better(self, scores: Sequence[float]) -> Callable[[int, int], bool] | None:
        """`clearly_better` on this val set for the search's metric; None when the search picks
        by val loss (the rungs' own ranking)."""
        if self.search.metric != "val_accuracy":
            return None
        return clearly_better(scores, len(self.dataset.x_val), self.dataset.task.error_variance)

    def same_rates(self, step: int) -> bool:
        """Whether the config at `step` steps trains what a trial trained to there."""
        return optimizer.same_rates_when_shorter(self.config.optimizer, self.config.num_steps, step)

    def reaches_goal(self, step: int, val_accuracy: float) -> bool:
        """Whether a trial with `val_accuracy` at `step` meets the goal there (goal_at)."""
        return self.goal_at(step, val_accuracy) is not None

    @property
    def loop(self) -> dict | None:
        """The form the trials' steps ran in (TrialRunner.loop); None before any trained."""
        return self._ran.loop if self._ran is not None else self.runner.loop

    def runner_for(self, round_: Round, values: dict[str, Any]) -> trials_lib.TrialRunner:
        """The runner of a trial's group: the config with the trial's group keys set (the
        given runner when nothing but the learning rate and L2 weight is searched)."""
        dims = round_.dimensions
        clip = any(d.key == "optimizer.clip_norm" for d in dims)
        key = (space_lib.group_key(dims, values), clip)
        if key == ((), False):
            runner = self.runner
        else:
            if key not in self._runners:
                config = space_lib.with_value(self.config, space_lib.group_values(dims, values))
                self._runners[key] = trials_lib.TrialRunner(
                    config,
                    self.dataset.input_shape,
                    self.dataset.num_classes,
                    mesh=self.runner.mesh,
                    task_kind=self.dataset.task,
                    clip_per_trial=clip,
                )
            runner = self._runners[key]
        self._ran = self._ran or runner
        return runner

    def hparams(self, values: Sequence[dict], seeds: Sequence[int]) -> trials_lib.TrialHparams:
        """The per-trial hyperparameters of trials with `values` (trial_values) and seeds."""
        clip = all("optimizer.clip_norm" in v for v in values)
        return trials_lib.TrialHparams(
            learning_rate=[v["learning_rate"] for v in values],
            l2=[v["l2"] for v in values],
            seed=list(seeds),
            clip_norm=[v["optimizer.clip_norm"] for v in values] if clip else None,
        )

    def study(self, round_: Round):
        """The Optuna study of one round (created by whichever worker gets there first)."""
        import optuna

        study = optuna.create_study(
            storage=self.storage,
            study_name=f"{self.study_name}/round-{round_.index}",
            direction=METRICS[self.search.metric],
            load_if_exists=True,
        )
        # The first worker's ranges and rungs are authoritative; the others read them back.
        if "round" not in study.user_attrs:
            study.set_user_attr("round", self.with_rungs(round_).to_json())
        return study, Round.from_json(study.user_attrs["round"])

    def with_rungs(self, round_: Round) -> Round:
        """`round_` with the rungs its trials are cut at (search.prune_rungs; one rung, the
        trial length, without pruning)."""
        from workflow.search import pruning

        rungs = pruning.rung_steps(
            round_.steps,
            self.search.prune_rungs,
            self.search.prune_factor,
            self.config.steps_per_call,
        )
        return dataclasses.replace(round_, rungs=rungs)

    def run_round(self, study, round_: Round, on_batch: Callable[[list[dict]], None]) -> list[dict]:
        """Claim, train and record batches of slots until every slot of the round has finished,
        or one meets the goal (then `stopped` says so); returns the finished records in slot
        order."""
        points = round_points(self.search.sampler, self.config.seed, round_)
        width = trials_lib.trials_per_program(self.config)
        pruned = len(round_.rungs) > 1
        # With pruning a worker claims a group of slots, trained by one program whose lanes
        # take the group's slots one after another; without, a batch of one program's width.
        group = (self.search.group_trials or round_.num_trials) if pruned else width
        while True:
            reclaim_interrupted(study, self.storage)
            # At the goal before anything is created: a stopped search leaves no new trials.
            owners = slot_owners(study.get_trials(deepcopy=False))
            finished = finished_records(owners, round_, self.config)
            if self._at_goal(finished, round_):
                return finished
            owners = self._fill_slots(study, round_, points)
            finished = finished_records(owners, round_, self.config)
            if len(finished) == round_.num_trials:
                return finished
            claimed = self._claim_batch(owners, group)
            if claimed and pruned:
                self._train_group(round_, points, claimed, group, width, on_batch)
            elif claimed:
                on_batch(self._train_and_tell(round_, points, claimed, width))
            else:
                time.sleep(self.search.poll_seconds)  # the rest are training in other workers

    def _at_goal(self, finished: list[dict], round_: Round) -> bool:
        """Whether a finished trial meets the goal (then `stopped` says which and what the
        search skips)."""
        at_goal = goal_trial(finished, self.goal_val_error)
        if at_goal is None:
            return False
        self.stopped = {
            "reason": "goal",
            "round": round_.index,
            "slot": at_goal["slot"],
            "step": at_goal["steps"],
            "round_steps": round_.steps,
            "val_error": 1 - at_goal["val_accuracy"],
            "goal_val_error": self.goal_val_error,
            "skipped_trials": round_.num_trials - len(finished),
        }
        return True

    def _fill_slots(self, study, round_: Round, points: np.ndarray) -> dict[int, Any]:
        """Every slot's trial, after creating the missing ones (a new round, or the slot of a
        trial that failed) and failing the spare ones a race between workers created."""
        with _sqlite_lock(self.storage_url):
            owners = slot_owners(study.get_trials(deepcopy=False))
            missing = [slot for slot in range(round_.num_trials) if slot not in owners]
            for slot in missing:
                seed = trial_seed(self.config.seed, round_.index, slot)
                study.add_trial(slot_trial(round_, slot, points[slot], seed))
            if missing:
                killpoints.reach("search.created")
                owners = slot_owners(study.get_trials(deepcopy=False))
        self._fail_spares(study, owners)
        return owners

    def _fail_spares(self, study, owners: dict[int, Any]) -> None:
        """Fail the waiting trials of a slot that has an older one (never trained)."""
        import optuna

        states = optuna.trial.TrialState
        owner_ids = {trial._trial_id for trial in owners.values()}
        for trial in study.get_trials(deepcopy=False, states=(states.WAITING,)):
            if "slot" in trial.user_attrs and trial._trial_id not in owner_ids:
                if self._claim(trial._trial_id):
                    self.storage.set_trial_user_attr(trial._trial_id, "spare", True)
                    self.storage.set_trial_state_values(trial._trial_id, state=states.FAIL)

    def _claim(self, trial_id: int) -> bool:
        """Make a waiting trial this worker's; False when another worker got it first."""
        import optuna

        try:
            # Atomic in a database with row locks (Optuna reads the trial FOR UPDATE); SQLite
            # has none, so two workers could both read it waiting and both claim it: there the
            # claim holds the study folder's lock.
            with _sqlite_lock(self.storage_url):
                return self.storage.set_trial_state_values(
                    trial_id, state=optuna.trial.TrialState.RUNNING
                )
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def _claim_batch(self, owners: dict[int, Any], width: int) -> list:
        """Claim the waiting trials of the first batch that has any (in slot order); [] when
        no trial waits. A batch whose first trial another worker has just claimed is left to
        that worker (both would otherwise train a program of its width for a few trials)."""
        import optuna

        waiting = sorted(
            slot for slot, t in owners.items() if t.state == optuna.trial.TrialState.WAITING
        )
        for batch in sorted({slot // width for slot in waiting}):
            claimed = []
            for slot in (s for s in waiting if s // width == batch):
                if self._claim(owners[slot]._trial_id):
                    claimed.append(owners[slot])
                    killpoints.reach("search.popped")
                elif not claimed:
                    break  # another worker is claiming this batch
            if claimed:
                for trial in claimed:
                    # A worker killed before this line leaves a trial that only its age can
                    # reclaim (see reclaim_interrupted).
                    worker = dataclasses.asdict(self.worker)
                    self.storage.set_trial_user_attr(trial._trial_id, "worker", worker)
                    self.storage.record_heartbeat(trial._trial_id)
                killpoints.reach("search.claimed")
                return claimed
        return []

    def _train_and_tell(
        self, round_: Round, points: np.ndarray, claimed: list, width: int
    ) -> list[dict]:
        """Train a batch's claimed trials as one program per group and record each result in
        the study.

        A group's program always has the width of the batch's slots of that group, each slot at
        its own lane (the lanes of slots claimed elsewhere train their slot's trial too, then
        are dropped): a trial's numbers are those of the uninterrupted search, whatever was
        claimed with it. A group with no claimed slot is not trained."""
        import optuna

        slots = [t.user_attrs["slot"] for t in claimed]
        lanes = batch_slots(slots[0], width, round_.num_trials)
        by_slot = dict(zip(slots, claimed, strict=True))
        values = [trial_values(self.config, slot_params(round_, points[slot])) for slot in lanes]
        seeds = [trial_seed(self.config.seed, round_.index, slot) for slot in lanes]
        # The lanes of each group (in lane order) train as one program of their count.
        programs: dict[int, list[int]] = {}
        for lane, value in enumerate(values):
            programs.setdefault(id(self.runner_for(round_, value)), []).append(lane)
        programs = {
            key: group
            for key, group in programs.items()
            if any(lanes[lane] in by_slot for lane in group)
        }
        desc = f"round {round_.index + 1}: {len(claimed)} trials"
        total = round_.steps * len(programs)
        outcome = {}  # lane -> (its program's states and result, its index there)
        with Progress(total, desc, "step", enabled=self.progress) as bar:
            for group in programs.values():
                states, result = self.runner_for(round_, values[group[0]]).run(
                    self.hparams([values[i] for i in group], [seeds[i] for i in group]),
                    self.dataset,
                    round_.steps,
                    progress=self._beating(claimed, bar.advance),
                )
                outcome.update({lane: (states, result, i) for i, lane in enumerate(group)})
        killpoints.reach("search.trained")
        records = []
        for slot, trial in sorted(by_slot.items()):
            lane = lanes.index(slot)
            states, result, index = outcome[lane]
            goal_at = self.goal_at(result.steps, float(result.val_accuracy[index]))
            attrs = trial_attrs(result, index, trial.user_attrs["seed"], round_, goal_at=goal_at)
            metric = attrs[self.search.metric]
            try:
                self.storage.set_trial_user_attr(trial._trial_id, "result", attrs)
                self.storage.set_trial_state_values(
                    trial._trial_id,
                    state=optuna.trial.TrialState.COMPLETE,
                    values=[metric if metric is not None else math.inf],
                )
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # reclaimed as stale meanwhile: its slot's new trial gives these numbers
            killpoints.reach("search.told")
            self.trained_here += 1
            records.append(trial_record(slot, values[lane], attrs, round_))
            self.keep_trained(
                records[-1],
                functools.partial(trials_lib.trained_trial, states, result, index),
            )
        return records

    def _train_group(
        self,
        round_: Round,
        points: np.ndarray,
        claimed: list,
        group: int,
        width: int,
        on_batch: Callable[[list[dict]], None],
    ) -> None:
        """Train a claimed group's slots by successive halving at the round's rungs, in
        programs of `width` lanes: each claimed trial gets its val loss at each rung it reaches
        (Optuna intermediate values), then its end: pruned at a rung, or complete with its
        result. Stops at the first trial that meets the goal, at any rung (`goal_at`: it ends
        there, complete; the group's claimed trials that have not ended are failed as skipped).

        Every slot of the group is trained (slots finished before, or claimed elsewhere, again
        but not recorded): the cuts are the uninterrupted search's, whatever was claimed."""
        import optuna

        from workflow.search import pruning

        slots = list(batch_slots(claimed[0].user_attrs["slot"], group, round_.num_trials))
        by_slot = {t.user_attrs["slot"]: t for t in claimed}
        params = [trial_values(self.config, slot_params(round_, points[slot])) for slot in slots]
        seeds = [trial_seed(self.config.seed, round_.index, slot) for slot in slots]
        hparams = self.hparams(params, seeds)
        runners = [self.runner_for(round_, p) for p in params]
        factor = self.search.prune_factor
        rungs = round_.rungs
        log: dict[int, list[dict]] = {i: [] for i in range(len(slots))}
        ended: dict[int, dict] = {}  # index -> the trial's attrs when it is cut
        told: set[int] = set()
        program_states = None  # the states of the program that has just trained
        # index -> its best rung so far (by the metric, then val loss) and its state there: a
        # trial taken at a rung (stopped_at_best_rung) is recorded as trained to it.
        best_rung: dict[int, tuple[dict, trials_lib.TrainedTrial]] = {}
        states = optuna.trial.TrialState
        bar = Progress(
            pruning.halving_cost(len(slots), rungs, factor),
            f"round {round_.index + 1}: {len(slots)} trials, cut at {list(rungs[:-1])}",
            "step",
            enabled=self.progress,
        )

        def tell(index: int, attrs: dict, state, value: float | None) -> dict | None:
            trial = by_slot.get(slots[index])
            if trial is None:
                return None  # not this worker's to record
            try:
                self.storage.set_trial_user_attr(trial._trial_id, "result", attrs)
                self.storage.set_trial_state_values(
                    trial._trial_id, state=state, values=None if value is None else [value]
                )
            except optuna.exceptions.UpdateFinishedTrialError:
                return None  # reclaimed as stale meanwhile: its slot's new trial gives these
            told.add(slots[index])
            killpoints.reach("search.told")
            self.trained_here += 1
            return trial_record(slots[index], params[index], attrs, round_)

        def hold_if_best_rung(index: int, lane: int, result) -> None:
            """Hold the trial's state at this rung when its val numbers are its best so far."""
            point, held = log[index][-1], best_rung.get(index)
            if point["val_loss"] is None:
                return
            metric = self.search.metric
            if held is not None and rung_rank(point, metric) <= rung_rank(held[0], metric):
                return
            records = rung_val_records(log[index][:-1])
            trained = trials_lib.trained_trial(program_states, result, lane, records)
            best_rung[index] = (point, trained)

        def batch_done(rung_index: int, batch: list[int], result) -> bool:
            killpoints.reach("search.trained")
            # A trial may meet the goal between rungs (run_halving's `goal`): the program
            # ends at that step, and only the trials at the goal complete there.
            step, last = result.steps, rung_index == len(rungs) - 1 and result.steps == rungs[-1]
            records, at_goal = [], False
            for lane, index in enumerate(batch):
                loss = float(result.val_loss[lane])
                log[index].append(
                    {
                        "step": step,
                        "val_loss": files.finite_or_none(loss),
                        "val_accuracy": float(result.val_accuracy[lane]),
                    }
                )
                trial = by_slot.get(slots[index])
                if trial is not None:
                    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                        self.storage.set_trial_intermediate_value(trial._trial_id, step, loss)
                goal_at = self.goal_at(step, float(result.val_accuracy[lane]))
                attrs = trial_attrs(result, lane, seeds[index], round_, log[index], goal_at)
                if not last and goal_at is None:
                    ended[index] = attrs  # told as pruned if the rung cuts it
                    if round_.steps == self.config.num_steps and self.same_rates(step):
                        hold_if_best_rung(index, lane, result)
                    continue
                trained = functools.partial(
                    trials_lib.trained_trial,
                    program_states,
                    result,
                    lane,
                    rung_val_records(log[index][:-1]),
                )
                if goal_at is None:
                    attrs = stopped_at_best_rung(
                        attrs, self.search.metric, len(self.dataset.x_val), self.same_rates
                    )
                    if attrs.get("stopped_at") is not None:
                        # Its state at that rung, if held (else the tune stage trains it again).
                        point, held = best_rung.get(index, ({}, None))
                        held_there = point.get("step") == attrs["stopped_at"]
                        trained = (lambda held=held: held) if held_there else None
                record = trial_record(slots[index], params[index], attrs, round_)
                at_goal = at_goal or goal_trial([record], self.goal_val_error) is not None
                metric = attrs[self.search.metric]
                value = metric if metric is not None else math.inf
                if tell(index, attrs, states.COMPLETE, value) is not None:
                    records.append(record)
                    if trained is not None:
                        self.keep_trained(record, trained)
            on_batch(records)
            return at_goal

        def hold_states(rung_index: int, batch: list[int], trained, result) -> None:
            nonlocal program_states
            program_states = trained

        spent = 0  # the group's training steps to the rungs passed

        def rung_done(rung_index: int, kept: list[int], cut: list[int]) -> None:
            nonlocal spent
            # A rung may keep more than 1/factor (clearly_better): the bar's total grows.
            previous = rungs[rung_index - 1] if rung_index else 0
            spent += (len(kept) + len(cut)) * (rungs[rung_index] - previous)
            left = [r - rungs[rung_index] for r in rungs[rung_index + 1 :]]
            bar.set_total(spent + pruning.halving_cost(len(kept), left, factor))
            # The ones kept beyond the fraction by val loss are kept for their metric.
            base = pruning.kept_by_loss(len(kept) + len(cut), factor)
            for index in sorted(kept, key=lambda i: (log[i][-1]["val_loss"], i))[base:]:
                log[index][-1]["kept_for_metric"] = True
            records = []
            for index in cut:
                best_rung.pop(index, None)
                record = tell(index, ended.pop(index), states.PRUNED, None)
                if record is not None:
                    records.append(record)
            for index in kept:
                ended.pop(index, None)
            on_batch(records)

        with bar:
            self.runner.run_halving(
                hparams,
                self.dataset,
                rungs,
                width,
                keep=lambda losses, scores: pruning.survivors(
                    losses, factor, self.clearly_better(scores)
                ),
                on_batch=batch_done,
                on_rung=rung_done,
                progress=self._beating(claimed, bar.advance),
                lane_runner=runners.__getitem__,
                on_states=hold_states,
                goal=None if self.goal_val_error is None else self.reaches_goal,
            )
        for slot, trial in by_slot.items():
            if slot not in told:  # the group stopped at the goal before this trial ended
                try:
                    self.storage.set_trial_user_attr(trial._trial_id, "skipped", True)
                    self.storage.set_trial_state_values(trial._trial_id, state=states.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    pass

    def _beating(self, claimed: list, on_steps: Callable[[int], None]) -> Callable[[int], None]:
        """`on_steps`, recording the claimed trials' heartbeats at least twice per heartbeat
        period, so that no other worker reclaims them as orphaned while they train."""
        last_beat = [time.monotonic()]

        def beating(k: int) -> None:
            on_steps(k)
            if time.monotonic() - last_beat[0] > self.search.heartbeat_seconds / 2:
                for trial in claimed:
                    self.storage.record_heartbeat(trial._trial_id)
                last_beat[0] = time.monotonic()

        return beating

    def run(self, first: Round, on_batch: Callable[[list[dict]], None] = lambda r: None):
        """Every round, each refined around the best of the one before, until the goal is met;
        returns (rounds, records of all finished trials)."""
        with full_disk_as_oserror(self.storage_url):
            return self._run(first, on_batch)

    def _run(self, first: Round, on_batch: Callable[[list[dict]], None]):
        rounds, records, round_, round_records = [], [], first, []
        num_train = len(self.dataset.x_train)
        for index in range(self.search.rounds):
            if index:
                round_ = next_round(
                    rounds[-1],
                    round_records,
                    self.search,
                    num_train,
                    self.config.batch_size,
                    self.config.num_steps if self.search.last_round_full_length else None,
                )
            study, round_ = self.study(round_)
            round_records = self.run_round(study, round_, on_batch)
            rounds.append(round_)
            records += round_records
            if self.stopped is not None:
                later = self.search.rounds - index - 1
                self.stopped["skipped_rounds"] = later
                self.stopped["skipped_trials"] += later * self.search.refine_trials
                break
        return rounds, records


def best_record(records: list[dict], metric: str) -> dict | None:
    """The best finished trial of the longest round that has one (longer runs rank truer)."""
    for round_index in sorted({r["round"] for r in records}, reverse=True):
        top = best_records([r for r in records if r["round"] == round_index], metric, 0.0)
        if top:
            return top[0]
    return None
