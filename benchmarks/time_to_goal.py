"""Time to the goal: `python -m workflow.run` as a user runs it, with the search that stops at the
goal and cuts hopeless trials at rungs (the default) beside the old fixed-budget search
(FIXED_BUDGET: `--config.search.stop_at_goal=False --config.search.prune_rungs=1`), in one
invocation, on the same machine and load (the load average is recorded beside each run).

Each problem's two workflows run one after the other as separate processes, each with a cold
compilation cache of its own (a new user's first run). For each it reports the workflow's own
wall time (summary.json `workflow_seconds`) until it ended (the goal met, or the budget or the
rounds spent), the final test accuracy, whether the goal was met and why the workflow stopped.

Problems: mnist1d (the default: configs/mnist1d.py, the LSTM), digits (configs/digits.py) and
synthetic (configs/synthetic.py:sequence, a known irreducible error).

`--seeds` runs each problem's pair once per seed (`--config.seed`: the initialization, the data
order, the search's points): one run's test accuracy moves by a point with the seed (the val set
that picks the best trial is small), so "the same or better" is judged on the mean over seeds,
the paired difference against twice its standard error (`same_or_better`); the times are means
too (`half_time`: the stop-at-goal workflow in at most half the fixed budget's time).

Command:
    python -m benchmarks.time_to_goal --out=benchmarks/results/cpu_time_to_goal.json
    python -m benchmarks.time_to_goal --problems=mnist1d --out=/tmp/ttg.json
    python -m benchmarks.time_to_goal --problems=mnist1d,synthetic --seeds=0,1,2 --out=/tmp/s.json
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import common

PROBLEMS = {
    "mnist1d": "configs/mnist1d.py",
    "digits": "configs/digits.py",
    "synthetic": "configs/synthetic.py:sequence",
}
# The flags that keep the old search: every trial runs its whole length, every round runs.
FIXED_BUDGET = ("--config.search.stop_at_goal=False", "--config.search.prune_rungs=1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_workflow(config: str, workdir: str, *overrides: str) -> dict[str, Any]:
    """One `python -m workflow.run` in a fresh directory with a cold compilation cache."""
    command = [
        sys.executable,
        "-m",
        "workflow.run",
        f"--config={config}",
        f"--workdir={workdir}",
        f"--compilation_cache={workdir}-jax-cache",
        "--config.progress=False",
        *overrides,
    ]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    load = {"before": load_before, "after_1min": os.getloadavg()[0]}
    if result.returncode not in (0, 1) or not os.path.exists(os.path.join(workdir, "summary.json")):
        raise RuntimeError(
            f"{' '.join(command)} exited {result.returncode} without a summary:\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    m = summary["metrics"]
    tune_steps = [s for s in summary["steps"] if s["stage"] == "tune"]
    trials = []
    for step in tune_steps:
        with open(os.path.join(step["workdir"], "summary.json")) as f:
            tuned = json.load(f)
        trials.append(
            {
                "trials": tuned["metrics"]["num_trials"],
                "pruned_trials": tuned["metrics"].get("pruned_trials", 0),
                "search_seconds": tuned["metrics"]["search_seconds"],
                # Steps trained by all trials, and the form their steps ran in (timed at the
                # first call: under load the choice between scan and step is noisy).
                "trial_steps": sum(t["steps"] for t in tuned["trials"]),
                "trials_loop": (tuned.get("loops") or {}).get("trials", {}).get("form"),
                "rounds": [(r["num_trials"], r["steps"], r.get("rungs")) for r in tuned["rounds"]],
                "search_stop": tuned.get("search_stop"),
            }
        )
    return {
        "workflow_seconds": m["workflow_seconds"],
        "command_seconds": wall,
        "test_accuracy": m.get("test_accuracy"),
        "goal_met": bool(m.get("goal_met")),
        "goal_error": m.get("goal_error"),
        "stopped": summary.get("stopped"),
        "steps": [s["name"] for s in summary["steps"]],
        "searches": trials,
        "load_average": load,
    }


def measure(problem: str, scratch: str, seed: int | None = None) -> dict[str, Any]:
    """The time-to-goal workflow and the fixed-budget one on `problem` (with `seed`: the
    config's seed set to it)."""
    config = PROBLEMS[problem]
    tag, flags = ("", ()) if seed is None else (f"-seed{seed}", (f"--config.seed={seed}",))
    goal = run_workflow(config, os.path.join(scratch, f"{problem}{tag}-goal"), *flags)
    print(f"{problem}{tag}: stop at goal {goal['workflow_seconds']:.0f} s", flush=True)
    fixed = run_workflow(
        config, os.path.join(scratch, f"{problem}{tag}-fixed"), *flags, *FIXED_BUDGET
    )
    print(f"{problem}{tag}: fixed budget {fixed['workflow_seconds']:.0f} s", flush=True)
    return {
        "seconds_to_goal": goal["workflow_seconds"] if goal["goal_met"] else None,
        "test_accuracy": goal["test_accuracy"],
        "baseline_seconds": fixed["workflow_seconds"],
        "baseline_test_accuracy": fixed["test_accuracy"],
        "stop_at_goal": goal,
        "fixed_budget": fixed,
    }


def over_seeds(runs: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One problem's pairs, one per seed: the mean times and accuracies, and the verdicts
    (the accuracy's paired difference against twice its standard error)."""
    pairs = list(runs.values())
    mean = statistics.fmean
    goal_s = mean([r["stop_at_goal"]["workflow_seconds"] for r in pairs])
    fixed_s = mean([r["fixed_budget"]["workflow_seconds"] for r in pairs])
    diffs = [r["test_accuracy"] - r["baseline_test_accuracy"] for r in pairs]
    spread = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
    met = all(r["stop_at_goal"]["goal_met"] for r in pairs)
    return {
        "seconds_to_goal": goal_s if met else None,
        "stop_at_goal_seconds": goal_s,
        "test_accuracy": mean([r["test_accuracy"] for r in pairs]),
        "baseline_seconds": fixed_s,
        "baseline_test_accuracy": mean([r["baseline_test_accuracy"] for r in pairs]),
        "accuracy_difference": mean(diffs),
        "accuracy_difference_se": spread,
        "same_or_better": mean(diffs) >= -2 * spread,
        "half_time": goal_s <= fixed_s / 2,
        "seeds": {str(seed): r for seed, r in runs.items()},
    }


def search_seconds(run: dict[str, Any]) -> str:
    """A workflow's seconds of search for the table; '-' when the goal was met before any."""
    searches = run["searches"]
    return f"{sum(s['search_seconds'] for s in searches):.0f}" if searches else "-"


def table(results: dict[str, dict]) -> str:
    """The benchmark's table: time and test accuracy of both searches per problem."""
    rows = []
    for problem, r in results.items():
        for seed, pair in r.get("seeds", {"": r}).items():
            goal, fixed = pair["stop_at_goal"], pair["fixed_budget"]
            rows.append(
                [
                    f"{problem} {seed}".strip(),
                    f"{goal['workflow_seconds']:.0f}",
                    search_seconds(goal),
                    "yes" if goal["goal_met"] else "no",
                    f"{goal['test_accuracy']:.2%}",
                    f"{fixed['workflow_seconds']:.0f}",
                    search_seconds(fixed),
                    "yes" if fixed["goal_met"] else "no",
                    f"{fixed['test_accuracy']:.2%}",
                    f"{fixed['workflow_seconds'] / goal['workflow_seconds']:.2f}x",
                ]
            )
        if "seeds" in r:
            rows.append(
                [
                    f"{problem} mean",
                    f"{r['stop_at_goal_seconds']:.0f}",
                    "",
                    "",
                    f"{r['test_accuracy']:.2%}",
                    f"{r['baseline_seconds']:.0f}",
                    "",
                    "",
                    f"{r['baseline_test_accuracy']:.2%}",
                    f"{r['baseline_seconds'] / r['stop_at_goal_seconds']:.2f}x",
                ]
            )
    # "search s": the tune step's search within the workflow ('-': the goal was met first).
    headers = [
        "problem",
        "stop-at-goal s",
        "search s",
        "goal met",
        "test acc",
        "fixed-budget s",
        "search s",
        "goal met",
        "test acc",
        "speedup",
    ]
    return common.format_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen problems; print the table; write --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default=",".join(PROBLEMS), help="comma-separated")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument(
        "--seeds", default=None, help="comma-separated config seeds: each problem once per seed"
    )
    parser.add_argument(
        "--keep", default=None, help="keep the workflows' run directories in this folder"
    )
    args = parser.parse_args(argv)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown or not problems:
        parser.error(
            f"unknown problem(s) {unknown or args.problems!r}; valid: {', '.join(PROBLEMS)}"
        )
    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        except ValueError:
            seeds = []
        if not seeds or len(set(seeds)) != len(seeds):
            parser.error(f"--seeds must name distinct integers, got {args.seeds!r}")

    def problem_results(problem: str, scratch: str) -> dict[str, Any]:
        if seeds is None:
            return measure(problem, scratch)
        return over_seeds({seed: measure(problem, scratch, seed) for seed in seeds})

    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        results = {problem: problem_results(problem, args.keep) for problem in problems}
    else:
        with tempfile.TemporaryDirectory(prefix="time-to-goal-") as scratch:
            results = {problem: problem_results(problem, scratch) for problem in problems}
    print(table(results))
    if args.out:
        context = {
            "command": "python -m benchmarks.time_to_goal " + " ".join(argv or sys.argv[1:]),
            "machine": f"{os.cpu_count()}-core CPU, {platform.machine()}",
        }
        common.write_json(args.out, {p: {**r, **context} for p, r in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
