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

Command:
    python -m benchmarks.time_to_goal --out=benchmarks/results/cpu_time_to_goal.json
    python -m benchmarks.time_to_goal --problems=mnist1d --out=/tmp/ttg.json
"""

import argparse
import json
import os
import platform
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


def measure(problem: str, scratch: str) -> dict[str, Any]:
    """The time-to-goal workflow and the fixed-budget one on `problem`."""
    config = PROBLEMS[problem]
    goal = run_workflow(config, os.path.join(scratch, f"{problem}-goal"))
    print(f"{problem}: stop at goal {goal['workflow_seconds']:.0f} s", flush=True)
    fixed = run_workflow(config, os.path.join(scratch, f"{problem}-fixed"), *FIXED_BUDGET)
    print(f"{problem}: fixed budget {fixed['workflow_seconds']:.0f} s", flush=True)
    return {
        "seconds_to_goal": goal["workflow_seconds"] if goal["goal_met"] else None,
        "test_accuracy": goal["test_accuracy"],
        "baseline_seconds": fixed["workflow_seconds"],
        "baseline_test_accuracy": fixed["test_accuracy"],
        "stop_at_goal": goal,
        "fixed_budget": fixed,
    }


def table(results: dict[str, dict]) -> str:
    """The benchmark's table: time and test accuracy of both searches per problem."""
    rows = []
    for problem, r in results.items():
        goal, fixed = r["stop_at_goal"], r["fixed_budget"]
        rows.append(
            [
                problem,
                f"{goal['workflow_seconds']:.0f}",
                "yes" if goal["goal_met"] else "no",
                f"{goal['test_accuracy']:.2%}",
                f"{fixed['workflow_seconds']:.0f}",
                "yes" if fixed["goal_met"] else "no",
                f"{fixed['test_accuracy']:.2%}",
                f"{fixed['workflow_seconds'] / goal['workflow_seconds']:.2f}x",
            ]
        )
    headers = [
        "problem",
        "stop-at-goal s",
        "goal met",
        "test acc",
        "fixed-budget s",
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
        "--keep", default=None, help="keep the workflows' run directories in this folder"
    )
    args = parser.parse_args(argv)
    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    unknown = [p for p in problems if p not in PROBLEMS]
    if unknown or not problems:
        parser.error(
            f"unknown problem(s) {unknown or args.problems!r}; valid: {', '.join(PROBLEMS)}"
        )
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        results = {problem: measure(problem, args.keep) for problem in problems}
    else:
        with tempfile.TemporaryDirectory(prefix="time-to-goal-") as scratch:
            results = {problem: measure(problem, scratch) for problem in problems}
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
