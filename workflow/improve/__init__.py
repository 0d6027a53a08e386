"""Stage 5, improve: follow the workflow's decision list for the verdict and keep what works.

    python -m workflow.improve --config=configs/mnist1d.py --workdir=runs/improve

Evaluates the starting point (baseline/, trained or restored), takes the verdict (underfit,
overfit, val overfit), runs the remedies the workflow lists for it as runs of equal length —
those that change only the learning rate or the L2 weight batched with the baseline as trials of
one program; the baseline's own evaluation stands for its run when it is that long — compares
them in one table, keeps the best and says why, and writes it as best_config.py for the next
round of evaluate / tune / improve.
"""

import dataclasses
import functools
import json
import math
import os
from typing import Any

import jax
import ml_collections

import models
from workflow import config_lib, engine, evaluate, experiment, reporting
from workflow.diagnostics import bias_variance
from workflow.diagnostics.findings import VERDICT, declared_ids
from workflow.engine import copy_state, distributed, tasks, trials
from workflow.improve.report import plot_outcomes, report_sections
from workflow.reporting import rundir
from workflow.reporting.summary import Summary
from workflow.search import remedies


@dataclasses.dataclass
class Outcome:
    """One remedy's run: its errors on every split, size and time."""

    remedy: remedies.Remedy
    train_error: float
    val_error: float
    test_error: float
    num_params: int
    seconds: float
    status: str = "ok"
    loop: dict | None = None  # how its steps ran (engine.loop_form.LoopChoice.to_json())

    def to_json(self) -> dict:
        """The summary.json form."""
        r = self.remedy
        return {
            "name": r.name,
            "verdict": r.verdict,
            "reason": r.reason,
            "change": r.change,
            "train_error": self.train_error,
            "val_error": self.val_error,
            "test_error": self.test_error,
            "num_params": self.num_params,
            "seconds": self.seconds,
            "status": self.status,
            "loop": self.loop,
        }


def short_config(config: ml_collections.ConfigDict, base_steps: int) -> ml_collections.ConfigDict:
    """A remedy's run: the improve stage's length (scaled for a remedy that changes the length
    itself, as "train longer" does), no checkpoints."""
    short = config.copy_and_resolve_references()
    length = config.improve.num_steps or base_steps
    short.num_steps = max(1, round(length * config.num_steps / base_steps))
    short.eval_every = short.num_steps
    short.checkpoint_every = 0
    return short


def signature(config: ml_collections.ConfigDict) -> str:
    """The config without its learning rate and L2 weight: equal signatures batch as trials."""
    plain = json.loads(config.to_json_best_effort())
    plain["optimizer"].pop("learning_rate")
    plain.pop("l2")
    return json.dumps(plain, sort_keys=True)


def run_batched(group: list[remedies.Remedy], dataset, base_steps: int) -> list[Outcome]:
    """Remedies that differ only in lr / L2, trained together as trials of one program."""
    config = short_config(group[0].config, base_steps)
    runner = trials.TrialRunner(
        config, dataset.input_shape, dataset.num_classes, task_kind=dataset.task
    )
    hparams = trials.TrialHparams(
        learning_rate=[r.config.optimizer.learning_rate for r in group],
        l2=[r.config.l2 for r in group],
        seed=[engine.init_seed(config)] * len(group),  # the baseline's own initialization
    )
    t0 = engine.now()
    states, result = runner.run(hparams, dataset, config.num_steps)
    errors = {}
    for split in ("train", "test"):
        x, y = dataset.split(split)
        errors[split] = 1 - runner.evaluate(states, x, y)[1]
    seconds = (engine.now() - t0) / len(group)
    num_params = sum(x.size for x in jax.tree.leaves(trials.trial_state(states, 0).params))
    return [
        Outcome(
            remedy,
            float(errors["train"][i]),
            float(1 - result.val_accuracy[i]),
            float(errors["test"][i]),
            num_params,
            seconds,
            "diverged" if result.diverged_at[i] >= 0 else "ok",
            runner.loop,
        )
        for i, remedy in enumerate(group)
    ]


def run_single(remedy: remedies.Remedy, base_steps: int) -> Outcome:
    """A remedy that changes the model, the data or the training loop: its own run."""
    t0 = engine.now()
    config = short_config(remedy.config, base_steps)
    setup = experiment.prepare(config)
    fit = engine.fit(setup.task, setup.state, setup.dataset, config, progress=config.progress)
    metrics = experiment.final_metrics(setup, fit.state)
    return Outcome(
        remedy,
        metrics["train_error"],
        metrics["val_error"],
        metrics["test_error"],
        models.count_params(setup.model),
        engine.now() - t0,
        fit.status,
        fit.loop,
    )


def evaluated_outcome(remedy: remedies.Remedy, summary: Summary) -> Outcome | None:
    """The baseline's outcome read from its evaluation, when that was a run of the remedies'
    length (training is deterministic: retraining it would give the same numbers); else None."""
    config, metrics = remedy.config, summary.metrics
    if config.improve.num_steps not in (None, config.num_steps) or config.early_stopping.enabled:
        return None
    if metrics.get("steps") != config.num_steps:
        return None
    return Outcome(
        remedy,
        metrics["train_error"],
        metrics["val_error"],
        metrics["test_error"],
        metrics["num_params"],
        metrics.get("wall_seconds", 0.0),
        loop=(summary.loops or {}).get("train"),
    )


def run_remedies(
    candidates: list[remedies.Remedy], dataset, baseline: Outcome | None = None
) -> list[Outcome]:
    """Every candidate, the baseline first; one program per group of equal signatures. A given
    `baseline` outcome is used unless the baseline trains anyway, batched with lr / L2 changes."""
    groups: dict[str, list[remedies.Remedy]] = {}
    for remedy in candidates:
        groups.setdefault(signature(remedy.config), []).append(remedy)
    outcomes, base_steps = {}, candidates[0].config.num_steps
    for group in groups.values():
        if len(group) > 1 and trials.trials_per_program(group[0].config) > 1:
            results = run_batched(group, dataset, base_steps)
        elif baseline is not None and len(group) == 1 and group[0] is candidates[0]:
            results = [baseline]
        else:
            results = [run_single(remedy, base_steps) for remedy in group]
        for remedy, outcome in zip(group, results, strict=True):
            outcomes[remedy.name] = outcome
            print_outcome(outcome)
    return [outcomes[r.name] for r in candidates]


def choose(outcomes: list[Outcome], n_val: int, kind: Any = None) -> tuple[Outcome, str]:
    """The best by validation error (ties: fewer parameters), kept only when it beats the
    baseline by more than one standard error of the difference of two error rates on the val
    set (the candidates are scored on the same examples, so their errors are correlated and one
    unpaired standard error is about two paired ones). `kind`: the task (engine/tasks.py) when
    its error is not a rate (a regression's RMSE: its own sampling noise and units)."""
    baseline = outcomes[0]
    ok = [o for o in outcomes if o.status == "ok"] or [baseline]
    best = min(ok, key=lambda o: (o.val_error, o.num_params))
    if kind is None or kind.error_is_rate:
        floor = remedies.remedy_gain_noise(baseline.val_error, n_val, z=1.0)
        fmt = "{:.2%}".format
    else:
        floor = math.sqrt(2 * kind.error_variance(baseline.val_error, max(n_val, 1)))
        fmt = bias_variance.error_format(kind)
    gain = baseline.val_error - best.val_error
    if best is baseline:
        return baseline, "no remedy lowered the validation error; the starting point stays"
    if gain < floor:
        return baseline, (
            f"the best remedy, {best.remedy.name}, lowered the val error by {fmt(gain)}, within "
            f"the noise of {n_val:,} val examples (±{fmt(floor)}); the starting point stays"
        )
    return best, (
        f"{best.remedy.name} ({best.remedy.change}) answers the verdict "
        f"'{best.remedy.verdict}': val error {fmt(baseline.val_error)} → {fmt(best.val_error)} "
        f"({fmt(gain)} better, above the ±{fmt(floor)} noise of {n_val:,} val examples); test "
        f"error {fmt(baseline.test_error)} → {fmt(best.test_error)}"
    )


def range_test_suggestion(setup: experiment.Setup) -> float | None:
    """The learning-rate range test's suggestion for the starting point (None if none)."""
    from workflow import tune

    return tune.configured_range_test(setup).suggested_lr


def run_improve(setup: experiment.Setup, workdir: str, config_source: str) -> Summary:
    """Evaluate the starting point, try the remedies its verdict calls for, keep the best; in
    `workdir`, claimed (locked, its identity checked) before anything is written there."""
    experiment.check_loss(setup)
    run = rundir.RunDir(workdir)
    kind = rundir.KINDS["improve"]
    with run.claimed(kind, "improve", setup.config, setup.dataset.fingerprint()):
        run.create(setup.config)
        return improve(setup, run, config_source)


def improve(setup: experiment.Setup, run: rundir.RunDir, config_source: str) -> Summary:
    """The improve stage's steps in the claimed run directory `run`."""
    config, workdir = setup.config, run.path
    # The remedies' menu, the range test and the batched trials see the whole training split
    # on every process (per-host data applies to engine.fit's runs only).
    whole = experiment.with_whole_training_split(setup)
    dataset = whole.dataset
    initial = dataclasses.replace(whole, state=copy_state(setup.state))
    baseline = evaluate.run_evaluate(setup, os.path.join(workdir, rundir.BASELINE))  # donates
    if distributed.multi_process():  # every process goes on from process 0's verdicts
        baseline = Summary.from_json(distributed.broadcast_json(baseline.to_json()))
    if baseline.status == "diverged":
        return baseline
    # The verdicts that call for a remedy: every one but goal_met.
    remediable = set(declared_ids(VERDICT)) - {"goal_met"}
    verdicts = [f.id for f in baseline.findings if f.id in remediable]
    candidates = remedy_candidates(initial, verdicts)
    outcomes = (
        agreed(run_remedies(candidates, dataset, evaluated_outcome(candidates[0], baseline)))
        if len(candidates) > 1
        else []
    )
    chosen, why = decide(outcomes, verdicts, len(dataset.y_val), dataset.task)
    best_config = None
    if chosen is not None and chosen is not outcomes[0]:
        best_config = write_best_config(run, config_source, chosen, why)
    summary = Summary(
        stage="improve",
        status="ok",
        config=rundir.config_to_dict(config),
        metrics=chosen_metrics(baseline, chosen, outcomes),
        findings=baseline.findings,
        verdicts=verdicts,
        candidates=[o.to_json() for o in outcomes],
        decision={
            "chosen": chosen.remedy.name if chosen else None,
            "why": why,
            "notes": remedies.notes(config, verdicts),  # remedies the model cannot have, and why
        },
        best_config=best_config,
        bias_variance=baseline.bias_variance,
        next=next_commands(workdir, best_config, verdicts),
        dataset=dataset.summary(),
    )
    plot = (
        run.save_figure(rundir.PLOT_CANDIDATES, lambda: plot_outcomes(outcomes))
        if outcomes
        else None
    )
    run.write_summary(summary)
    run.write_report(reporting.report_title(summary, status=False), report_sections(summary, plot))
    return summary


def remedy_candidates(setup: experiment.Setup, verdicts: list[str]) -> list[remedies.Remedy]:
    """The workflow's remedies for `verdicts`, the baseline first; the range test runs (on
    `setup`) only when its learning rate would be tried."""
    config, dataset = setup.config, setup.dataset
    menu = functools.partial(
        remedies.candidates,
        config,
        dataset,
        verdicts,
        available_train=evaluate.available_train_examples(dataset),
        max_candidates=config.improve.max_candidates,
    )
    # The range test only when its lr would be tried: it comes last and may be cut.
    far_lr = 100 * config.optimizer.learning_rate
    wanted = any(r.name == "re-tuned lr" for r in menu(suggested_lr=far_lr))
    return menu(suggested_lr=range_test_suggestion(setup) if wanted else None)


def agreed(outcomes: list[Outcome]) -> list[Outcome]:
    """Process 0's numbers on every process: one decision for the job."""
    numbers = distributed.broadcast_json([outcome_numbers(o) for o in outcomes])
    return [dataclasses.replace(o, **n) for o, n in zip(outcomes, numbers, strict=True)]


def decide(
    outcomes: list[Outcome], verdicts: list[str], n_val: int, kind: Any = None
) -> tuple[Outcome | None, str]:
    """The outcome kept (None: no remedy was run) and why; `kind`: the dataset's task."""
    if outcomes:
        return choose(outcomes, n_val, None if kind is None or kind.error_is_rate else kind)
    if verdicts:
        return None, "no remedy on the decision list applies to this setup"
    return None, "the goal is met: nothing to improve"


def write_best_config(run: rundir.RunDir, config_source: str, chosen: Outcome, why: str) -> str:
    """best_config.py: the chosen remedy's config as a file every stage accepts; its path."""
    path = run.file(rundir.BEST_CONFIG)
    about = (
        f"The improve stage's choice (in the run directory of this file): "
        f"{chosen.remedy.name}.\n\n" + why
    )
    run.write_text(
        rundir.BEST_CONFIG,
        config_lib.config_file_text(path, config_source, chosen.remedy.config, about),
    )
    run.write_json(rundir.BEST_CONFIG_JSON, rundir.config_to_dict(chosen.remedy.config))
    return path


def outcome_numbers(outcome: Outcome) -> dict:
    """An outcome's measured fields (what processes exchange to agree)."""
    fields = ("train_error", "val_error", "test_error", "num_params", "seconds", "status", "loop")
    return {name: getattr(outcome, name) for name in fields}


SPLITS = ("train", "val", "test")


def chosen_metrics(baseline: Summary, chosen: Outcome | None, outcomes: list[Outcome]) -> dict:
    """The baseline's full-length metrics, and the chosen remedy's errors from its run."""
    metrics = {
        f"baseline_{k}": v
        for k, v in baseline.metrics.items()
        if "accuracy" in k or k in ("train_error", "val_error", "test_error")
    }
    if chosen is not None:
        errors = {f"{s}_error": getattr(chosen, f"{s}_error") for s in ("train", "val", "test")}
        metrics.update(chosen=chosen.remedy.name, **errors)
        if "val_accuracy" in baseline.metrics:  # a task scored by accuracy (1 - its error)
            metrics.update(
                {f"{s}_accuracy": 1 - e for s, e in zip(SPLITS, errors.values(), strict=True)}
            )
        metrics.update(num_params=chosen.num_params, candidates=len(outcomes))
    return metrics


def next_commands(workdir: str, best_config: str | None, verdicts: list[str]) -> list[str]:
    """Evaluate the chosen setup at full length (and tune it), or stop when nothing changed."""
    if not best_config:
        return []
    parent = os.path.dirname(os.path.abspath(workdir))
    return [
        experiment.config_command(
            "evaluate", best_config, os.path.join(parent, "evaluate_improved")
        ),
        experiment.config_command("tune", best_config, os.path.join(parent, "tune_improved")),
    ]


def print_outcome(outcome: Outcome) -> None:
    """One finished candidate on the console."""
    from tqdm.auto import tqdm

    kind = tasks.kind_of(outcome.remedy.config)
    fmt = "{:6.2%}" if kind.error_is_rate else "{:8.4g}"  # an RMSE in the targets' units
    name = kind.error_name  # error; a regression's RMSE; per-label error
    tqdm.write(
        f"{outcome.remedy.name:22s} val {name} {fmt.format(outcome.val_error)}  test {name} "
        f"{fmt.format(outcome.test_error)}  ({outcome.remedy.change}, {outcome.seconds:.1f} s)"
    )
