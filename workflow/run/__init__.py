"""The whole workflow in one command, with its report.

    python -m workflow.run                       # offline MNIST-1D, the default
    python -m workflow.run --config=configs/digits.py --workdir=runs/digits
    python -m workflow.run --config=configs/synthetic.py:underfit --workdir=runs/underfit
    python -m workflow.run --config=configs/synthetic.py:overfit --workdir=runs/overfit

start simple → debug (stops there, fixes named, when an error stands) → evaluate → then rounds of
tune → evaluate → improve → evaluate until the goal is met, nothing changes, or
`config.budget` is spent. With `--config.debug.fix=True`, a config-level repair the debug step
verified (its `config_fix` finding: the rerun stands without a warning or error) is carried on:
start simple runs again with it and every later step trains with it; the story names the flags.
One sub-directory per step; a killed run resumes from the steps it
finished (each stage also resumes its own work), each step on the config it started on. At the
top, summary.json holds the final model's metrics and, as findings, each decision and its
evidence; report.md and a self-contained report.html tell the whole story.

The run directory is data: workflow.json records each step's config as JSON values over the
command line's config, and a tune or improve step's choice is read from its best_config.json,
never from its best_config.py. Rerun on the same --workdir, the command line's config must be
the one recorded (but `budget` and `progress`), and each finished step's directory must still
hold the run recorded for it.

It runs as one process: as a multi-process job (workflow/engine/distributed.py) it refuses at once
(exit 2); its stages run multi-process one by one.
"""

import dataclasses
import os
import re

import ml_collections

from workflow import config_lib, debug, engine, evaluate, experiment, improve, tune
from workflow.diagnostics.findings import VERDICT, Finding, declared_ids
from workflow.engine import tasks
from workflow.errors import UsageError
from workflow.reporting import rundir
from workflow.reporting.summary import Summary
from workflow.run import report
from workflow.search import random_search
from workflow.tune import report as tune_report


@dataclasses.dataclass
class Step:
    """One finished step of the workflow: which stage, where, on which config, its summary.

    It ran on the command line's config with `values` (flattened config keys) applied, which
    its stage resolved into `config` (its directory's config.json); `chosen` holds what a tune or
    improve step chose, for the steps after it. All are JSON: workflow.run never executes a file
    its run directory names (`config_source` is shown, never loaded).
    """

    name: str
    stage: str
    workdir: str
    config_source: str
    summary: Summary
    values: dict = dataclasses.field(default_factory=dict)
    config: dict = dataclasses.field(default_factory=dict)
    chosen: dict | None = None

    def to_json(self) -> dict:
        """The workflow.json form."""
        return {
            "name": self.name,
            "stage": self.stage,
            "workdir": self.workdir,
            "config_source": self.config_source,
            "values": self.values,
            "config": self.config,
            "chosen": self.chosen,
            "summary": self.summary.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Step":
        """A step read back from workflow.json."""
        return cls(**{**data, "summary": Summary.from_json(data["summary"])})


@dataclasses.dataclass(frozen=True)
class Point:
    """A config a step runs on: the command line's with `values`, shown as `source` (the
    --config, or the best_config.py a tune or improve step wrote)."""

    source: str
    values: dict


# A step's name, which is also its sub-directory: "4_tune".
STEP_NAME = re.compile(r"\d+_(start_simple|debug|evaluate|tune|improve)")

# Keys of the command line's config that every step takes from it (what is shown and how long
# the workflow may take), whatever a step recorded.
COMMAND_LINE_KEYS = ("progress", "budget")


class Workflow:
    """The steps of one workflow run, each recorded in workflow.json as it starts (its config)
    and as it finishes (its summary)."""

    def __init__(self, workdir: str, config: ml_collections.ConfigDict, source: str):
        self.workdir = workdir
        self.run = rundir.RunDir(workdir)
        self.config = config
        self.source = source  # the --config file[:arg] (its overrides are in `config`)
        self.steps: list[Step] = []
        self.started: dict[str, dict] = {}  # step name -> the config values it started on
        self.t_start = engine.now()
        self.seconds_before = 0.0  # spent by earlier, interrupted invocations
        if os.path.exists(self.run.file(rundir.WORKFLOW)):
            self._load()

    def _load(self) -> None:
        """workflow.json as data: every config it records checked before any is used."""
        where = self.run.file(rundir.WORKFLOW)
        try:
            state = self.run.read_json(rundir.WORKFLOW)
            steps = [Step.from_json(s) for s in state["steps"]]
            started = dict(state.get("started", {}))
            seconds = float(state.get("seconds", 0.0))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(
                f"{where} does not read back as this version's workflow record "
                f"({type(e).__name__}: {str(e)[:200]}); use a new --workdir"
            ) from None
        for step in steps:
            if not STEP_NAME.fullmatch(step.name) or step.stage not in rundir.KINDS:
                raise UsageError(
                    f"{where} records a step {step.name!r} of stage {step.stage!r}, which this "
                    "workflow never runs; use a new --workdir"
                )
            # Its own sub-directory, wherever the recorded path points (moved, copied, or not
            # ours): a step's files are always inside the workflow's directory.
            step.workdir = os.path.join(self.workdir, step.name)
            self.config_from(step.values)
            if step.chosen is not None:
                self.config_from(step.chosen)
        for values in started.values():
            self.config_from(values)
        self.steps, self.started, self.seconds_before = steps, started, seconds

    @property
    def seconds(self) -> float:
        """Wall time spent on this workflow, over every invocation."""
        return self.seconds_before + engine.now() - self.t_start

    def budget_left(self) -> float:
        """Seconds left of config.budget.minutes (inf without a budget)."""
        minutes = self.config.budget.minutes
        return float("inf") if minutes is None else 60 * minutes - self.seconds

    def done(self, name: str) -> Step | None:
        """The finished step `name`, when an earlier invocation ran it."""
        return next((s for s in self.steps if s.name == name), None)

    def _save(self) -> None:
        """The workflow's config.json (identity) and workflow.json, atomically."""
        self.run.create(self.config)
        self.run.write_json(
            rundir.WORKFLOW,
            {
                "steps": [s.to_json() for s in self.steps],
                "started": self.started,
                "seconds": self.seconds,
            },
        )

    def record(self, step: Step) -> Step:
        """Add a finished step and save the workflow state atomically."""
        self.steps.append(step)
        self._save()
        return step

    def config_from(self, values: dict) -> ml_collections.ConfigDict:
        """The command line's config with `values` (from workflow.json or a stage's
        best_config.json: data, so no value may name code to import)."""
        where = self.run.file(rundir.WORKFLOW)
        return config_lib.apply_saved_values(self.config, values, where)

    def values_of(self, config: dict) -> dict:
        """The flattened values in which `config` (plain JSON data) differs from the command
        line's config."""
        changed = config_lib.changed_values(self.config, config)
        return {
            key: value
            for key, value in changed.items()
            if not any(key == k or key.startswith(f"{k}.") for k in COMMAND_LINE_KEYS)
        }

    def step(self, name: str, stage: str, point: Point, action, adjust=None) -> Step:
        """Run `action(setup, workdir)` as step `name` on the config `point` names unless it
        finished before; `adjust` may change the step's config (the search sized to the
        budget). A step started before keeps the config it started on."""
        finished = self.done(name)
        if finished is not None:
            self.check_finished(finished)
            return finished
        workdir = os.path.join(self.workdir, name)
        if name not in self.started:
            config = self.config_from(point.values)
            config = adjust(config) if adjust else config
            self.started[name] = self.values_of(rundir.config_to_dict(config))
            self._save()
        setup = experiment.prepare(self.config_from(self.started[name]))
        resolved = rundir.config_to_dict(setup.config)  # as the stage writes its config.json
        print_step(name, stage)
        summary = action(setup, workdir)
        step = Step(
            name,
            stage,
            workdir,
            point.source,
            summary,
            values=self.started[name],
            config=resolved,
            chosen=self.chosen_by(workdir, summary),
        )
        return self.record(step)

    def chosen_by(self, workdir: str, summary: Summary) -> dict | None:
        """What a tune or improve step chose (its best_config.json), as values; None when it
        chose nothing."""
        if not summary.best_config:
            return None
        values = self.values_of(rundir.RunDir(workdir).read_json(rundir.BEST_CONFIG_JSON))
        self.config_from(values)  # data: checked like workflow.json's values
        return values

    def check_finished(self, step: Step) -> None:
        """A finished step's directory still holds the run workflow.json records for it."""
        run = rundir.RunDir(step.workdir)
        kind = rundir.KINDS[step.stage]
        problem = None
        if run.kind != kind:
            problem = f"no {kind} run (its identity.json is missing, damaged or another kind's)"
        else:
            try:
                stored = run.read_json(rundir.CONFIG)
            except (OSError, ValueError) as e:
                stored, problem = None, f"no readable config.json ({type(e).__name__})"
            if stored is not None:
                refusal = rundir.config_refusal(kind, stored, step.config)
                problem = refusal and f"a run {refusal}"
        if problem:
            raise UsageError(
                f"workflow.json records step {step.name} as finished in {step.workdir}, which "
                f"holds {problem}; restore it or use a new --workdir"
            )


def evaluate_copy(trained_dir: str) -> callable:
    """An evaluate step on a copy of a finished training run (nothing is retrained)."""

    def action(setup: experiment.Setup, workdir: str) -> Summary:
        rundir.RunDir(workdir).copy_from(trained_dir)
        return evaluate.run_evaluate(setup, workdir)

    return action


def improve_from(evaluated_dir: str, source: str) -> callable:
    """An improve step whose baseline is a copy of the run just evaluated (not retrained)."""

    def action(setup: experiment.Setup, workdir: str) -> Summary:
        rundir.RunDir(os.path.join(workdir, rundir.BASELINE)).copy_from(evaluated_dir)
        return improve.run_improve(setup, workdir, source)

    return action


def run_workflow(workflow: Workflow) -> Summary:
    """Every step in order; returns the top-level summary."""
    flags_source = workflow.source
    command_line = Point(flags_source, {})
    start = workflow.step(
        "1_start_simple",
        "start_simple",
        command_line,
        lambda s, d: experiment.train_and_report(s, d, "start_simple", None),
    )
    checked = workflow.step("2_debug", "debug", command_line, debug.run_debug)
    repair = config_repair(checked.summary)
    if repair is None and checked.summary.status != "ok":
        return finish(workflow, stopped="debug found an error: fix it first (see 2_debug)")
    point, number = command_line, 3
    if repair is not None:
        # debug.fix repaired the setup by config: every later step trains with the repair, from
        # a start_simple run of its own (the first one trained the broken setup).
        point = Point(flags_source, dict(repair["overrides"]))
        start = workflow.step(
            "3_start_simple",
            "start_simple",
            point,
            lambda s, d: experiment.train_and_report(s, d, "start_simple", None),
        )
        number = 4
    current = workflow.step(f"{number}_evaluate", "evaluate", point, evaluate_copy(start.workdir))
    number += 1
    # One trial's training speed and the training-set size, to size each search to the budget.
    speed = start.summary.metrics.get("steps_per_s") or 0.0
    num_train = start.summary.dataset["splits"]["train"]["size"]
    for round_index in range(workflow.config.budget.max_rounds):
        if current.summary.has_finding("goal_met"):
            return finish(workflow, stopped=goal_skipped(current, round_index, "tune"))
        if workflow.budget_left() <= 0:
            return finish(workflow, stopped="the time budget (config.budget.minutes) is spent")
        # best_config.py files all start from the command line's config file: a stage that
        # writes one loads its base, which must never be a file a run directory holds.
        tuned = workflow.step(
            f"{number}_tune",
            "tune",
            point,
            lambda s, d: tune.run_tune(s, d, flags_source),
            adjust=lambda c: size_search(c, 0.35 * workflow.budget_left(), speed, num_train),
        )
        number += 1
        if tuned.chosen is not None:
            point = Point(tuned.summary.best_config, tuned.chosen)
            current = workflow.step(
                f"{number}_evaluate",
                "evaluate",
                point,
                evaluate_copy(os.path.join(tuned.workdir, rundir.BEST)),
            )
            number += 1
        if current.summary.has_finding("goal_met"):
            return finish(workflow, stopped=goal_skipped(current, round_index, "improve"))
        if workflow.budget_left() <= 0:
            break
        run_seconds = current.summary.metrics.get("wall_seconds") or 0.0
        improved = workflow.step(
            f"{number}_improve",
            "improve",
            point,
            improve_from(current.workdir, flags_source),
            adjust=lambda c, t=run_seconds: size_improve(c, 0.6 * workflow.budget_left(), t),
        )
        number += 1
        if improved.chosen is None:
            break  # no remedy beat the tuned setup: tuning it again would repeat this round
        point = Point(improved.summary.best_config, improved.chosen)
        current = workflow.step(
            f"{number}_evaluate",
            "evaluate",
            point,
            lambda s, d: evaluate.run_evaluate(s, d),
        )
        number += 1
    return finish(workflow)


def config_repair(debug_summary: Summary) -> dict | None:
    """The evidence of the debug step's `config_fix` finding when its rerun repaired the setup
    (with `debug.fix`: the overrides applied, the finding they fix), else None."""
    fix = next((f for f in debug_summary.findings if f.id == "config_fix"), None)
    if fix is None or not fix.evidence.get("repaired") or not fix.evidence.get("overrides"):
        return None
    return fix.evidence


def override_flags(values: dict) -> str:
    """Flattened config values as command-line flags: '--config.l2=0.0'."""
    return " ".join(f"--config.{key}={value}" for key, value in values.items())


def goal_skipped(met: Step, round_index: int, next_stage: str) -> str:
    """Why the workflow ended at step `met` (its evaluation met the goal) and what it skipped:
    the rest of this round from `next_stage` on, and the later rounds budget.max_rounds allows."""
    rest = "tune, evaluate, improve, evaluate" if next_stage == "tune" else "improve, evaluate"
    return (
        f"the goal is met at {met.name}: skipped {rest} of round {round_index + 1} and any later "
        "round (config.budget.max_rounds)"
    )


def search_cost(search, s0: int, full_steps: int, unit: int) -> float:
    """Training steps (summed over trials) of a search sized by `search`, each round cut at its
    rungs as successive halving would (`unit`: config.steps_per_call)."""
    from workflow.search import pruning

    def round_cost(trials: int, steps: int) -> float:
        rungs = pruning.rung_steps(steps, search.prune_rungs, search.prune_factor, unit)
        return pruning.halving_cost(trials, rungs, search.prune_factor)

    cost, steps = round_cost(search.num_trials, s0), s0
    for index in range(1, search.rounds):
        steps = round(steps * search.refine_epochs_factor)
        last = index == search.rounds - 1
        length = full_steps if last and search.last_round_full_length else steps
        cost += round_cost(search.refine_trials, length)
    return cost


def size_search(
    config: ml_collections.ConfigDict, seconds: float, steps_per_s: float, num_train: int
) -> ml_collections.ConfigDict:
    """The search shrunk to fit `seconds` at the measured training speed (one trial's steps/s):
    first the last round loses its full length, then every round loses trials, then a round.
    It is an upper bound: a search that stops at the goal (search.stop_at_goal) ends sooner."""
    if not (seconds < float("inf") and steps_per_s > 0):
        return config
    from workflow.search import random_search as search_lib

    sized = config.copy_and_resolve_references()
    s = sized.search
    s0 = min(search_lib.steps_for(s.epochs, num_train, sized.batch_size), sized.num_steps)
    affordable = seconds * steps_per_s - (sized.num_steps if s.retrain_best else 0)
    if search_cost(s, s0, sized.num_steps, sized.steps_per_call) > affordable:
        s.last_round_full_length = False
    cost = search_cost(s, s0, sized.num_steps, sized.steps_per_call)
    if cost > affordable:
        scale = max(affordable, 0) / cost
        s.num_trials = max(8, int(s.num_trials * scale))
        s.refine_trials = max(4, int(s.refine_trials * scale))
    if search_cost(s, s0, sized.num_steps, sized.steps_per_call) > affordable and s.rounds > 2:
        s.rounds = 2
    return sized


def size_improve(
    config: ml_collections.ConfigDict, seconds: float, run_seconds: float
) -> ml_collections.ConfigDict:
    """As many remedies (the workflow's first ones) as runs of `run_seconds` fit in `seconds`,
    counting the baseline's run; at least one."""
    if not (seconds < float("inf") and run_seconds > 0):
        return config
    sized = config.copy_and_resolve_references()
    affordable = int(seconds // run_seconds) - 1
    sized.improve.max_candidates = max(1, min(config.improve.max_candidates, affordable))
    return sized


def decisions(workflow: Workflow) -> list[Finding]:
    """How the final model came about: one info finding per step, with its evidence."""
    verdict_ids = declared_ids(VERDICT)
    out = []
    for step in workflow.steps:
        s = step.summary
        m = s.metrics
        extra = {}  # an improve step's choice: what changed and against which verdict
        if step.stage == "evaluate":
            verdicts = [f.id for f in s.findings if f.id in verdict_ids]
            message = f"{step.name}: {test_result(s)}, " + (
                f"verdict {', '.join(verdicts)}" if verdicts else "no verdict"
            )
        elif step.stage == "tune":
            message = (
                f"{step.name}: {m.get('num_trials', 0)} trials; best lr "
                f"{m.get('best_learning_rate', float('nan')):.3g}, L2 "
                f"{m.get('best_l2', float('nan')):.3g}"
            )
            # The other searched keys' best values (a width, a batch size) are choices too.
            extras = random_search.searched_extras(s.best or {})
            message += "".join(f", {k} {tune_report.value_text(v)}" for k, v in extras.items())
            if s.search_stop:
                message += f"; {tune_report.stop_text(s.search_stop, s.config)}"
                extra = {"search_stop": s.search_stop}
        elif step.stage == "improve":
            # No decision when the starting point diverged (the summary is its evaluation).
            decision = s.decision or {"chosen": None, "why": f"status {s.status}"}
            chosen = next((c for c in s.candidates or [] if c["name"] == decision["chosen"]), None)
            if chosen is None or chosen["name"] == "baseline":
                message = f"{step.name}: no change — {decision['why']}"
            else:  # the why names the remedy, what it changed and the evidence
                message = f"{step.name}: {decision['why']}"
                extra = {"chosen": chosen["name"]} | {
                    k: chosen[k] for k in ("verdict", "change", "val_error", "test_error")
                }
        elif step.stage == "debug":
            message = f"{step.name}: {s.status} ({len(s.findings)} findings)"
            repair = config_repair(s)
            if repair is not None:
                message += (
                    f"; repaired by config: {override_flags(repair['overrides'])} "
                    f"(`{repair['finding']}`'s first config-level suggestion; the debug checks "
                    "rerun on it stand without a warning or error): every later step trains "
                    "with it"
                )
                extra = {"config_fix": {k: repair[k] for k in ("finding", "overrides")}}
        else:
            message = f"{step.name}: {test_result(s)}"
        out.append(
            Finding(
                id="workflow_step",
                severity="info",
                message=message,
                evidence={
                    "stage": step.stage,
                    "workdir": step.workdir,
                    "config": step.config_source,
                    **extra,
                },
            )
        )
    return out


def finish(workflow: Workflow, stopped: str | None = None) -> Summary:
    """The top-level summary.json, report.md and report.html."""
    final = final_step(workflow)
    blocking = [f for f in final.summary.findings if f.severity == "error"]
    summary = Summary(
        stage="run",
        status="failed" if stopped and "debug" in stopped else "ok",
        config=rundir.config_to_dict(workflow.config),
        metrics={
            **final.summary.metrics,
            "workflow_seconds": workflow.seconds,
            "steps_run": len(workflow.steps),
        },
        findings=blocking
        + decisions(workflow)
        + [f for f in final.summary.findings if f.severity != "error"],
        next=final.summary.next,
        stopped=stopped,
        final={
            "step": final.name,
            "config": final.config_source,
            "workdir": final.workdir,
            "model": final.summary.config.get("model"),
        },
        reproduce=reproduce_commands(workflow, final),
        steps=[
            {
                "name": s.name,
                "stage": s.stage,
                "workdir": s.workdir,
                "config_source": s.config_source,
            }
            for s in workflow.steps
        ],
    )
    workflow.run.write_summary(summary)
    report.write_reports(workflow.run, summary, workflow.steps)
    return summary


def test_result(summary: Summary) -> str:
    """'test accuracy 97.20%', or the task's test error ('test RMSE 54.3') without one."""
    m = summary.metrics
    if "test_accuracy" in m or "test_error" not in m:
        return f"test accuracy {m.get('test_accuracy', float('nan')):.2%}"
    kind = tasks.kind_of(summary.config)()
    return f"test {kind.error_name} {kind.format_error(m['test_error'])}"


def final_step(workflow: Workflow) -> Step:
    """The evaluated step with the lowest validation error (the task's: 1 - accuracy, an RMSE;
    never the test error: choosing on it would make the reported test number optimistic); the
    last step when none was."""
    evaluated = [
        s for s in workflow.steps if s.stage == "evaluate" and "val_error" in s.summary.metrics
    ]
    if not evaluated:
        return workflow.steps[-1]
    return min(reversed(evaluated), key=lambda s: s.summary.metrics["val_error"])


def reproduce_commands(workflow: Workflow, final: Step) -> list[str]:
    """The exact commands that train and evaluate the final model again."""
    if final.config_source == workflow.source:
        # A debug.fix repair is a value over the command line's config: its flags go with it.
        flags = override_flags(final.values)
        return [" ".join(filter(None, [experiment.stage_command("evaluate", "runs/final"), flags]))]
    return [experiment.config_command("evaluate", final.config_source, "runs/final")]


def print_step(name: str, stage: str) -> None:
    """A header on the console for each step."""
    from rich.console import Console

    Console().rule(f"{name} ({stage})")
