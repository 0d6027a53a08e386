"""The run directory: its files, declared once (`FILES`), and `RunDir`, through which a stage
writes every one of them.

Only process 0 of a multi-process job writes (`distributed.is_writer()`): on every other
process each of RunDir's writing methods does nothing, and a plot is not even drawn. Every file
is written atomically (a temporary file, then a rename), so a reader never sees half of one;
the append-only records (metrics.jsonl, the TensorBoard events) take one write per record, and
their readers skip a torn last one. Checkpoints are Orbax's (workflow/engine/checkpoints.py),
under `CHECKPOINTS`.

A stage owns its directory for its whole life: `RunDir.claim` takes an OS file lock (`LOCK`;
another process is refused naming the holder), then checks, before anything is written, that
the directory is new or holds this same run: the same kind of stage (`KINDS`), the same config
(but the keys of `RESUMABLE_KEYS`) and the same data (`identity.json`). A run directory is data:
nothing in it is ever executed.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ml_collections

from workflow import files
from workflow.engine import distributed
from workflow.errors import UsageError
from workflow.files import read_json, to_jsonable, write_json, write_text
from workflow.reporting import tensorboard

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workflow.reporting.summary import Summary

# Every file and folder a run directory may hold (path inside it -> what it is).
FILES: dict[str, str] = {}


def _declare(name: str, meaning: str) -> str:
    FILES[name] = meaning
    return name


CONFIG = _declare("config.json", "the resolved config; a resumed run must have the same")
IDENTITY = _declare("identity.json", "the kind of run, the stage that made it, its data's digest")
LOCK = _declare("lock", "while a stage runs: its OS file lock, with its pid, host and start")
METRICS = _declare("metrics.jsonl", "one JSON record per logged step or evaluation")
SUMMARY = _declare("summary.json", "the stage's result (fields: workflow/reporting/summary.py)")
REPORT = _declare("report.md", "tables, findings, plots and next commands for a person")
REPORT_HTML = _declare("report.html", "run: the workflow's story as one self-contained page")
MODEL_SUMMARY = _declare("model_summary.txt", "NNX's table of the model's layers for one batch")
NORMALIZATION = _declare("normalization.json", "the training split's per-channel mean and std")
RANGE_TEST = _declare("range_test.json", "tune: the learning-rate range test and its curve")
BEST_CONFIG = _declare("best_config.py", "tune, improve: the chosen setup as a --config file")
BEST_CONFIG_JSON = _declare(
    "best_config.json", "tune, improve: the chosen setup's resolved config (workflow.run reads it)"
)
STUDY = _declare("study.db", "tune: the Optuna study (SQLite) a killed search resumes from")
WORKFLOW = _declare(
    "workflow.json", "run: each step's config as JSON values; finished: its summary"
)
CHECKPOINTS = _declare("checkpoints", "Orbax checkpoints and their checksums.json")
TENSORBOARD = _declare(
    "tensorboard", "this stage's TensorBoard events (reporting/tensorboard.py says what they hold)"
)
TENSORBOARD_TRIALS = _declare("tensorboard/trials", "tune: one TensorBoard run per search trial")
BEST = _declare(
    "best",
    "tune: the best trial at full length, as the search trained it or again (a run directory)",
)
BASELINE = _declare("baseline", "improve: the starting point's evaluated run directory")
PLOTS = _declare("plots", "the PNG plots below")
PLOT_LEARNING_CURVES = _declare("plots/learning_curves.png", "train/val loss, accuracy by step")
PLOT_OVERFIT_BATCH = _declare("plots/overfit_batch.png", "debug: overfitting one batch")
PLOT_SHORT_RUN = _declare("plots/short_run.png", "debug: the short run's learning curves")
PLOT_ERROR_CURVES = _declare("plots/error_curves.png", "evaluate: loss and error, goal marked")
PLOT_TRAIN_SIZE = _declare("plots/train_size.png", "evaluate: error against training-set size")
PLOT_CONFUSION_MATRIX = _declare("plots/confusion_matrix.png", "evaluate: train | val confusions")
PLOT_WORST_EXAMPLES = _declare("plots/worst_examples.png", "evaluate: most confident mistakes")
PLOT_RESIDUALS = _declare("plots/residuals.png", "evaluate (regression): residuals vs targets")
PLOT_LABEL_ERRORS = _declare("plots/label_errors.png", "evaluate (multilabel): error per label")
PLOT_SEARCH = _declare("plots/search.png", "tune: the metric against each hyperparameter")
PLOT_TRIAL_CURVES = _declare("plots/trial_curves.png", "tune: every trial's training loss")
PLOT_LR_RANGE_TEST = _declare("plots/lr_range_test.png", "tune: loss against learning rate")
PLOT_CANDIDATES = _declare("plots/candidates.png", "improve: val and test error per remedy")


# What a run directory holds, by the stages that write one: a stage reopens only its own kind.
TRAINING = "training"  # one training run: start_simple, evaluate, tune's best/, improve's baseline/
KINDS = {
    "start_simple": TRAINING,
    "evaluate": TRAINING,
    "debug": "debug",
    "tune": "tune",
    "improve": "improve",
    "run": "workflow",
}
# Kinds whose rerun replaces the previous results whole (debug resumes nothing), so any config
# may follow another there.
REPLACED_ON_RERUN = ("debug",)

# Config keys that may differ when a run directory is reopened, and why the directory then
# still holds one run. Every other key must be equal; num_steps, in a training run, may grow
# when the schedule does not depend on it (`num_steps_change`).
RESUMABLE_KEYS: dict[str, str] = {
    "progress": "the console's progress bar: no file and no number depends on it",
    "tensorboard": "what the TensorBoard events hold besides metrics.jsonl's numbers",
    "dataset.grain": (
        "how the grain pipeline reads (threads, workers, prefetch): the same batches in the same "
        "order"
    ),
    "loop": (
        "how a call runs its steps (engine/loop_form.py): the same steps on the same data, "
        "equal to float rounding"
    ),
}
RESUMABLE_KEYS_BY_KIND: dict[str, dict[str, str]] = {
    "workflow": {
        "budget": (
            "how many steps workflow.run starts, checked between steps: a finished step's "
            "results do not depend on it, and a step that started keeps the config it started on"
        ),
    },
}
# num_steps in a schedule that spans it (cosine decays to 0 at num_steps): changing it would
# train the steps after the resume on another schedule than the steps before.
SCHEDULES_OVER_NUM_STEPS = ("cosine",)

# The files whose presence without a config.json means the directory is not ours to start in.
_WORK_OF_A_RUN = (CHECKPOINTS, STUDY, METRICS, SUMMARY, WORKFLOW)


def _torn_record_step(fragment: bytes, records: list[dict]) -> int:
    """The step of a torn metrics record: read from its text when its step made it to disk,
    else the last whole record's (whose step may have more records, the torn one among them).
    """
    match = re.search(rb'"step": *(\d+)', fragment)
    if match:
        return int(match.group(1))
    return int(records[-1]["step"]) if records else 0


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON data."""
    return json.loads(config.to_json_best_effort())


class RunDir:
    """One stage's run directory; reopening an existing one resumes it.

    Every method that writes does nothing on processes other than 0."""

    def __init__(self, path: str):
        self.path = path
        self.checkpoints = self.file(CHECKPOINTS)
        self._events: tensorboard.EventFile | None = None
        self._identity: dict | None = None  # set by claim() for a new directory
        self._claims = 0
        self._torn_reported = False
        self._first_unrecorded: int | None = None  # set by read_metrics: a torn last record

    def file(self, name: str) -> str:
        """Path of a file (or folder) of `FILES` inside the run directory."""
        if name not in FILES:
            raise ValueError(f"{name!r} is not a file of the run directory: declare it in FILES")
        return os.path.join(self.path, name)

    @property
    def exists(self) -> bool:
        """Whether a run was started here before."""
        return os.path.exists(self.file(CONFIG))

    # ------------------------------------------------------------------------- reading

    def read_json(self, name: str) -> Any:
        """A JSON file of the run directory."""
        return read_json(self.file(name))

    def read_metrics(self) -> list[dict]:
        """Every complete record of metrics.jsonl (empty when there is none).

        A torn last line (a process stopped in the middle of writing it) is left out and
        reported once on stderr; `open` then drops it from the file. A line before it that does
        not read back is damage from outside: a UsageError naming the file and the line.
        """
        path = self.file(METRICS)
        self._first_unrecorded = None
        try:
            with open(path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return []
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if number == len(lines):  # no newline after it: the write never finished
                    self._report_torn_line(path, len(line))
                    self._first_unrecorded = _torn_record_step(line, records)
                    break
                raise UsageError(
                    f"{path} line {number} is not a JSON record: the file was damaged; move it "
                    "away (the run then resumes without its records) or use a new --workdir"
                ) from None
        return records

    def first_unrecorded_step(self) -> int | None:
        """The first step whose records may be missing because metrics.jsonl's last line is
        torn (a resumed run trains it again); None when the file ends whole."""
        self.read_metrics()
        return self._first_unrecorded

    def _report_torn_line(self, path: str, size: int) -> None:
        if self._torn_reported or not distributed.is_writer():
            return
        self._torn_reported = True
        print(
            f"warning: {path}: the last line ({size} bytes) is incomplete, left by a process "
            "stopped while writing it; it is left out",
            file=sys.stderr,
        )

    def read_summary(self) -> Summary | None:
        """summary.json, or None when there is none; ValueError when it cannot be read as one."""
        from workflow.reporting.summary import Summary

        if not os.path.exists(self.file(SUMMARY)):
            return None
        return Summary.from_json(self.read_json(SUMMARY))

    @property
    def kind(self) -> str | None:
        """The kind of run the directory holds (`KINDS`), None when it holds none or it is
        unreadable."""
        try:
            return self.read_json(IDENTITY).get("kind")
        except (OSError, ValueError, AttributeError):
            return None

    # ------------------------------------------------------------------------- identity

    def claim(
        self, kind: str, stage: str, config: ml_collections.ConfigDict, data: str | None
    ) -> bool:
        """Own the directory for `stage`: lock it, then check that it is new or holds this same
        run (`check_identity`). Nothing is written but the lock; `create` and `open` write the
        identity. Returns whether the directory is new. Re-entrant; `release` undoes one claim.
        """
        if distributed.is_writer():
            lock(self.path, stage)
        try:
            new = self.check_identity(kind, stage, config, data)
        except BaseException:
            if distributed.is_writer():
                unlock(self.path)
            raise
        if new:
            self._identity = {"kind": kind, "stage": stage, "data": data}
        self._claims += 1
        return new

    def release(self) -> None:
        """Undo one `claim` (the lock goes with the last one)."""
        if self._claims:
            self._claims -= 1
            if distributed.is_writer():
                unlock(self.path)

    @contextlib.contextmanager
    def claimed(
        self, kind: str, stage: str, config: ml_collections.ConfigDict, data: str | None
    ) -> Iterator[bool]:
        """`claim` for the body of a with statement; yields whether the directory is new."""
        new = self.claim(kind, stage, config, data)
        try:
            yield new
        finally:
            self.release()

    def check_identity(
        self, kind: str, stage: str, config: ml_collections.ConfigDict, data: str | None
    ) -> bool:
        """Whether the directory is new (True), or holds this same run (False): the same kind,
        the same config but `RESUMABLE_KEYS`, the same data digest. UsageError otherwise, or
        when files of a run lie there without the config.json that says whose they are."""
        if not self.exists:
            found = [name for name in _WORK_OF_A_RUN if _holds(self.file(name))]
            if found:
                raise UsageError(
                    f"--workdir={self.path} holds {', '.join(found)} but no {CONFIG}, so nothing "
                    "tells which run they belong to; nothing was changed: move them away or use "
                    "another --workdir"
                )
            return True
        identity = self._read_record(IDENTITY)
        held = identity.get("kind")
        if held != kind:
            raise UsageError(
                f"--workdir={self.path} holds a {held} run directory (written by the "
                f"{identity.get('stage')} stage); {stage} writes a {kind} one: use another "
                "--workdir"
            )
        if kind in REPLACED_ON_RERUN:
            return False
        refusal = config_refusal(kind, self._read_record(CONFIG), config_to_dict(config))
        if refusal:
            raise UsageError(f"--workdir={self.path} holds a run {refusal}")
        if data is not None and identity.get("data") not in (None, data):
            raise UsageError(
                f"--workdir={self.path} holds a run on other data: the dataset's arrays differ "
                "from those it was trained on (same config, other contents); use a new --workdir"
            )
        return False

    def _read_record(self, name: str) -> dict:
        """A JSON object of the directory that must read back; UsageError naming it if not."""
        try:
            value = self.read_json(name)
        except FileNotFoundError:
            raise UsageError(
                f"--workdir={self.path} has {CONFIG} but no {name}: written by an older version "
                "of the workflow, or damaged; use a new --workdir"
            ) from None
        except (OSError, ValueError) as e:
            raise UsageError(
                f"--workdir={self.path}: {name} does not read back ({type(e).__name__}: "
                f"{str(e)[:200]}); the run directory is damaged: restore the file or use a new "
                "--workdir"
            ) from None
        if not isinstance(value, dict):
            raise UsageError(
                f"--workdir={self.path}: {name} is not a JSON object; the run directory is "
                "damaged: restore the file or use a new --workdir"
            )
        return value

    # ------------------------------------------------------------------------- writing

    def _writable(self, name: str) -> str | None:
        """The path to write `name` to, its folder created; None on processes other than 0."""
        if not distributed.is_writer():
            return None
        path = self.file(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def create(self, config: ml_collections.ConfigDict) -> None:
        """Create (or reopen) the directory with its plots/ folder; write identity.json (when
        `claim` found it new) and config.json."""
        plots = self._writable(PLOTS)
        if plots is not None:
            os.makedirs(plots, exist_ok=True)
        if self._identity is not None:
            self.write_json(IDENTITY, self._identity)
            self._identity = None
        self.write_json(CONFIG, config_to_dict(config))

    def open(self, config: ml_collections.ConfigDict, *, resume_step: int | None) -> None:
        """Create (or reopen) the directory; keep only the metrics up to `resume_step`."""
        self.create(config)
        path = self._writable(METRICS)
        if path is None:
            return
        kept = [r for r in self.read_metrics() if r["step"] <= resume_step] if resume_step else []
        write_text(path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl and its numbers to the TensorBoard events."""
        path = self._writable(METRICS)
        if path is None:
            return
        files.append_bytes(path, (json.dumps(to_jsonable(record)) + "\n").encode())
        self.events.write_scalars(record["step"], tensorboard.finite_scalars(record))

    @property
    def events(self) -> tensorboard.EventFile:
        """This process's TensorBoard event file of the stage (process 0 only)."""
        if self._events is None:
            self._events = tensorboard.EventFile(self.file(TENSORBOARD))
        return self._events

    def log_scalars(self, step: int, values: dict) -> None:
        """The finite numbers of `values` as TensorBoard scalars at `step` (no metrics.jsonl
        record: numbers that summary.json holds)."""
        if distributed.is_writer():
            self.events.write_scalars(step, tensorboard.finite_scalars(values))

    def log_layers(self, step: int, statistics: dict) -> None:
        """Per-layer histograms and gradient norms (engine.layer_statistics) at `step`."""
        if distributed.is_writer():
            self.events.write_histograms(step, statistics["histograms"])
            self.events.write_scalars(step, statistics["scalars"])

    def log_hparams(self, config: ml_collections.ConfigDict, step: int, metrics: dict) -> None:
        """The run's config and final metrics for TensorBoard's HParams dashboard."""
        if distributed.is_writer():
            values = tensorboard.finite_scalars(metrics)
            self.events.write_hparams(step, tensorboard.hparams_of(config_to_dict(config)), values)

    def log_plot(self, name: str, step: int) -> None:
        """A saved plot of `PLOTS` as a TensorBoard image (tagged by its file name)."""
        path = self.file(name)
        if distributed.is_writer() and os.path.exists(path):
            with open(path, "rb") as f:
                png = f.read()
            tag = os.path.splitext(os.path.basename(name))[0]
            self.events.write_png(tag, step, png)

    def log_trials(self, records: list[dict], config: ml_collections.ConfigDict) -> None:
        """Each search trial as its own TensorBoard run (`TENSORBOARD_TRIALS`, rewritten)."""
        if distributed.is_writer():
            fixed = tensorboard.hparams_of(config_to_dict(config))
            tensorboard.write_trials(self.file(TENSORBOARD_TRIALS), records, fixed)

    def write_json(self, name: str, obj: Any) -> None:
        """A JSON file of the run directory."""
        path = self._writable(name)
        if path is not None:
            write_json(path, obj)

    def write_text(self, name: str, text: str) -> None:
        """A text file of the run directory."""
        path = self._writable(name)
        if path is not None:
            write_text(path, text)

    def write_summary(self, summary: Summary) -> None:
        """summary.json."""
        self.write_json(SUMMARY, summary.to_json())

    def write_report(self, title: str, sections: list[tuple[str, str]]) -> None:
        """report.md from (heading, markdown body) sections."""
        body = "\n\n".join(f"## {heading}\n\n{text}" for heading, text in sections)
        self.write_text(REPORT, f"# {title}\n\n{body}\n")

    def append_to_report(self, heading: str, text: str) -> None:
        """One more section at the end of report.md, when there is one."""
        path = self._writable(REPORT)
        if path is None or not os.path.exists(path):
            return
        with open(path) as f:
            report = f.read()
        write_text(path, f"{report}\n## {heading}\n\n{text}\n")

    def save_figure(self, name: str, draw: Callable[[], Figure]) -> str:
        """A plot of `PLOTS`: the matplotlib figure `draw()` returns, saved as a PNG (drawn on
        process 0 only). Returns its path relative to the run directory, as report.md links it."""
        path = self._writable(name)
        if path is not None:
            from workflow.reporting import plots

            plots.save_figure(draw(), path)
        return name

    def copy_from(self, source: str) -> None:
        """This directory as a copy of the finished run directory `source`, made once and
        atomically (a killed copy is redone, not reused); its lock and TensorBoard events are
        not copied."""
        if not distributed.is_writer() or os.path.exists(self.path):
            return
        temporary = self.path + ".tmp"
        shutil.rmtree(temporary, ignore_errors=True)
        # The copied run's events stay its own: this stage writes its own (tensorboard.py).
        shutil.copytree(source, temporary, ignore=shutil.ignore_patterns(LOCK, TENSORBOARD))
        os.replace(temporary, self.path)

    def close(self) -> None:
        """Stop logging (every record is written already)."""
        self._events = None

    def remove(self) -> None:
        """Delete what a stage wrote in a directory it found new and could not finish setting
        up: the files of `FILES` only (anything else there is someone else's), the directory
        itself once its lock is released, if the lock created it."""
        if not distributed.is_writer():
            return
        for name in FILES:
            if "/" in name or name == LOCK:
                continue
            path = self.file(name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)


def _holds(path: str) -> bool:
    """Whether `path` is a file, or a folder with something in it."""
    return os.path.isfile(path) or (os.path.isdir(path) and bool(os.listdir(path)))


# ----------------------------------------------------------------------------- config changes


def num_steps_change(old: dict, new: dict) -> str | None:
    """Why num_steps may not change from `old`'s to `new`'s config; None when it may.

    It may grow when the schedule does not depend on it: the data order and the augmentation
    are functions of (seed, step), and the constant and piecewise schedules (boundaries in
    steps) of the step alone, so the steps already trained are the longer run's. With early
    stopping, only from a multiple of eval_every (the shorter run's last evaluation is then one
    the longer run makes too). It may never shrink: a checkpoint past the new end would be
    reported as the shorter run.
    """
    before, after = old.get("num_steps"), new.get("num_steps")
    schedule = ((new.get("optimizer") or {}).get("schedule") or {}).get("name", "constant")
    if not (isinstance(before, int) and isinstance(after, int)) or after < before:
        return f"of num_steps={before}: num_steps may grow on resume, never shrink (to {after})"
    if schedule in SCHEDULES_OVER_NUM_STEPS:
        return (
            f"of num_steps={before} with the {schedule} schedule, which spans num_steps: "
            f"num_steps={after} would train the rest on another schedule"
        )
    every = new.get("eval_every")
    stopping = (new.get("early_stopping") or {}).get("enabled", False)
    if stopping and isinstance(every, int) and before % every:
        # The shorter run evaluated at its end, off the eval_every grid: early stopping would
        # count that evaluation, which the longer run never makes.
        return (
            f"of num_steps={before} with early stopping: num_steps may grow only from a "
            f"multiple of eval_every={every}"
        )
    return None


# Keys added to the base config since run directories were first written, with the value that
# every run before them ran as: a config.json without the key holds a run of that value.
ADDED_KEYS: dict[str, Any] = {
    "task": "classification",
    "optimizer.clip_norm": 0.0,
    "optimizer.accumulate_steps": 1,
    "tensorboard.histograms": True,
    "dataset.pipeline": "memory",
}


def as_run(flat: dict) -> dict:
    """A flattened config as the run it describes: keys added since (ADDED_KEYS) at the value
    runs before them had, and loss "auto" as the task's own loss."""
    from workflow.engine import tasks

    flat = {**{k: v for k, v in ADDED_KEYS.items() if k not in flat}, **flat}
    if flat.get("loss") == "auto" and flat.get("task") in tasks.KINDS:
        flat["loss"] = tasks.KINDS[flat["task"]].default_loss
    return flat


def config_refusal(kind: str, old: dict, new: dict) -> str | None:
    """Why a run directory of `kind` holding config `old` cannot be reopened with `new` (the
    end of a sentence starting "holds a run "); None when it can."""
    from workflow.config_lib import flatten

    resumable = {**RESUMABLE_KEYS, **RESUMABLE_KEYS_BY_KIND.get(kind, {})}
    flat_old, flat_new = as_run(flatten(old)), as_run(flatten(new))
    missing = object()

    def may_differ(key: str) -> bool:
        return any(key == k or key.startswith(f"{k}.") for k in resumable)

    changed = sorted(
        key
        for key in set(flat_old) | set(flat_new)
        if flat_old.get(key, missing) != flat_new.get(key, missing) and not may_differ(key)
    )
    if changed == ["num_steps"] and kind == TRAINING:
        return num_steps_change(old, new)
    if not changed:
        return None
    shown = [
        f"{key}: {flat_old.get(key, '(none)')!r} -> {flat_new.get(key, '(none)')!r}"
        for key in changed[:4]
    ]
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    return (
        f"with a different config (differs in {'; '.join(shown)}{more}); use a new --workdir "
        "or delete this one"
    )


# ----------------------------------------------------------------------------- the lock


class _Lock:
    """The lock this process holds on one run directory, with how many claims share it and
    the folders taking it created (deepest first)."""

    def __init__(self, fd: int, path: str, created: list[str]):
        self.fd, self.path, self.created, self.count = fd, path, created, 1


_HELD: dict[str, _Lock] = {}  # run directory (real path) -> this process's lock on it


def lock(path: str, stage: str) -> None:
    """Take the OS file lock of run directory `path` (created if missing) for this process;
    re-entrant. Another process holding it: UsageError naming its pid and host (exit 2)."""
    created, folder = [], os.path.abspath(path)
    while not os.path.exists(folder):
        created.append(folder)
        folder = os.path.dirname(folder)
    os.makedirs(path, exist_ok=True)
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key].count += 1
        return
    lock_path = os.path.join(path, LOCK)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(
                f"--workdir={path} is in use by {_holder(lock_path)}: one process at a time "
                "writes a run directory; wait for it to end or use another --workdir"
            ) from None
        except OSError as e:  # ENOLCK, EOPNOTSUPP: a file system without locks (some NFS)
            os.close(fd)
            if created:  # nothing was there: leave nothing
                os.unlink(lock_path)
                _remove_empty(created)
            raise UsageError(
                f"cannot lock --workdir={path} ({os.strerror(e.errno)}): its file system does "
                "not support file locks, which keep two processes off one run directory; use "
                "a --workdir on a local disk or on NFS with locking"
            ) from None
        # The holder removes the file as it releases it: the path must still be what we locked.
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    since = datetime.datetime.now().isoformat(timespec="seconds")
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage, "since": since}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder).encode())
    _HELD[key] = _Lock(fd, lock_path, created)


def unlock(path: str) -> None:
    """Release one `lock` of `path`; the last removes the lock file, and the folders `lock`
    created where nothing else was written."""
    key = os.path.realpath(path)
    held = _HELD.get(key)
    if held is None:
        return
    held.count -= 1
    if held.count:
        return
    del _HELD[key]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(held.path)  # while still locked: a process waiting on it then retries
    os.close(held.fd)
    _remove_empty(held.created)


def _remove_empty(folders: list[str]) -> None:
    """Remove `folders` (deepest first) while they are empty: a run's files stay."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            break


@contextlib.contextmanager
def locked(path: str, stage: str) -> Iterator[None]:
    """`lock` for the body of a with statement, taken by process 0 (the others write nothing);
    with several processes every one learns whether it got it, and all stop together if not."""
    writer = distributed.is_writer()
    refusal = None
    if writer:
        try:
            lock(path, stage)
        except UsageError as e:
            refusal = str(e)
        except OSError as e:
            if not distributed.multi_process():
                raise
            refusal = f"cannot lock --workdir={path}: {e}"
    if distributed.multi_process():
        refusal = distributed.broadcast_json(refusal)
    if refusal:
        raise UsageError(refusal)
    try:
        yield
    finally:
        if writer:
            unlock(path)


def _holder(lock_path: str) -> str:
    """Who holds a lock, as its file says: 'pid 123 on host (tune since ...)'."""
    try:
        with open(lock_path) as f:
            holder = json.loads(f.read())
        who = f"pid {holder['pid']} on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):  # written a moment from now
        return "another process"
    what = " since ".join(str(holder[k]) for k in ("stage", "since") if holder.get(k))
    return f"{who} ({what})" if what else who
