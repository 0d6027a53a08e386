"""What the tune stage leaves: the trial table, axis plots, best_config.py, summary, report."""

import math
import os

import ml_collections
from matplotlib.ticker import MaxNLocator

from workflow import config_lib, experiment, reporting
from workflow.diagnostics.findings import Finding, has_error, rank_findings
from workflow.engine import tasks
from workflow.engine.loop_form import describe_loop
from workflow.reporting import rundir
from workflow.reporting.plots import plt
from workflow.reporting.summary import Summary
from workflow.search import random_search, range_test, space

ROUND_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def open_run(
    workdir: str, config: ml_collections.ConfigDict, data: str
) -> tuple[rundir.RunDir, bool]:
    """The tune directory, claimed (locked; `release` it when done): a new one, or the same
    search resumed (another kind of run, another config or other data is refused).

    Returns the directory and whether it is new."""
    run = rundir.RunDir(workdir)
    new = run.claim(rundir.KINDS["tune"], "tune", config, data)
    try:
        run.create(config)
    except BaseException:
        run.release()
        raise
    return run, new


def shown_metric(metric: str, value: float, kind: tasks.TaskKind) -> tuple[str, float]:
    """The search's metric as a report shows it, (name, value): `val_accuracy` in the task's
    terms (a regression's `val_rmse` in the targets' units, not 1 - RMSE), `val_loss` as is."""
    if metric != "val_accuracy":
        return metric, value
    name, shown = kind.shown_score(value)
    return f"val_{name}", shown


def trial_line(
    record: dict, metric: str, total_epochs: float, kind: tasks.TaskKind | None = None
) -> str:
    """One row of the workflow's table, `acc = 0.412  lr : 1.405e-4  reg: 4.234e-4 (epoch 1 / 100)`
    (a regression's `rmse = 52.349`; `kind` None: classification) and a ✓ when the loss went
    down; epoch e / E: the epochs trained / those of a full run; a trial cut by rung pruning ends
    with `cut at step N`, one a rung kept beyond its fraction for a clearly better metric with
    `kept at step N for its acc`, one taken at an earlier rung than its end with `taken at step
    N`."""
    name, value = shown_metric(metric, record[metric], kind or tasks.Classification())
    name = "acc" if name == "val_accuracy" else name.removeprefix("val_")
    shown = f"{value:.3f}" if math.isfinite(value) else "nan"
    mark = "✓" if record["improved"] else " "
    cut, taken = record.get("pruned_at"), record.get("stopped_at")
    extras = "".join(
        f" {key}={value_text(value)} "
        for key, value in random_search.searched_extras(record).items()
    )
    return (
        f"{name} = {shown}  lr : {record['learning_rate']:.3e}  reg: {record['l2']:.3e} "
        f"{extras}(epoch {record['epochs']:.3g} / {total_epochs:.0f})  {mark}"
        + "".join(
            f"  kept at step {p['step']} for its {name}"
            for p in record.get("rungs", [])
            if p.get("kept_for_metric")
        )
        + (f"  cut at step {cut}" if cut is not None else "")
        + (f"  taken at step {taken}" if taken is not None else "")
    )


def value_text(value) -> str:
    """A searched value as the report and the command line write it (lists as tuples)."""
    if isinstance(value, list | tuple):
        return repr(space.tupled(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_trials(
    records: list[dict],
    total_epochs: float,
    kind: tasks.TaskKind,
    metric: str = "val_accuracy",
) -> None:
    """Print a finished batch of trials as the workflow's table rows, in the task's terms."""
    from tqdm.auto import tqdm

    for record in sorted(records, key=lambda r: r["slot"]):
        tqdm.write(
            f"round {record['round'] + 1} #{record['slot']:<3d} "
            + trial_line(record, metric, total_epochs, kind)
        )


def improved_band(records: list[dict]) -> tuple[float, float] | None:
    """The learning rates of the trials whose loss went down, all rounds: (lowest, highest)."""
    lrs = [r["learning_rate"] for r in records if r["improved"]]
    return (min(lrs), max(lrs)) if lrs else None


def search_findings(records: list[dict], rounds: list, best: dict | None) -> list[Finding]:
    """What the search itself says: nothing trained at all, or a best value on a range's edge."""
    if not any(r["improved"] for r in records):
        lrs = [r["learning_rate"] for r in records]
        return [
            Finding(
                id="loss_plateau",
                severity="error",
                message=f"no trial's training loss went down by 10% ({len(records)} trials, "
                f"lr {min(lrs):.2g}..{max(lrs):.2g})",
                evidence={"trials": len(records), "lr_low": min(lrs), "lr_high": max(lrs)},
                suggestions=[
                    "run workflow.debug: gradients may not flow, or the loss gets probabilities",
                    "widen --config.search.lr_range upwards, or train longer "
                    "(--config.search.epochs)",
                ],
            )
        ]
    findings = []
    names = {"learning_rate": "learning rate", "l2": "L2 weight"}
    for dimension in rounds[-1].dimensions:
        if dimension.scale != "log":
            continue  # a linear or integer range's ends are the user's bounds, often hard ones
        key, low_high = dimension.name, (dimension.low, dimension.high)
        name = names.get(key, key)
        value = best[key]
        position = _position(value, low_high, dimension.scale == "log")
        if key == "l2" and position < 0.1:
            continue  # the least regularization searched is best: nothing lies below it to try
        if position < 0.1 or position > 0.9:
            edge = "lower" if position < 0.1 else "upper"
            findings.append(
                Finding(
                    id="search_range_edge",
                    severity="warning",
                    message=f"the best {name} {value:.3g} lies at the {edge} edge of the last "
                    f"round's range {low_high[0]:.3g}..{low_high[1]:.3g}",
                    evidence={"value": value, "range": list(low_high), "position": position},
                    suggestions=[
                        f"search further {'down' if edge == 'lower' else 'up'}: "
                        + _widen_advice(key, bool(rounds[-1].space))
                        + " to include it, or add a round (--config.search.rounds)"
                    ],
                )
            )
    return findings


def _position(value: float, low_high: tuple, log: bool) -> float:
    """Where `value` lies in the range, 0 at its low end and 1 at its high end."""
    low, high = (math.log10(v) for v in low_high) if log else low_high
    return ((math.log10(value) if log else value) - low) / (high - low)


def _widen_advice(key: str, custom: bool) -> str:
    if custom:
        return f"widen {key}'s range in --config.search.space"
    return f"set --config.search.{'lr_range' if key == 'learning_rate' else 'reg_range'}"


def best_values(config: ml_collections.ConfigDict, best: dict) -> ml_collections.ConfigDict:
    """The config with the best trial's learning rate, L2 weight, every other searched key and
    its initialization seed (init_seed); with the trial's length when it ended at the goal, or
    the rung's it is taken at (what was measured is that run, not a longer one)."""
    tuned = config.copy_and_resolve_references()
    config_lib.apply_overrides(tuned, random_search.searched_extras(best))
    tuned.optimizer.learning_rate = float(best["learning_rate"])
    tuned.l2 = float(best["l2"])
    if "init_seed" in tuned and best.get("seed") is not None:
        tuned.init_seed = int(best["seed"])  # the trial's initialization: trained again, the same
    length = best.get("goal_at") or best.get("stopped_at")
    if length is not None:
        tuned.num_steps = int(length)
    return tuned


def write_best_config(
    run: rundir.RunDir, config: ml_collections.ConfigDict, config_source: str, best: dict
) -> tuple[str, ml_collections.ConfigDict]:
    """best_config.py: the original config file with every changed value, then the tuned ones."""
    tuned = best_values(config, best)
    out = run.file(rundir.BEST_CONFIG)
    about = (
        "Best hyperparameters found by workflow.tune (in the run directory of this file).\n\n"
        f"Round {best['round'] + 1}, trial #{best['slot']}: val_accuracy "
        f"{best['val_accuracy']:.4f} after "
        f"{best['epochs'] * (best.get('stopped_at') or best['steps']) / best['steps']:g} "
        "epochs; learning rate "
        f"{best['learning_rate']:.4g}, L2 weight {best['l2']:.4g}"
        + "".join(f", {k} {value_text(v)}" for k, v in random_search.searched_extras(best).items())
        + ".\n"
        f"The same run at {'full' if tuned.num_steps == config.num_steps else 'its'} length is in "
        f"{rundir.BEST}/ beside this file."
    )
    run.write_text(
        rundir.BEST_CONFIG, config_lib.config_file_text(out, config_source, tuned, about)
    )
    run.write_json(rundir.BEST_CONFIG_JSON, rundir.config_to_dict(tuned))
    return out, tuned


def overrides(best: dict) -> list[str]:
    """The tuned values as command-line overrides of the original config."""
    return [
        f"--config.optimizer.learning_rate={best['learning_rate']:.6g}",
        f"--config.l2={best['l2']:.6g}",
    ] + [
        f"--config.{key}={value:.6g}"
        if isinstance(value, float)
        else f"--config.{key}={value_text(value)}"
        for key, value in random_search.searched_extras(best).items()
    ]


AXIS_LABELS = {"learning_rate": "learning rate", "l2": "reg"}


def plot_search_axes(
    records: list[dict],
    metric: str,
    dimensions: tuple[space.Dimension, ...],
    kind: tasks.TaskKind,
) -> plt.Figure:
    """The metric (in the task's terms, shown_metric) against each searched key (the first
    round's `dimensions`), rounds in colours, ✓ filled: log and linear axes as the key is
    sampled, a categorical key as a strip per value."""
    columns = min(len(dimensions), 3)
    rows_count = -(-len(dimensions) // columns)
    fig, axes = plt.subplots(
        rows_count, columns, figsize=(5.5 * columns, 4 * rows_count), sharey=True, squeeze=False
    )
    for ax in axes.flat[len(dimensions) :]:
        ax.set_visible(False)
    for ax, dimension in zip(axes.flat, dimensions, strict=False):
        key = dimension.name
        position = _axis_position(dimension)
        for index in sorted({r["round"] for r in records}):
            rows = [r for r in records if r["round"] == index]
            color = ROUND_COLORS[index % len(ROUND_COLORS)]
            kinds = (
                ("o", " ✓", lambda r: r["improved"] and r.get("pruned_at") is None),
                ("x", " (loss not down)", lambda r: not r["improved"]),
                ("v", " cut early", lambda r: r["improved"] and r.get("pruned_at") is not None),
            )
            for marker, what, selects in kinds:
                sel = [r for r in rows if selects(r)]
                if sel:
                    ax.scatter(
                        [position(r[key], i) for i, r in enumerate(sel)],
                        [_shown_value(r, metric, kind) for r in sel],
                        c=color,
                        marker=marker,
                        alpha=0.8 if marker == "o" else 0.4,
                        label=f"round {index + 1}{what}",
                    )
        if dimension.scale == "log":
            ax.set_xscale("log")
        elif dimension.scale == "int":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        elif dimension.scale == "cat":
            ax.set_xticks(range(len(dimension.choices)))
            ax.set_xticklabels([value_text(c) for c in dimension.choices], fontsize=8)
        ax.set_xlabel(AXIS_LABELS.get(key, key))
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel(shown_metric(metric, 0.0, kind)[0].replace("_", " "))
    axes.flat[len(dimensions) - 1].legend(fontsize=8)
    fig.suptitle("coarse-to-fine search")
    fig.tight_layout()
    return fig


def _shown_value(record: dict, metric: str, kind: tasks.TaskKind) -> float:
    value = record[metric]
    return shown_metric(metric, value, kind)[1] if math.isfinite(value) else math.nan


def _axis_position(dimension):
    """A value's x position on its key's axis: the value itself, or for a categorical key its
    value's index, spread a little (deterministically) so that the trials of a value show."""
    if dimension.scale != "cat":
        return lambda value, i: value
    choices = list(dimension.choices)
    return lambda value, i: choices.index(space.tupled(value)) + 0.3 * (((i * 0.618) % 1) - 0.5)


def plot_trial_curves(records: list[dict], metric: str) -> plt.Figure:
    """Training-loss curves of every trial, by round (cut ones grey); the round's best bold."""
    rounds = sorted({r["round"] for r in records})
    fig, axes = plt.subplots(1, len(rounds), figsize=(4.5 * len(rounds), 3.6), squeeze=False)
    for ax, index in zip(axes[0], rounds, strict=True):
        rows = [r for r in records if r["round"] == index and r["loss_curve"]]
        best = random_search.best_records(rows, metric, 0.0)[:1]
        for r in rows:
            curve = [math.nan if v is None else v for v in r["loss_curve"]]
            steps = [r["steps"] * (i + 1) / len(curve) for i in range(len(curve))]
            bold = bool(best) and r is best[0]
            ax.plot(
                steps,
                curve,
                color="black" if bold else "tab:gray" if r.get("pruned_at") else "tab:blue",
                lw=2 if bold else 0.6,
                alpha=1 if bold else 0.35,
            )
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"round {index + 1}: {len(rows)} trials")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss")
    return fig


def summarize(
    run: rundir.RunDir,
    setup: experiment.Setup,
    *,
    findings: list[Finding],
    initial: dict,
    sweep: range_test.RangeTest | None,
    rounds: list,
    records: list[dict],
    best: dict | None,
    retrained: Summary | None,
    best_config_path: str | None,
    seconds: float,
    loops: dict[str, dict | None],
    stopped: dict | None = None,
    trained_again: bool | None = None,
) -> Summary:
    """summary.json and report.md of the tune stage; returns the summary. `loops`: how the
    range test, the trials and the retrained best ran their steps (None: not run)."""
    config = setup.config
    findings = rank_findings(findings)
    band = improved_band(records)
    failed = has_error(findings) or (retrained is not None and retrained.status != "ok")
    summary = Summary(
        stage="tune",
        status="failed" if failed else "ok",
        config=rundir.config_to_dict(config),
        metrics=search_metrics(
            initial, sweep, records, best, retrained, band, seconds, stopped, trained_again
        ),
        findings=findings,
        next=next_commands(run, best_config_path),
        best=best,
        best_config=best_config_path,
        overrides=overrides(best) if best else [],
        range_test=sweep.to_json() if sweep is not None else None,
        improved_band=list(band) if band else None,
        rounds=[r.to_json() for r in rounds],
        trials=records,
        search_stop=stopped,
        dataset=setup.dataset.summary(),
        loops={name: loop for name, loop in loops.items() if loop is not None},
    )
    search = config.search
    dimensions = (
        rounds[0].dimensions if rounds else space.default_space(search.lr_range, search.reg_range)
    )
    plots = save_plots(run, records, sweep, config.search.metric, dimensions, setup.task.kind)
    run.write_summary(summary)
    run.write_report(reporting.report_title(summary), report_sections(summary, plots))
    return summary


def best_run_text(metrics: dict, best: dict) -> str:
    """What `best/` holds: the best trial as the search trained it, or the best values trained
    again (config.search.retrain_best)."""
    if "best_trained_again" not in metrics:
        return ""
    if metrics["best_trained_again"]:
        return f"\n\n`{rundir.BEST}/`: the best values trained again at the full length."
    return (
        f"\n\n`{rundir.BEST}/`: this trial as the search trained it to the full length "
        f"(`init_seed` {best['seed']}), recorded without training it again: the model its val "
        "numbers were measured on."
    )


def search_metrics(
    initial: dict,
    sweep: range_test.RangeTest | None,
    records: list[dict],
    best: dict | None,
    retrained: Summary | None,
    band: tuple[float, float] | None,
    seconds: float,
    stopped: dict | None = None,
    trained_again: bool | None = None,
) -> dict:
    """The initial loss, the range test's suggestion, the best trial's values and the best
    run's loss and accuracy on every split (`trained_again`: False when it is the trial as the
    search trained it)."""
    metrics = {**initial, "num_trials": len(records), "search_seconds": seconds}
    metrics["pruned_trials"] = sum(r.get("pruned_at") is not None for r in records)
    metrics["search_stopped_at_goal"] = stopped is not None
    if stopped is not None:
        metrics["skipped_trials"] = stopped["skipped_trials"]
    if sweep is not None and sweep.found:
        metrics["suggested_lr"] = sweep.suggested_lr
        metrics["suggested_lr_in_improved_band"] = bool(
            band and band[0] <= sweep.suggested_lr <= band[1]
        )
    if best is not None:
        metrics.update(
            best_learning_rate=best["learning_rate"],
            best_l2=best["l2"],
            best_trial_val_accuracy=best["val_accuracy"],
            # The task's error: 1 - accuracy, a regression's RMSE (trials score 1 - error).
            best_trial_val_error=1.0 - best["val_accuracy"],
            best_trial_val_loss=best["val_loss"],
        )
    if retrained is not None:
        # Every split metric the task reports (loss, error and its own: engine/tasks.py).
        for name, value in retrained.metrics.items():
            if name.startswith(("train_", "val_", "test_")):
                metrics[name] = value
        metrics["retrain_steps"] = retrained.metrics["steps"]
        metrics["best_trained_again"] = bool(trained_again)
    return metrics


def stop_text(stopped: dict, config: dict) -> str:
    """Where the search stopped at the goal and what it skipped, in one sentence (the error
    in the task's terms: a rate as %, an RMSE in target units)."""
    kind = tasks.kind_of(config)()
    rounds = stopped.get("skipped_rounds", 0)
    later = rounds * config["search"]["refine_trials"] if rounds else 0
    in_round = stopped["skipped_trials"] - later
    what = ["the rest of its round"] if in_round > 0 else []
    what += [f"{rounds} later round{'s' if rounds != 1 else ''}"] if rounds else []
    step, length = stopped.get("step"), stopped.get("round_steps")
    at = f" at step {step} of its {length}" if step and length and step < length else ""
    return (
        f"stopped at the goal: round {stopped['round'] + 1} trial #{stopped['slot']} reached val "
        f"{kind.error_name} {kind.format_error(stopped['val_error'])}{at}, at or below "
        f"{kind.format_error(stopped['goal_val_error'])} (the goal less the val set's noise); "
        f"skipped {stopped['skipped_trials']} trials" + (f" ({' and '.join(what)})" if what else "")
    )


def next_commands(run: rundir.RunDir, best_config_path: str | None) -> list[str]:
    """Evaluate the best config at full length in a folder beside the run directory."""
    if not best_config_path:
        return []
    parent = os.path.dirname(os.path.abspath(run.path))
    return [
        experiment.config_command("evaluate", best_config_path, os.path.join(parent, "evaluate"))
    ]


def save_plots(
    run: rundir.RunDir,
    records: list[dict],
    sweep: range_test.RangeTest | None,
    metric: str,
    dimensions: tuple[space.Dimension, ...],
    kind: tasks.TaskKind,
) -> dict[str, str]:
    """The search's axes (one per searched key), every trial's curve and the range test; paths
    relative to `run`."""
    plots = {
        "search": run.save_figure(
            rundir.PLOT_SEARCH, lambda: plot_search_axes(records, metric, dimensions, kind)
        ),
        "curves": run.save_figure(
            rundir.PLOT_TRIAL_CURVES, lambda: plot_trial_curves(records, metric)
        ),
    }
    if sweep is not None:
        plots["range_test"] = run.save_figure(
            rundir.PLOT_LR_RANGE_TEST, lambda: range_test.plot_range_test(sweep)
        )
    return plots


def report_sections(summary: Summary, plots: dict[str, str]) -> list[tuple[str, str]]:
    """report.md: initial loss, range test, rounds, the trial table, the best, findings, next."""
    m, metric = summary.metrics, summary.config["search"]["metric"]
    kind = tasks.kind_of(summary.config)()
    total_epochs = (
        summary.config["num_steps"]
        * summary.config["batch_size"]
        / summary.dataset["splits"]["train"]["size"]
    )
    sections = [
        (
            "Initial loss",
            f"{m['initial_loss']:.4g} at initialization; expected {m['expected_initial_loss']:.4g}"
            f" ({kind.initial_loss_reference_text}).",
        )
    ]
    rt = summary.range_test
    if rt is not None:
        if rt["suggested_lr"] is None:
            text = "The loss never went down measurably during the sweep."
        else:
            text = (
                f"Suggested learning rate **{rt['suggested_lr']:.3g}**; the loss goes down for "
                f"lr in {rt['band'][0]:.3g}..{rt['band'][1]:.3g}. "
                f"The search's trials improved for lr in "
                + (
                    "{:.3g}..{:.3g}".format(*summary.improved_band)
                    if summary.improved_band
                    else "(none)"
                )
                + "."
            )
        sections.append(
            ("Learning-rate range test", f"{text}\n\n![range test]({plots['range_test']})")
        )
    round_rows = []
    custom = bool(summary.rounds and summary.rounds[0].get("space"))
    for r in summary.rounds:
        rows = [t for t in summary.trials if t["round"] == r["index"]]
        top = random_search.best_records(rows, metric, 0.0)[:1]
        if custom:
            ranges = [space.Dimension.from_json(d).describe() for d in r["space"]]
        else:
            ranges = [
                "{:.2g}..{:.2g}".format(*r["lr_range"]),
                "{:.2g}..{:.2g}".format(*r["reg_range"]),
            ]
        round_rows.append(
            [
                r["index"] + 1,
                *ranges,
                len(rows),
                f"{r['epochs']:.3g} ({r['steps']:,} steps)",
                _rungs_text(r, rows),
                sum(t["improved"] for t in rows),
                reporting.fmt(_shown_value(top[0], metric, kind)) if top else "-",
            ]
        )
    table = "\n".join(
        f"    round {t['round'] + 1} #{t['slot']:<3d} {trial_line(t, metric, total_epochs, kind)}"
        for t in sorted(summary.trials, key=lambda t: (t["round"], -_sort_value(t, metric)))
    )
    sections += [
        (
            "Search",
            reporting.markdown_table(
                [
                    "round",
                    *(
                        [f"{d['key']} range" for d in summary.rounds[0]["space"]]
                        if custom
                        else ["lr range", "reg range"]
                    ),
                    "trials",
                    "epochs",
                    "cut at steps (trials cut)",
                    "✓",
                    f"best {shown_metric(metric, 0.0, kind)[0]}",
                ],
                round_rows,
            )
            + (
                f"\n\nThe search {stop_text(summary.search_stop, summary.config)}."
                if summary.search_stop
                else ""
            )
            + f"\n\n![search]({plots['search']})\n\n![trial curves]({plots['curves']})",
        ),
        ("Trials (best first within each round)", table),
    ]
    best = summary.best
    if best is not None:
        rows = [
            ["learning rate", f"{best['learning_rate']:.4g}"],
            ["L2 weight", f"{best['l2']:.4g}"],
        ]
        rows += [[k, value_text(v)] for k, v in random_search.searched_extras(best).items()]
        for key in ("train", "val", "test"):
            for name in ("accuracy", "rmse", "r2", "macro_f1"):
                if f"{key}_{name}" in m:
                    value = reporting.fmt(m[f"{key}_{name}"])
                    rows.append([f"{key} {name} (full length)", value])
        sections.append(
            (
                "Best",
                reporting.markdown_table(["", ""], rows)
                + f"\n\nConfig: `{summary.best_config}`; overrides: "
                + " ".join(f"`{o}`" for o in summary.overrides)
                + best_run_text(m, best),
            )
        )
    sections.append(("Training loops", loops_table(summary.loops or {})))
    sections.append(("Findings", reporting.findings_markdown(summary.findings)))
    sections.append(("Next", reporting.next_markdown(summary.next)))
    return sections


def _rungs_text(round_: dict, rows: list[dict]) -> str:
    """A round's rungs and how many of its trials each cut: `100 (5), 300 (2)`; `-` when its
    trials ran their whole length."""
    rungs = round_.get("rungs") or []
    if len(rungs) < 2:
        return "-"
    cuts = [sum(t.get("pruned_at") == step for t in rows) for step in rungs[:-1]]
    return ", ".join(f"{step:,} ({n})" for step, n in zip(rungs[:-1], cuts, strict=True))


def loops_table(loops: dict[str, dict]) -> str:
    """How the range test, the trials and the retrained best ran their steps."""
    labels = {"range_test": "range test", "trials": "search trials", "train": "best, retrained"}
    rows = [[label, describe_loop(loops[name])] for name, label in labels.items() if name in loops]
    return reporting.markdown_table(["loop", "how its steps ran"], rows)


def _sort_value(record: dict, metric: str) -> float:
    value = record[metric]
    if not math.isfinite(value):
        return -math.inf
    return value if random_search.METRICS[metric] == "maximize" else -value


def print_summary(summary: Summary) -> None:
    """The verdict on the console: the best hyperparameters, their full-length result, findings."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"tune: {summary.status}")
    table.add_column("")
    table.add_column("value")
    m = summary.metrics
    table.add_row("trials", str(m["num_trials"]))
    if summary.search_stop:
        table.add_row("stopped at the goal", f"{summary.search_stop['skipped_trials']} skipped")
    if summary.best:
        table.add_row("best learning rate", f"{m['best_learning_rate']:.4g}")
        table.add_row("best L2 weight", f"{m['best_l2']:.4g}")
        for key, value in random_search.searched_extras(summary.best).items():
            table.add_row(f"best {key}", value_text(value))
    for key in ("val_accuracy", "test_accuracy", "val_rmse", "test_rmse", "test_macro_f1"):
        if key in m:
            table.add_row(f"{key} (full length)", reporting.fmt(m[key]))
    console.print(table)
    for f in summary.findings:
        console.print(f"{f.severity:7s} {f.id}: {f.message}", soft_wrap=True)
    if summary.best_config:
        console.print(f"best config: {summary.best_config}", soft_wrap=True)
    for cmd in summary.next:
        console.print(f"next: {cmd}", soft_wrap=True)
