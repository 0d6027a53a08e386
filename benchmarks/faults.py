"""The fault campaign: kill -9 at random points, damaged files, two processes on one workdir, a
full disk, a crafted workflow.json and bad inputs, each in fresh processes; is anything lost?

Every fault is done to a real stage command (start_simple, tune, improve, run) on a small config
and checked against what the stages promise, concretely: a killed or damaged run, started again
with the same command, ends with exactly the uninterrupted run's numbers (its metrics and every
row of metrics.jsonl; for tune the whole trial table, the best config and the retrained best);
bad input is exit 2 with one line on stderr, no traceback and no run directory written; a run
directory never runs code; two processes never share one workdir. The uninterrupted runs are
made once per campaign. Random choices (where to kill, how much disk is left) come from --seed.

Prints one line per fault as it ends, then `faults tried / survived`; --out FILE.json writes
{"tried": N, "survived": N, "cases": [{"name", "done", "expected", "observed", "survived",
"skipped", "seconds"}, ...]}. Exit status 0 when every fault tried was survived, else 1.
Full-disk faults mount a small tmpfs, so they need root; elsewhere they are skipped (and not
counted as tried).

Command:
    python -m benchmarks.faults --out=/tmp/faults.json
    python -m benchmarks.faults --only='kill_tune*,torn_*' --seed=3 --jobs=1
    python -m benchmarks.faults --list
"""

import argparse
import contextlib
import dataclasses
import fnmatch
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from benchmarks import common
from workflow import killpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------- configs

_DATA = ["--config.dataset.kwargs.num_train=600", "--config.dataset.kwargs.num_test=200"]
# A 60-step tabular MLP with checkpoints at 20, 40 and 60 (the tests' small config).
SMALL = [
    "--config=configs/synthetic.py:tabular",
    *_DATA,
    "--config.num_steps=60",
    "--config.batch_size=32",
    "--config.steps_per_call=20",
    "--config.log_every=10",
    "--config.eval_every=20",
    "--config.checkpoint_every=20",
    "--config.eval_batch_size=256",
    "--config.optimizer.learning_rate=3e-3",
    "--config.progress=False",
]
# The same MLP paused 10 ms per step (tests/fault_models.py; the numbers are unchanged), 300
# steps: slow enough to be killed anywhere between its 18 metrics rows.
SLOW = [
    "--config=configs/synthetic.py",
    "--config.model.name=tests.fault_models:SlowMLP",
    *_DATA,
    "--config.num_steps=300",
    "--config.batch_size=32",
    "--config.steps_per_call=25",
    "--config.checkpoint_every=50",
    "--config.eval_every=50",
    "--config.log_every=25",
    "--config.optimizer.learning_rate=3e-3",
    "--config.progress=False",
]
# SLOW for 1,000 steps (10 s of pauses): a second process starts while the first trains.
CONCURRENT = [*SLOW, "--config.num_steps=1000", "--config.checkpoint_every=250"]
CONCURRENT += ["--config.eval_every=250"]
# A row per step (log_every=1) and three checkpoints: what a full disk meets first varies.
DISK = [*SMALL, "--config.num_steps=120", "--config.log_every=1", "--config.eval_every=40"]
DISK += ["--config.checkpoint_every=40"]
# The tune stage's test config: 8 + 4 trials, 4 per program, the best retrained for 60 steps.
TUNE = [
    *SMALL[:2],
    "--config.dataset.kwargs.num_test=200",
    "--config.num_steps=60",
    "--config.batch_size=32",
    "--config.steps_per_call=20",
    "--config.log_every=10",
    "--config.eval_every=20",
    "--config.eval_batch_size=256",
    "--config.progress=False",
    "--config.search.num_trials=8",
    "--config.search.refine_trials=4",
    "--config.search.trials_per_program=4",
    "--config.search.rounds=2",
    "--config.search.epochs=2.0",
    "--config.search.range_test.num_steps=60",
    "--config.search.range_test.repeats=2",
    "--config.search.heartbeat_seconds=2",  # a trial orphaned by a kill is reclaimed in 6 s
]
# How often a fresh tune run on TUNE reaches each kill point (workflow/killpoints.py).
TUNE_POINT_HITS = {
    "search.created": 2,
    "search.popped": 12,
    "search.claimed": 3,
    "search.trained": 3,
    "search.told": 12,
}
# An MLP of two hidden units, clearly underfit: improve tries a bigger and a deeper one.
IMPROVE = [
    *SMALL[:3],
    "--config.num_steps=100",
    "--config.batch_size=32",
    "--config.steps_per_call=20",
    "--config.log_every=10",
    "--config.eval_every=50",
    "--config.checkpoint_every=50",
    "--config.eval_batch_size=256",
    "--config.optimizer.learning_rate=1e-2",
    "--config.model.hidden_sizes=(2,)",
    "--config.search.range_test.num_steps=60",
    "--config.search.range_test.repeats=1",
    "--config.improve.max_candidates=2",
    "--config.progress=False",
]
# The whole workflow on the easy problem: start simple, debug, evaluate meets the goal.
RUN = [
    *SMALL[:3],
    "--config.num_steps=100",
    "--config.batch_size=32",
    "--config.steps_per_call=20",
    "--config.log_every=10",
    "--config.eval_every=50",
    "--config.checkpoint_every=50",
    "--config.eval_batch_size=256",
    "--config.optimizer.learning_rate=3e-3",
    "--config.debug.train_steps=60",
    "--config.debug.overfit_steps=200",
    "--config.progress=False",
]
COSINE = [*SMALL, "--config.optimizer.schedule.name=cosine"]
# 3,000 fast steps with a row every 20: a plain model (no host callback) to interrupt.
LONG = [*SMALL, "--config.num_steps=3000", "--config.log_every=20", "--config.eval_every=500"]
LONG += ["--config.checkpoint_every=500"]

# name -> (stage, flags) of the uninterrupted runs the faults are compared with.
REFERENCES = {
    "small": ("start_simple", SMALL),
    "slow": ("start_simple", SLOW),
    "concurrent": ("start_simple", CONCURRENT),
    "disk": ("start_simple", DISK),
    "cosine": ("start_simple", COSINE),
    "long": ("start_simple", LONG),
    "tune": ("tune", TUNE),
    "improve": ("improve", IMPROVE),
    "run": ("run", RUN),
}

STAGE_TIMEOUT = 420  # seconds a stage may run before the campaign calls it hung
# Keys that differ between any two runs: times, and the loop form (config.loop=auto), chosen by
# timing both forms, whose results agree to float rounding (workflow/engine/loop_form.py).
TIMING = ("seconds", "per_s", "elapsed", "loop")

# ---------------------------------------------------------------------------------- processes


@dataclasses.dataclass
class Ended:
    """How a stage process ended."""

    rc: int | None  # None: it did not end by itself within its time (then killed)
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        """The non-empty lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.strip()]

    def describe(self) -> str:
        """`exit 2, 1 stderr line(s): <the line>` or the like, for a report."""
        if self.rc is None:
            return f"no exit after {self.seconds:.0f} s (hung; killed)"
        lines = self.stderr_lines
        tracebacks = self.stderr.count("Traceback")
        text = f"exit {self.rc}"
        if tracebacks:
            text += f", {len(lines)} stderr lines, {tracebacks} traceback(s): {lines[-1][:160]}"
        elif lines:
            text += f", {len(lines)} stderr line(s): {lines[0][:200]}"
        return text


_PROCESS_NUMBERS = itertools.count()  # names the log files of each process


class Stage:
    """A started `python -m workflow.<stage>` process; output goes to files in `log_dir`."""

    def __init__(
        self,
        stage: str,
        args: list[str],
        workdir: str | None,
        log_dir: str,
        *,
        env: dict[str, str],
        cwd: str = ROOT,
    ):
        os.makedirs(log_dir, exist_ok=True)
        prefix = os.path.join(log_dir, f"{next(_PROCESS_NUMBERS):03d}-{stage}")
        self.out_path, self.err_path = prefix + ".out", prefix + ".err"
        argv = [sys.executable, "-m", f"workflow.{stage}", *args]
        if workdir is not None:
            argv.append(f"--workdir={workdir}")
        self.started = time.monotonic()
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)

    def running(self) -> bool:
        """Whether the process has not ended yet."""
        return self.proc.poll() is None

    def stdout_lines(self) -> int:
        """Lines written to stdout so far."""
        with open(self.out_path) as f:
            return sum(1 for _ in f)

    def signal(self, sig: int) -> None:
        """Send `sig` (if it still runs)."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def wait(self, timeout: float = STAGE_TIMEOUT) -> Ended:
        """Wait for the end (killing it after `timeout` seconds): how it ended."""
        try:
            rc = self.proc.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        with open(self.out_path) as out, open(self.err_path) as err:
            return Ended(rc, out.read(), err.read(), time.monotonic() - self.started)


# ---------------------------------------------------------------------------------- run dirs


def read_json(path: str) -> Any:
    """A JSON file's value."""
    with open(path) as f:
        return json.load(f)


def metrics_rows(workdir: str) -> list[dict]:
    """metrics.jsonl's rows (a line that does not parse is kept as {'unreadable': line})."""
    rows = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                rows.append({"unreadable": line})
    return rows


def untimed(value: Any) -> Any:
    """`value` without the entries that differ between any two runs (timings)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def located(value: Any, workdir: str) -> Any:
    """`value` with the run directory's path written as <DIR> (runs of one config in two
    directories then compare equal)."""
    text = json.dumps(value).replace(os.path.abspath(workdir), "<DIR>")
    return json.loads(text)


def summary(workdir: str) -> dict:
    """summary.json of a run directory."""
    return read_json(os.path.join(workdir, "summary.json"))


def start_outcome(workdir: str) -> dict:
    """What a training stage ends with: its status, metrics and every metrics.jsonl row."""
    s = summary(workdir)
    return untimed({"status": s["status"], "metrics": s["metrics"], "rows": metrics_rows(workdir)})


def best_config_text(s: dict) -> str | None:
    """The text of the best_config.py a summary names (read, never run), or None."""
    if not s.get("best_config"):
        return None
    with open(s["best_config"]) as f:
        return f.read()


def tune_outcome(workdir: str) -> dict:
    """What tune ends with: the trial table, rounds, range test, best trial, best_config.py
    and the retrained best's metrics."""
    s = summary(workdir)
    keys = ("trials", "rounds", "best", "range_test", "improved_band", "metrics")
    outcome = {**{k: s[k] for k in keys}, "best_config": best_config_text(s)}
    return located(untimed(outcome), workdir)


def improve_outcome(workdir: str) -> dict:
    """What improve ends with: its candidates, decision, metrics and best config."""
    s = summary(workdir)
    keys = ("status", "metrics", "verdicts", "candidates", "decision")
    outcome = {**{k: s.get(k) for k in keys}, "best_config": best_config_text(s)}
    return located(untimed(outcome), workdir)


def run_outcome(workdir: str) -> dict:
    """What workflow.run ends with: its steps and the metrics of each step and of the end."""
    s = summary(workdir)
    steps = read_json(os.path.join(workdir, "workflow.json"))["steps"]
    story = [{k: step[k] for k in ("name", "stage")} | step["summary"]["metrics"] for step in steps]
    return located(untimed({"metrics": s["metrics"], "steps": story}), workdir)


OUTCOMES: dict[str, Callable[[str], dict]] = {
    "start_simple": start_outcome,
    "tune": tune_outcome,
    "improve": improve_outcome,
    "run": run_outcome,
}


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """Where `a` first differs from `b`, e.g. `metrics.test_loss: 0.31 vs 0.30`; None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return f"{path}{key}: only in {'the reference' if key in b else 'this run'}"
            found = first_difference(a[key], b[key], f"{path}{key}.")
            if found:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return f"{path.rstrip('.')}: {len(a)} entries vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}{i}.")
            if found:
                return found
        return None
    if a != b:
        return f"{path.rstrip('.')}: {str(a)[:80]} vs {str(b)[:80]} (reference)"
    return None


def checkpoint_steps(workdir: str) -> list[str]:
    """The entries of checkpoints/, sorted."""
    folder = os.path.join(workdir, "checkpoints")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def findings(workdir: str) -> list[str]:
    """The ids of summary.json's findings ([] without a summary)."""
    try:
        return [f["id"] for f in summary(workdir)["findings"]]
    except (OSError, ValueError, KeyError):
        return []


def complete_trials(db: str) -> int:
    """How many trials have finished in a study file (0 while it is not readable)."""
    if not os.path.exists(db):
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def count_lines(path: str) -> int:
    """Lines in a file (0 if it does not exist)."""
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def tear_last_line(path: str) -> None:
    """Cut the file's last line in half (no newline): a write interrupted mid-line."""
    with open(path, "rb") as f:
        data = f.read()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    with open(path, "wb") as f:
        f.write(data[: start + (len(data) - start) // 2])


def truncate_files(folder: str) -> None:
    """Truncate every file under `folder` to half its size (a partly written copy)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            os.truncate(path, os.path.getsize(path) // 2)


# ---------------------------------------------------------------------------------- the campaign


@dataclasses.dataclass
class Result:
    """What a fault did: what was seen and whether the promise held."""

    observed: str
    survived: bool
    detail: str = ""  # the random choices made, appended to the case's description


class Skip(Exception):
    """The fault cannot be done here (no root for a tmpfs, ...)."""


class Campaign:
    """The scratch space, the environment and the uninterrupted reference runs."""

    def __init__(self, scratch: str, seed: int):
        self.scratch = scratch
        self.seed = seed
        cache = os.path.join(scratch, "cache")  # data and compiled programs, shared by all
        env = {k: v for k, v in os.environ.items() if k not in (killpoints.ENV, "XLA_FLAGS")}
        self.env = env | {
            "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": ROOT,
            "PYTHONUNBUFFERED": "1",
            "DNN_TROUBLESHOOTING_CACHE": cache,
        }
        self._locks = {name: threading.Lock() for name in REFERENCES}
        self._references: dict[str, str | Exception] = {}

    def reference(self, name: str) -> str:
        """The run directory of the uninterrupted reference run `name` (made on first use)."""
        with self._locks[name]:
            if name not in self._references:
                stage, args = REFERENCES[name]
                workdir = os.path.join(self.scratch, "references", name)
                ended = Stage(stage, args, workdir, workdir + "-logs", env=self.env).wait()
                self._references[name] = (
                    workdir
                    if ended.rc == 0
                    else RuntimeError(f"the reference {stage} run failed: {ended.describe()}")
                )
            found = self._references[name]
        if isinstance(found, Exception):
            raise found
        return found


class Context:
    """One fault's fresh directory, random choices and helpers."""

    def __init__(self, campaign: Campaign, name: str):
        self.campaign = campaign
        self.dir = os.path.join(campaign.scratch, "cases", name)
        os.makedirs(self.dir)
        self.rng = random.Random(f"{campaign.seed}:{name}")

    def path(self, *parts: str) -> str:
        """A path inside this fault's directory."""
        return os.path.join(self.dir, *parts)

    def copy_reference(self, name: str, to: str = "run") -> str:
        """A copy of reference run `name` to damage; its path."""
        target = self.path(to)
        shutil.copytree(self.campaign.reference(name), target)
        return target

    def start(
        self,
        stage: str,
        args: list[str],
        workdir: str | None,
        *,
        env: dict[str, str] | None = None,
        cwd: str = ROOT,
    ) -> Stage:
        """Start a stage process."""
        full_env = self.campaign.env | (env or {})
        return Stage(stage, args, workdir, self.path("logs"), env=full_env, cwd=cwd)

    def run(self, stage: str, args: list[str], workdir: str | None, **options) -> Ended:
        """Run a stage process to its end."""
        timeout = options.pop("timeout", STAGE_TIMEOUT)
        return self.start(stage, args, workdir, **options).wait(timeout)

    def kill_when(
        self,
        proc: Stage,
        ready: Callable[[Stage], bool],
        *,
        sig: int = signal.SIGKILL,
        max_delay: float = 0.3,
    ) -> float | None:
        """Send `sig` a random moment (up to `max_delay` s) after `ready(proc)` holds; the
        delay, or None when the process ended first."""
        deadline = time.monotonic() + STAGE_TIMEOUT
        while not ready(proc):
            if not proc.running() or time.monotonic() > deadline:
                return None
            time.sleep(0.02)
        delay = self.rng.uniform(0, max_delay)
        time.sleep(delay)
        if not proc.running():
            return None
        proc.signal(sig)
        return delay


@dataclasses.dataclass
class Case:
    """One fault: its name, what is done, what the stages promise, and the doing."""

    name: str
    done: str
    expected: str
    act: Callable[[Context], Result]


CASES: list[Case] = []


def case(name: str, done: str, expected: str) -> Callable:
    """Register the decorated function as the fault `name`."""

    def register(act: Callable[[Context], Result]) -> Callable[[Context], Result]:
        CASES.append(Case(name, done, expected, act))
        return act

    return register


# ------------------------------------------------------------------------ checks shared by cases

RESUMED = "exit 0 and exactly the uninterrupted run's outcome"
ONE_LINE = "exit 2, one line on stderr naming the problem, no traceback"
NOTHING_WRITTEN = f"{ONE_LINE}, no run directory written"


def same_as_reference(
    ended: Ended, workdir: str, reference: str, stage: str, what: str = "the rerun"
) -> Result:
    """`what` (the process `ended`) exited 0 and left the reference run's outcome."""
    if ended.rc != 0:
        return Result(f"{what}: {ended.describe()}", False)
    try:
        mine, theirs = OUTCOMES[stage](workdir), OUTCOMES[stage](reference)
    except (OSError, ValueError, KeyError) as e:
        return Result(f"{what} exited 0 but its outcome is unreadable: {e!r}"[:300], False)
    difference = first_difference(mine, theirs)
    if difference:
        return Result(f"{what} exited 0 but differs: {difference}", False)
    return Result(f"{what} exited 0 with the uninterrupted outcome", True)


def one_line(ended: Ended, *words: str) -> tuple[bool, str]:
    """Whether `ended` is exit 2 with one stderr line holding every one of `words`."""
    lines = ended.stderr_lines
    ok = ended.rc == 2 and len(lines) == 1 and "Traceback" not in ended.stderr
    missing = [w for w in words if not any(w.lower() in line.lower() for line in lines)]
    return ok and not missing, ended.describe() + (
        f" (missing {', '.join(map(repr, missing))})" if ok and missing else ""
    )


def refused(ended: Ended, *words: str, untouched: dict[str, bytes] | None = None) -> Result:
    """Exit 2 in one line naming `words`, the files in `untouched` unchanged."""
    ok, text = one_line(ended, *words)
    for path, before in (untouched or {}).items():
        if not os.path.exists(path) or open(path, "rb").read() != before:
            ok, text = False, f"{text}; {os.path.basename(path)} was changed"
    return Result(text, ok)


def snapshot(*paths: str) -> dict[str, bytes]:
    """The bytes of files that must stay unchanged."""
    return {path: open(path, "rb").read() for path in paths}


# ---------------------------------------------------------------------------- kill -9 and resume


def kill_and_resume(
    c: Context,
    stage: str,
    reference: str,
    args: list[str],
    choose: Callable[[Context, str, str], tuple[str, Callable[[Stage], bool], dict[str, str]]],
    *,
    sig: int = signal.SIGKILL,
    expect_rc: Callable[[Ended], str | None] | None = None,
) -> Result:
    """Start `stage`, stop it with `sig` at the point `choose` picks, run the same command
    again, and compare with the uninterrupted run."""
    ref = c.campaign.reference(reference)
    workdir = c.path("run")
    what, ready, env = choose(c, workdir, ref)
    proc = c.start(stage, args, workdir, env=env)
    problem = None
    if env:  # a kill point inside the process
        first = proc.wait()
        if first.rc != -signal.SIGKILL:
            return Result(f"not killed at {what}: {first.describe()}", False, what)
    else:
        delay = c.kill_when(proc, ready, sig=sig)
        first = proc.wait()
        if delay is None:
            return Result(f"ended before the kill ({first.describe()})", False, what)
        what += f" + {delay:.2f} s"
        problem = expect_rc(first) if expect_rc is not None else None
    result = same_as_reference(c.run(stage, args, workdir), workdir, ref, stage)
    if problem:
        return Result(f"{problem}; {result.observed}", False, what)
    result.detail = what
    return result


def lines_of(path: str, count: int) -> Callable[[Stage], bool]:
    """A check that the file has at least `count` lines."""
    return lambda proc: count_lines(path) >= count


def exists(path: str) -> Callable[[Stage], bool]:
    """A check that the path exists."""
    return lambda proc: os.path.exists(path)


def after_metrics_row(c: Context, workdir: str, ref: str) -> tuple:
    """Kill after a random row of metrics.jsonl (of those the reference run wrote)."""
    rows = count_lines(os.path.join(ref, "metrics.jsonl"))
    k = c.rng.randint(1, rows - 1)
    return f"after metrics.jsonl row {k} of {rows}", lines_of(f"{workdir}/metrics.jsonl", k), {}


def in_setup(c: Context, workdir: str, ref: str) -> tuple:
    """Kill while the run directory is being set up (config.json just written)."""
    return "once config.json exists", exists(f"{workdir}/config.json"), {}


def at_tune_point(c: Context, workdir: str, ref: str) -> tuple:
    """Kill at a random kill point of the search (WORKFLOW_KILL_AT), a random hit of it."""
    point = c.rng.choice(sorted(TUNE_POINT_HITS))
    hit = c.rng.randint(1, TUNE_POINT_HITS[point])
    spec = f"{point}:{hit}"
    return f"at {spec} ({killpoints.POINTS[point]})", lambda proc: True, {killpoints.ENV: spec}


def after_trials(c: Context, workdir: str, ref: str) -> tuple:
    """Kill once a random number of trials has finished."""
    k = c.rng.randint(1, 11)
    db = os.path.join(workdir, "study.db")
    return f"after {k} of 12 trials finished", lambda proc: complete_trials(db) >= k, {}


def in_improve(c: Context, workdir: str, ref: str) -> tuple:
    """Kill during the baseline's training or after a random line of output (a candidate)."""
    if c.rng.random() < 0.5:
        rows = count_lines(os.path.join(ref, "baseline", "metrics.jsonl"))
        k = c.rng.randint(1, rows - 1)
        path = os.path.join(workdir, "baseline", "metrics.jsonl")
        return f"after baseline/metrics.jsonl row {k} of {rows}", lines_of(path, k), {}
    logs = [f for f in os.listdir(ref + "-logs") if f.endswith(".out")]
    total = count_lines(os.path.join(ref + "-logs", logs[0]))
    k = c.rng.randint(1, max(1, total - 2))
    return f"after output line {k} of {total}", lambda proc: proc.stdout_lines() >= k, {}


def in_run(c: Context, workdir: str, ref: str) -> tuple:
    """Kill workflow.run inside a random step."""
    choice = c.rng.randrange(3)
    if choice == 0:
        rows = count_lines(os.path.join(ref, "1_start_simple", "metrics.jsonl"))
        k = c.rng.randint(1, rows - 1)
        path = os.path.join(workdir, "1_start_simple", "metrics.jsonl")
        return f"in step 1 after metrics.jsonl row {k} of {rows}", lines_of(path, k), {}
    step = ("2_debug", "3_evaluate")[choice - 1]
    return f"once {step}/ exists", exists(os.path.join(workdir, step)), {}


def _register_kills() -> None:
    for i in range(4):
        case(
            f"kill_start_simple_{i + 1}",
            "start_simple (300 steps) killed with SIGKILL at a random point, then the same "
            "command again",
            RESUMED + " (metrics and every metrics.jsonl row)",
        )(lambda c: kill_and_resume(c, "start_simple", "slow", SLOW, after_metrics_row))
    case(
        "kill_start_simple_in_setup",
        "start_simple killed with SIGKILL while setting up its run directory, then again",
        RESUMED,
    )(lambda c: kill_and_resume(c, "start_simple", "slow", SLOW, in_setup))
    for i in range(2):
        case(
            f"kill_tune_at_point_{i + 1}",
            "tune killed with SIGKILL at a random point inside the search (between claiming, "
            "training and recording trials), then the same command again",
            RESUMED + ": the whole trial table, best config and retrained best",
        )(lambda c: kill_and_resume(c, "tune", "tune", TUNE, at_tune_point))
        case(
            f"kill_tune_after_trials_{i + 1}",
            "tune killed with SIGKILL from outside after a random number of finished trials, "
            "then the same command again",
            RESUMED + ": the whole trial table, best config and retrained best",
        )(lambda c: kill_and_resume(c, "tune", "tune", TUNE, after_trials))
    case(
        "kill_improve",
        "improve killed with SIGKILL at a random point (baseline training or candidates), "
        "then the same command again",
        RESUMED + ": the same candidates, decision and best config",
    )(lambda c: kill_and_resume(c, "improve", "improve", IMPROVE, in_improve))
    for i in range(2):
        case(
            f"kill_run_{i + 1}",
            "workflow.run killed with SIGKILL inside a random step, then the same command again",
            RESUMED + ": the same steps and metrics",
        )(lambda c: kill_and_resume(c, "run", "run", RUN, in_run))


_register_kills()


def _stopped_quietly(first: Ended) -> str | None:
    """After SIGINT: exit 130 with at most one line and no traceback (else what happened)."""
    if first.rc == 130 and len(first.stderr_lines) <= 1 and "Traceback" not in first.stderr:
        return None
    return f"after SIGINT: {first.describe()}"


case(
    "sigint_start_simple",
    "start_simple interrupted with SIGINT (Ctrl-C) at a random point, then the same command again",
    "exit 130, at most one line on stderr and no traceback; the rerun: " + RESUMED,
)(
    lambda c: kill_and_resume(
        c,
        "start_simple",
        "long",
        LONG,
        after_metrics_row,
        sig=signal.SIGINT,
        expect_rc=_stopped_quietly,
    )
)
case(
    "sigterm_start_simple",
    "start_simple stopped with SIGTERM at a random point, then the same command again",
    "the rerun: " + RESUMED,
)(lambda c: kill_and_resume(c, "start_simple", "long", LONG, after_metrics_row, sig=signal.SIGTERM))


# ---------------------------------------------------------------------------- damaged files


def rerun_small(c: Context, workdir: str, *extra: str) -> Ended:
    """The reference's command again on `workdir`."""
    return c.run("start_simple", [*SMALL, *extra], workdir)


def as_killed(workdir: str, last_checkpoint: str = "60") -> None:
    """Make a finished copy look killed before its last checkpoint: no summary, no report."""
    shutil.rmtree(os.path.join(workdir, "checkpoints", last_checkpoint))
    for name in ("summary.json", "report.md"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(workdir, name))


def swap_checkpoint(workdir: str) -> None:
    """Put step 20's checkpoint where step 60's is: readable, but not what step 60 wrote."""
    folder = os.path.join(workdir, "checkpoints")
    shutil.rmtree(os.path.join(folder, "60"))
    shutil.copytree(os.path.join(folder, "20"), os.path.join(folder, "60"))


def resumed_with_finding(c: Context, workdir: str, finding: str) -> Result:
    """The small reference's command again: the uninterrupted outcome and `finding` raised."""
    result = same_as_reference(
        rerun_small(c, workdir), workdir, c.campaign.reference("small"), "start_simple"
    )
    if result.survived and finding not in findings(workdir):
        return Result(f"{result.observed}, but no {finding} finding", False)
    return Result(f"{result.observed}; {finding} reported", result.survived)


def fails_closed(c: Context, workdir: str) -> Result:
    """With its checksums unreadable, no checkpoint is trusted unchecked: one line (exit 2)
    naming checksums.json, or the checkpoints set aside with a finding and the uninterrupted
    outcome."""
    ended = rerun_small(c, workdir)
    if ended.rc == 2:
        ok, text = one_line(ended, "checksums")
        return Result(text, ok)
    result = same_as_reference(ended, workdir, c.campaign.reference("small"), "start_simple")
    flagged = [f for f in findings(workdir) if "checkpoint" in f or "checksum" in f]
    if result.survived and not flagged:
        return Result(f"{result.observed}, but nothing reported the unreadable checksums", False)
    return Result(f"{result.observed}; findings {flagged}", result.survived)


@case(
    "torn_metrics_line_mid_run",
    "a run killed while writing metrics.jsonl: its last line cut in half, its last checkpoint "
    "not written; the same command again",
    RESUMED + ", every metrics.jsonl row whole",
)
def _torn_mid_run(c: Context) -> Result:
    workdir = c.copy_reference("small")
    as_killed(workdir)
    tear_last_line(os.path.join(workdir, "metrics.jsonl"))
    ref = c.campaign.reference("small")
    return same_as_reference(rerun_small(c, workdir), workdir, ref, "start_simple")


@case(
    "torn_metrics_line_finished",
    "a finished run's last metrics.jsonl line cut in half; the same command again",
    RESUMED + ", every metrics.jsonl row whole",
)
def _torn_finished(c: Context) -> Result:
    workdir = c.copy_reference("small")
    tear_last_line(os.path.join(workdir, "metrics.jsonl"))
    ref = c.campaign.reference("small")
    return same_as_reference(rerun_small(c, workdir), workdir, ref, "start_simple")


@case(
    "checksums_torn",
    "checkpoints/checksums.json cut in half, and step 60's checkpoint replaced by step 20's "
    "(readable, wrong); the same command again",
    "no checkpoint restored unchecked: exit 2 in one line naming checksums.json, or the "
    "checkpoints set aside with a finding and " + RESUMED,
)
def _checksums_torn(c: Context) -> Result:
    workdir = c.copy_reference("small")
    swap_checkpoint(workdir)
    path = os.path.join(workdir, "checkpoints", "checksums.json")
    os.truncate(path, os.path.getsize(path) // 2)
    return fails_closed(c, workdir)


@case(
    "checksums_garbled",
    "checkpoints/checksums.json overwritten with random bytes, and step 60's checkpoint "
    "replaced by step 20's; the same command again",
    "no checkpoint restored unchecked: exit 2 in one line naming checksums.json, or the "
    "checkpoints set aside with a finding and " + RESUMED,
)
def _checksums_garbled(c: Context) -> Result:
    workdir = c.copy_reference("small")
    swap_checkpoint(workdir)
    with open(os.path.join(workdir, "checkpoints", "checksums.json"), "wb") as f:
        f.write(c.rng.randbytes(300))
    return fails_closed(c, workdir)


@case(
    "checkpoint_truncated_latest",
    "every file of the last checkpoint truncated to half; the same command again",
    "the checkpoint set aside (corrupt_checkpoint) and " + RESUMED,
)
def _truncated_latest(c: Context) -> Result:
    workdir = c.copy_reference("small")
    truncate_files(os.path.join(workdir, "checkpoints", "60"))
    return resumed_with_finding(c, workdir, "corrupt_checkpoint")


@case(
    "checkpoint_all_truncated",
    "every checkpoint's files truncated to half; the same command again",
    "all set aside (corrupt_checkpoint), trained from scratch: " + RESUMED,
)
def _all_truncated(c: Context) -> Result:
    workdir = c.copy_reference("small")
    for step in ("20", "40", "60"):
        truncate_files(os.path.join(workdir, "checkpoints", step))
    return resumed_with_finding(c, workdir, "corrupt_checkpoint")


@case(
    "checkpoint_swapped",
    "step 60's checkpoint replaced by step 20's (readable, but not what step 60 wrote); the "
    "same command again",
    "its checksum fails: set aside (corrupt_checkpoint) and " + RESUMED,
)
def _swapped(c: Context) -> Result:
    workdir = c.copy_reference("small")
    swap_checkpoint(workdir)
    return resumed_with_finding(c, workdir, "corrupt_checkpoint")


@case(
    "summary_json_garbled",
    "a finished run's summary.json overwritten with half a JSON object; the same command again",
    RESUMED,
)
def _summary_garbled(c: Context) -> Result:
    workdir = c.copy_reference("small")
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        f.write('{"stage": "start_simple", "metrics": {')
    ref = c.campaign.reference("small")
    return same_as_reference(rerun_small(c, workdir), workdir, ref, "start_simple")


@case(
    "config_json_garbled",
    "a run directory's config.json overwritten with half a JSON object; the same command again",
    ONE_LINE + " (naming config.json); the checkpoints left as they were",
)
def _config_garbled(c: Context) -> Result:
    workdir = c.copy_reference("small")
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write('{"seed": 0, "model": {')
    before = checkpoint_steps(workdir)
    result = refused(rerun_small(c, workdir), "config.json")
    if checkpoint_steps(workdir) != before:
        return Result(f"{result.observed}; checkpoints changed: {checkpoint_steps(workdir)}", False)
    return result


def _no_config(c: Context, *extra: str) -> Result:
    workdir = c.copy_reference("small")
    os.remove(os.path.join(workdir, "config.json"))
    before = checkpoint_steps(workdir)
    ended = rerun_small(c, workdir, *extra)
    after = checkpoint_steps(workdir)
    if after != before:
        return Result(f"{ended.describe()}; checkpoints {before} became {after}", False)
    if ended.rc == 2:
        ok, text = one_line(ended, "config.json")
        return Result(text + "; checkpoints untouched", ok)
    if extra:
        return Result(f"another config ran on another run's checkpoints: {ended.describe()}", False)
    return same_as_reference(ended, workdir, c.campaign.reference("small"), "start_simple")


case(
    "config_json_removed",
    "a finished run's config.json deleted; the same command again",
    "its checkpoints never set aside: exit 2 in one line naming config.json, or " + RESUMED,
)(_no_config)
case(
    "config_json_removed_other_model",
    "a finished run's config.json deleted, then a command with another model on it",
    ONE_LINE + " (naming config.json); the other run's checkpoints untouched",
)(lambda c: _no_config(c, "--config.model.hidden_sizes=(16,)"))


# ---------------------------------------------------------------------------- two processes


def two_processes(
    c: Context,
    stage: str,
    args: list[str],
    reference: str,
    *,
    second_when: Callable[[Stage], bool] | None = None,
) -> Result:
    """Two processes of one command on one workdir (the second once `second_when` holds):
    one works and the other is refused in one line (or waits its turn), and the run ends
    with the uninterrupted outcome."""
    ref = c.campaign.reference(reference)
    workdir = c.path("run")
    first = c.start(stage, args, workdir)
    if second_when is not None:
        while first.running() and not second_when(first):
            time.sleep(0.02)
    second = c.start(stage, args, workdir)
    ends = [first.wait(), second.wait()]
    seen = " / ".join(e.describe() for e in ends)
    wrong = [e for e in ends if not (e.rc == 0 or (e.rc == 2 and one_line(e)[0]))]
    winners = [e for e in ends if e.rc == 0]
    if wrong or not winners:
        return Result(seen, False)
    result = same_as_reference(winners[0], workdir, ref, stage, "the run")
    return Result(f"{seen}; {result.observed}", result.survived)


case(
    "two_start_simple_at_once",
    "two start_simple processes started together on one workdir",
    "one trains, the other is refused in one line (exit 2) or waits; the run ends with the "
    "uninterrupted outcome (no interleaved metrics rows)",
)(lambda c: two_processes(c, "start_simple", CONCURRENT, "concurrent"))
case(
    "two_start_simple_staggered",
    "a second start_simple process started on the workdir of one that has written 3 rows",
    "one trains, the other is refused in one line (exit 2) or waits; the run ends with the "
    "uninterrupted outcome (no interleaved metrics rows)",
)(
    lambda c: two_processes(
        c,
        "start_simple",
        CONCURRENT,
        "concurrent",
        second_when=lines_of(c.path("run", "metrics.jsonl"), 3),
    )
)
case(
    "two_tune_one_workdir",
    "two tune processes started together on one workdir",
    "one tunes, the other is refused in one line (exit 2) or waits; the trial table, best "
    "config and retrained best are the uninterrupted run's",
)(lambda c: two_processes(c, "tune", TUNE, "tune"))


@case(
    "two_tune_workers_one_study",
    "two tune processes, each with its own workdir, sharing one SQLite study "
    "(--config.search.storage)",
    "both exit 0, every trial trained once, both with the uninterrupted trial table and best",
)
def _two_workers(c: Context) -> Result:
    ref = tune_outcome(c.campaign.reference("tune"))
    db = c.path("shared.db")
    args = [*TUNE, f"--config.search.storage=sqlite:///{db}"]
    procs = [c.start("tune", args, c.path(f"worker{i}")) for i in range(2)]
    ends = [p.wait() for p in procs]
    seen = " / ".join(e.describe() for e in ends)
    if any(e.rc != 0 for e in ends):
        return Result(seen, False)
    keys = ("trials", "rounds", "best")
    for i in range(2):
        mine = tune_outcome(c.path(f"worker{i}"))
        difference = first_difference({k: mine[k] for k in keys}, {k: ref[k] for k in keys})
        if difference:
            return Result(f"{seen}; worker {i} differs: {difference}", False)
    trained = complete_trials(db)
    if trained != 12:
        return Result(f"{seen}; {trained} trials finished in the study for 12 slots", False)
    return Result(f"{seen}; 12 trials, each once; both tables the uninterrupted one", True)


# ---------------------------------------------------------------------------- a full disk

DISK_TIMEOUT = 120  # a stage that has not ended by then on a full disk hangs


@contextlib.contextmanager
def small_disk(c: Context, free_kib: int) -> Iterator[tuple[str, str]]:
    """A 4 MiB tmpfs filled up to `free_kib` KiB: (its mount point, the filler file)."""
    if os.geteuid() != 0:
        raise Skip("mounting a tmpfs needs root")
    mount = c.path("disk")
    os.makedirs(mount)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount], capture_output=True, text=True
    )
    if done.returncode:
        raise Skip(f"cannot mount a tmpfs: {done.stderr.strip()[:200]}")
    try:
        filler = os.path.join(mount, "filler")
        stat = os.statvfs(mount)
        with open(filler, "wb") as f:
            f.write(bytes(max(0, stat.f_bavail * stat.f_frsize - free_kib * 1024)))
        yield mount, filler
    finally:
        subprocess.run(["umount", "-l", mount], capture_output=True)


def full_disk(c: Context, stage: str, args: list[str], reference: str, free_kib: int) -> Result:
    """Run `stage` on a disk with `free_kib` KiB free, then free space and run it again."""
    ref = c.campaign.reference(reference)
    with small_disk(c, free_kib) as (mount, filler):
        workdir = os.path.join(mount, "run")
        ok, text = one_line(c.run(stage, args, workdir, timeout=DISK_TIMEOUT), "no space")
        os.remove(filler)
        resumed = same_as_reference(c.run(stage, args, workdir), workdir, ref, stage)
    observed = f"on the full disk: {text}; with space again: {resumed.observed}"
    return Result(observed, ok and resumed.survived, f"{free_kib} KiB free")


DISK_PROMISE = (
    "exits by itself with exit 2 and one line naming the path and 'no space', no traceback; "
    "with space freed the same command then ends with the uninterrupted outcome"
)
for _free in (8, 24, 64, 160):
    case(
        f"full_disk_{_free}k",
        f"start_simple (a metrics row per step) on a tmpfs with {_free} KiB free; then the "
        "space freed and the same command again",
        DISK_PROMISE,
    )(lambda c, free=_free: full_disk(c, "start_simple", DISK, "disk", free))
case(
    "full_disk_random",
    "start_simple on a tmpfs with a random amount (8-320 KiB) free; then the space freed and "
    "the same command again",
    DISK_PROMISE,
)(lambda c: full_disk(c, "start_simple", DISK, "disk", c.rng.randint(8, 320)))
for _free, _where in ((64, "the study cannot be created"), (140, "the study fills mid-search")):
    case(
        f"full_disk_tune_{_free}k",
        f"tune on a tmpfs with {_free} KiB free ({_where}); then the space freed and the same "
        "command again",
        DISK_PROMISE,
    )(lambda c, free=_free: full_disk(c, "tune", TUNE, "tune", free))
case(
    "full_disk_tune_200k",
    "tune on a tmpfs with 200 KiB free (the retrained best's checkpoint); then the space freed "
    "and the same command again",
    DISK_PROMISE,
)(lambda c: full_disk(c, "tune", TUNE, "tune", 200))


# ---------------------------------------------------------------------------- workflow.json

EVIL = """import pathlib

pathlib.Path({marker!r}).write_text("this file was executed")


def get_config(arg=None):
    pathlib.Path({marker!r}).write_text("this file was executed")
    raise SystemExit(0)
"""


def crafted_workflow(c: Context, craft: Callable[[list[dict], str], None]) -> Result:
    """A finished workflow.run directory whose workflow.json `craft` changed to name a Python
    file; the same command again must not execute that file."""
    workdir = c.copy_reference("run")
    marker, evil = c.path("executed"), c.path("evil_config.py")
    with open(evil, "w") as f:
        f.write(EVIL.format(marker=marker))
    state_path = os.path.join(workdir, "workflow.json")
    state = read_json(state_path)
    craft(state["steps"], evil)
    with open(state_path, "w") as f:
        json.dump(state, f)
    ended = c.run("run", RUN, workdir)
    if os.path.exists(marker):
        return Result(f"the crafted file was executed; {ended.describe()}", False)
    ok = ended.rc in (0, 1) and "Traceback" not in ended.stderr
    ok = ok or one_line(ended)[0]
    return Result(f"not executed; {ended.describe()}", ok)


def _goal_not_met(steps: list[dict]) -> dict:
    """The evaluate step, its goal_met finding removed (so the workflow goes on to tune)."""
    evaluated = steps[-1]
    findings_ = evaluated["summary"]["findings"]
    evaluated["summary"]["findings"] = [f for f in findings_ if f["id"] != "goal_met"]
    return evaluated


def _craft_source(steps: list[dict], evil: str) -> None:
    _goal_not_met(steps)["config_source"] = evil


def _craft_best_config(steps: list[dict], evil: str) -> None:
    evaluated = _goal_not_met(steps)
    tuned = json.loads(json.dumps(evaluated))
    tuned.update(name="4_tune", stage="tune")
    tuned["summary"].update(stage="tune", best_config=evil)
    steps.append(tuned)


NO_CODE = "the named file is never executed; exit 0/1, or 2 with one line; no traceback"
case(
    "crafted_workflow_json_config_source",
    "a finished workflow.run directory whose workflow.json names a Python file as a step's "
    "config_source; the same command again",
    NO_CODE,
)(lambda c: crafted_workflow(c, _craft_source))
case(
    "crafted_workflow_json_best_config",
    "a finished workflow.run directory with a crafted tune step in workflow.json whose "
    "best_config is a Python file; the same command again",
    NO_CODE,
)(lambda c: crafted_workflow(c, _craft_best_config))


def garbled_workflow(c: Context, text: str) -> Result:
    """workflow.json replaced by `text`; the same command again."""
    workdir = c.copy_reference("run")
    with open(os.path.join(workdir, "workflow.json"), "w") as f:
        f.write(text)
    return refused(c.run("run", RUN, workdir), "workflow.json")


case(
    "workflow_json_garbled",
    "a finished workflow.run directory's workflow.json cut mid-object; the same command again",
    ONE_LINE + " (naming workflow.json)",
)(lambda c: garbled_workflow(c, '{"steps": [{"name": "1_start_simple", '))
case(
    "workflow_json_wrong_types",
    "workflow.json holding a step whose summary is a number; the same command again",
    ONE_LINE + " (naming workflow.json)",
)(lambda c: garbled_workflow(c, '{"steps": [{"name": "1_start_simple", "summary": 5}]}'))


# ---------------------------------------------------------------------------- another config


def other_config(c: Context, reference: str, stage: str, args: list[str], *words: str) -> Result:
    """A finished reference's directory, a different command on it: refused in one line,
    the run's summary and report unchanged."""
    workdir = c.copy_reference(reference)
    keep = [os.path.join(workdir, n) for n in ("summary.json", "report.md")]
    return refused(c.run(stage, args, workdir), *words, untouched=snapshot(*keep))


REFUSED = ONE_LINE + " naming the difference; the run's summary and report unchanged"
case(
    "run_again_with_another_lr",
    "workflow.run again on a finished run directory with another learning rate",
    REFUSED,
)(
    lambda c: other_config(
        c, "run", "run", [*RUN, "--config.optimizer.learning_rate=1e-2"], "learning_rate"
    )
)
case(
    "run_again_with_another_seed",
    "workflow.run again on a finished run directory with another seed",
    REFUSED,
)(lambda c: other_config(c, "run", "run", [*RUN, "--config.seed=1"], "seed"))
case(
    "run_again_with_other_data",
    "workflow.run again on a finished run directory with another dataset size",
    REFUSED,
)(
    lambda c: other_config(
        c, "run", "run", [*RUN, "--config.dataset.kwargs.num_train=500"], "num_train"
    )
)
case(
    "start_simple_on_a_tune_directory",
    "start_simple with tune's own config on a finished tune directory",
    REFUSED + " (the stage is part of the directory's identity)",
)(lambda c: other_config(c, "tune", "start_simple", TUNE, "tune"))
case(
    "fewer_steps_on_a_finished_run",
    "start_simple again on a finished 60-step run with num_steps=40",
    REFUSED,
)(
    lambda c: other_config(
        c, "small", "start_simple", [*SMALL, "--config.num_steps=40"], "num_steps"
    )
)


@case(
    "more_steps_with_a_cosine_schedule",
    "a cosine-schedule run killed before its last checkpoint, resumed with num_steps doubled",
    ONE_LINE + " naming num_steps (two schedules are never mixed); the checkpoints unchanged",
)
def _cosine(c: Context) -> Result:
    workdir = c.copy_reference("cosine")
    as_killed(workdir)
    before = checkpoint_steps(workdir)
    result = refused(
        c.run("start_simple", [*COSINE, "--config.num_steps=120"], workdir), "num_steps"
    )
    if checkpoint_steps(workdir) != before:
        return Result(f"{result.observed}; checkpoints became {checkpoint_steps(workdir)}", False)
    return result


# ---------------------------------------------------------------------------- bad input


def nothing_written(
    c: Context,
    args: list[str],
    words: tuple[str, ...],
    *,
    stage: str = "start_simple",
    env: dict[str, str] | None = None,
    timeout: float = STAGE_TIMEOUT,
) -> Result:
    """Bad input: exit 2, one line holding `words`, and no run directory."""
    workdir = c.path("run")
    ok, text = one_line(c.run(stage, args, workdir, env=env, timeout=timeout), *words)
    if os.path.exists(workdir):
        ok, text = False, f"{text}; the run directory was written: {sorted(os.listdir(workdir))}"
    return Result(text, ok)


def bad_input(name: str, done: str, args: list[str], *words: str, **options) -> None:
    """Register a bad-input fault: `args` must be refused before anything is written."""
    case(name, done, NOTHING_WRITTEN)(lambda c: nothing_written(c, args, words, **options))


PARTS = "benchmarks.fault_parts"
bad_input(
    "batch_larger_than_data",
    "batch_size=1000 for 540 training examples",
    [*SMALL, "--config.batch_size=1000"],
    "batch_size",
)
bad_input(
    "devices_do_not_divide_batch",
    "3 devices (XLA_FLAGS) for batch_size=32",
    SMALL,
    "batch_size",
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3"},
)
bad_input(
    "model_raises",
    "a model whose forward pass raises",
    [*SMALL, f"--config.model.name={PARTS}:RaisingMLP"],
    "RaisingMLP",
)
bad_input(
    "loss_wrong_signature",
    "a loss taking only the logits",
    [*SMALL, f"--config.loss={PARTS}:loss_of_one_argument"],
    "loss_of_one_argument",
)
bad_input(
    "loss_raises",
    "a loss that raises",
    [*SMALL, f"--config.loss={PARTS}:raising_loss"],
    "raising_loss",
)
bad_input(
    "loss_returns_a_scalar",
    "a loss returning the batch mean, not a value per example",
    [*SMALL, f"--config.loss={PARTS}:scalar_loss"],
    "scalar_loss",
)
bad_input(
    "loss_returns_per_class_values",
    "a loss returning (batch, classes) values",
    [*SMALL, f"--config.loss={PARTS}:per_class_loss"],
    "per_class_loss",
)
bad_input(
    "loader_raises",
    "a dataset loader that raises",
    [*SMALL, f"--config.dataset.name={PARTS}:raising_loader"],
    "raising_loader",
)
bad_input(
    "dataset_named_sys_exit",
    "--config.dataset.name=sys:exit on the default MNIST-1D config (a loader that exits 0)",
    ["--config=configs/mnist1d.py", "--config.dataset.name=sys:exit", "--config.progress=False"],
    "sys:exit",
)
bad_input(
    "num_steps_huge",
    "num_steps=10**20",
    [*SMALL, f"--config.num_steps={10**20}"],
    "num_steps",
    timeout=60,
)
bad_input("num_steps_negative", "num_steps=-5", [*SMALL, "--config.num_steps=-5"], "num_steps")
bad_input("batch_size_zero", "batch_size=0", [*SMALL, "--config.batch_size=0"], "batch_size")
bad_input(
    "eval_batch_size_zero",
    "eval_batch_size=0",
    [*SMALL, "--config.eval_batch_size=0"],
    "eval_batch_size",
)
bad_input(
    "unknown_config_key",
    "--config.no_such_key=1",
    [*SMALL, "--config.no_such_key=1"],
    "no_such_key",
)
bad_input(
    "missing_config_file",
    "--config=configs/no_such_file.py",
    ["--config=configs/no_such_file.py"],
    "no_such_file.py",
)
bad_input(
    "unknown_model",
    "--config.model.name=no_such_model",
    [*SMALL, "--config.model.name=no_such_model"],
    "no_such_model",
)
bad_input(
    "search_range_inverted",
    "tune with search.lr_range=(1e-3, 1e-6)",
    [*TUNE, "--config.search.lr_range=(1e-3, 1e-6)"],
    "search.lr_range",
    stage="tune",
)
bad_input(
    "study_storage_unreachable",
    "tune with a study database that cannot be reached",
    [*TUNE, "--config.search.storage=postgresql://nobody@127.0.0.1:9/db"],
    "cannot open the study",
    stage="tune",
)


@case("get_config_returns_a_dict", "a config file whose get_config returns a dict", NOTHING_WRITTEN)
def _dict_config(c: Context) -> Result:
    path = c.path("dict_config.py")
    with open(path, "w") as f:
        f.write("def get_config(arg=None):\n    return {'seed': 0, 'num_steps': 10}\n")
    return nothing_written(c, [f"--config={path}"], ("get_config",))


@case(
    "empty_workdir",
    "--workdir= (empty), run from an empty directory",
    ONE_LINE + " (naming --workdir); nothing written in the current directory",
)
def _empty_workdir(c: Context) -> Result:
    here = c.path("cwd")
    os.makedirs(here)
    args = [f"--config={ROOT}/configs/synthetic.py:tabular", *SMALL[1:], "--workdir="]
    ok, text = one_line(c.run("start_simple", args, None, cwd=here), "workdir")
    if os.listdir(here):
        ok, text = False, f"{text}; written in the current directory: {sorted(os.listdir(here))}"
    return Result(text, ok)


@case(
    "workdir_under_a_file",
    "--workdir below a regular file",
    ONE_LINE + " (a file is in the way)",
)
def _under_a_file(c: Context) -> Result:
    blocker = c.path("a_file")
    open(blocker, "w").close()
    return refused(
        c.run("start_simple", SMALL, os.path.join(blocker, "run")), "a file is in the way"
    )


@case(
    "loss_becomes_nan",
    "a loss that becomes NaN once training succeeds (log of a margin)",
    "exit 1, status diverged, a nan_or_inf finding naming the step",
)
def _nan(c: Context) -> Result:
    workdir = c.path("run")
    ended = c.run(
        "start_simple", [*SMALL, "--config.loss=tests.broken:log_of_margin_loss"], workdir
    )
    try:
        s = summary(workdir)
    except (OSError, ValueError):
        return Result(f"no summary: {ended.describe()}", False)
    nan = [f for f in s["findings"] if f["id"] == "nan_or_inf"]
    ok = ended.rc == 1 and s["status"] == "diverged" and bool(nan)
    return Result(f"{ended.describe()}, status {s['status']}, nan_or_inf: {bool(nan)}", ok)


# ---------------------------------------------------------------------------- the campaign


def selected(patterns: str | None) -> list[Case]:
    """The faults whose names match one of the comma-separated shell patterns (all: None)."""
    if not patterns:
        return list(CASES)
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    chosen = [c for c in CASES if any(fnmatch.fnmatchcase(c.name, p) for p in wanted)]
    if not chosen:
        raise SystemExit(f"no fault matches --only={patterns!r}; see --list")
    return chosen


def attempt(campaign: Campaign, fault: Case) -> dict[str, Any]:
    """Do one fault in its fresh directory: its record for the report."""
    started = time.monotonic()
    skipped = False
    try:
        result = fault.act(Context(campaign, fault.name))
    except Skip as e:
        result, skipped = Result(f"skipped: {e}", False), True
    except Exception as e:  # noqa: BLE001 - a fault that cannot be checked is not survived
        result = Result(f"the check itself failed: {type(e).__name__}: {e}"[:400], False)
    done = fault.done + (f" [{result.detail}]" if result.detail else "")
    return {
        "name": fault.name,
        "done": done,
        "expected": fault.expected,
        "observed": result.observed,
        "survived": result.survived,
        "skipped": skipped,
        "seconds": round(time.monotonic() - started, 1),
    }


def report_line(index: int, total: int, record: dict[str, Any]) -> str:
    """The progress line of a finished fault."""
    verdict = "skipped" if record["skipped"] else "survived" if record["survived"] else "FAILED"
    return (
        f"[{index:>2}/{total}] {verdict:<8} {record['name']} ({record['seconds']:.0f} s): "
        f"{record['observed'][:300]}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the campaign; 0 when every fault tried was survived."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON to this file")
    parser.add_argument("--only", help="comma-separated fault names or shell patterns")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices")
    parser.add_argument("--jobs", type=int, default=2, help="faults done at once")
    parser.add_argument("--scratch", help="directory for the runs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    args = parser.parse_args(argv)
    faults = selected(args.only)
    if args.list:
        for fault in faults:
            print(f"{fault.name}: {fault.done}")
        return 0
    scratch = args.scratch or tempfile.mkdtemp(prefix="faults-")
    os.makedirs(scratch, exist_ok=True)
    campaign = Campaign(scratch, args.seed)
    print(f"{len(faults)} faults, {args.jobs} at a time, in {scratch} (seed {args.seed})")
    records: dict[str, dict[str, Any]] = {}
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(attempt, campaign, fault) for fault in faults]
            for future in as_completed(futures):
                record = future.result()
                records[record["name"]] = record
                print(report_line(len(records), len(faults), record), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    ordered = [records[fault.name] for fault in faults]
    tried = [r for r in ordered if not r["skipped"]]
    survived = [r for r in tried if r["survived"]]
    print(f"\nfaults tried / survived: {len(tried)} / {len(survived)}", end="")
    skipped = len(ordered) - len(tried)
    print(f" ({skipped} skipped)" if skipped else "")
    for record in tried:
        if not record["survived"]:
            print(f"  FAILED {record['name']}: {record['observed'][:300]}")
    if args.out:
        payload = {"tried": len(tried), "survived": len(survived), "cases": ordered}
        common.write_json(args.out, payload)
    return 0 if len(survived) == len(tried) else 1


if __name__ == "__main__":
    sys.exit(main())
