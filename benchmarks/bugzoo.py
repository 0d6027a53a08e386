"""The bug zoo benchmark: does the debug stage rank the right finding first, and how fast?

Runs every case of tests/bugzoo/cases.py with the debug stage's default budgets and prints, per
case, the expected id, the top finding, whether it is right, and the time to verdict (the stage's
seconds_to_verdict: data, model, checks, overfit and short run, compilation included; cases
after the first reuse compiled programs of earlier ones). The timed cases are also run alone in
fresh processes (--cold): without the persistent compilation cache, as a user's first run
would, and with a warm one, as a rerun would.
Broken cases count as detected when
any finding of severity warning or error stands, correct when the top finding is the expected
id; a clean case is a false alarm when any warning or error stands. Every case runs with
`debug.fix` on: the repair rate counts, over the cases a config change repairs
(`Case.config_fixable`), those whose `config_fix` finding says the fix repaired the setup (its
rerun without a warning or error); the time the fix takes is not part of the time to verdict.

Command:
    python -m benchmarks.bugzoo --out=/tmp/bugzoo.json
    python -m benchmarks.bugzoo --only=softmax_output,clean_digits_lenet
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks import common
from tests.bugzoo.cases import CASES, CATEGORIES, Case, category
from workflow import debug, engine, experiment

SERIOUS = ("error", "warning")
# The anchors' published figures, quoted from their papers as issue 16 cites them, beside ours for
# the categories they cover. None of them runs on this zoo: the numbers compare kinds of claims,
# not tools on one benchmark.
ANCHORS = (
    {
        "tool": "DeepFD",
        "claim": "best tool diagnosed 52% of 52 real faulty programs correctly",
        "measure": "top1_accuracy",
        "value": 0.52,
        "categories": ("data", "model", "loss", "optimization"),
    },
    {
        "tool": "AUTOTRAINER",
        "claim": "repaired 97% of the training problems of 495 models",
        "measure": "repair_rate",
        "value": 0.97,
        "categories": ("optimization",),
    },
    {
        "tool": "TheDeepChecker",
        "claim": "evaluated on 59 programs with 21 bug types",
        "measure": None,
        "value": None,
        "categories": ("data", "model", "loss", "optimization"),
    },
)
# Time to verdict targets, compilation included (seconds).
TIMED = {
    "clean_mnist1d_mlp": 15.0,
    "clean_digits_lenet": 15.0,
    # The Flax MNIST example's CNN, unchanged, on 28x28 inputs (issue 16's user-model target).
    "clean_flax_mnist_cnn_28x28": 15.0,
}


def run_case(case: Case, config=None) -> dict[str, Any]:
    """Run the debug stage on `case` (or on `config`, its budget changed); the verdict."""
    config = case.build_config() if config is None else config
    config.debug.fix = True
    started = engine.now()
    setup = experiment.prepare(config)
    with tempfile.TemporaryDirectory() as workdir:
        summary = debug.run_debug(setup, workdir, started)
    findings = summary.findings
    serious = [f.id for f in findings if f.severity in SERIOUS]
    top = findings[0].id if findings else None
    if case.expected_id is None:
        correct = not serious
    else:
        correct = top == case.expected_id
    fix = next((f.evidence for f in findings if f.id == "config_fix"), {})
    return {
        "name": case.name,
        "category": category(case),
        "expected": case.expected_id,
        "top": top,
        "top_severity": findings[0].severity if findings else None,
        "serious": serious,
        "correct": correct,
        "seconds": summary.metrics["seconds_to_verdict"],
        "config_fixable": case.config_fixable,
        "fix": fix.get("overrides") or None,
        "repaired": bool(fix.get("repaired")),
    }


def process_seconds(name: str, cache_dir: str | None = None) -> tuple[float, float]:
    """(wall time, the stage's seconds_to_verdict) of a fresh process that runs case `name`
    alone: Python and JAX imports, data, model, every compilation and the verdict; without a
    persistent compilation cache, or with the one in `cache_dir` (every program cached)."""
    env = common.compilation_cache_env(cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "case.json")
        command = [sys.executable, "-m", "benchmarks.bugzoo", f"--only={name}", "--no-cold"]
        t0 = time.perf_counter()
        subprocess.run([*command, f"--out={out}"], env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        with open(out) as f:
            verdict = json.load(f)["cases_detail"][0]["seconds"]
    return wall, verdict


def fresh_process_times(name: str) -> dict[str, float]:
    """Case `name` in fresh processes: cold (no compilation cache), then twice with a new
    persistent cache, the second run warm (its programs read back, as a user's rerun)."""
    cold_wall, cold_verdict = process_seconds(name)
    with tempfile.TemporaryDirectory() as cache:
        process_seconds(name, cache)  # fills the cache
        warm_wall, warm_verdict = process_seconds(name, cache)
    return {
        "cold_process_seconds": cold_wall,
        "cold_verdict_seconds": cold_verdict,
        "warm_process_seconds": warm_wall,
        "warm_verdict_seconds": warm_verdict,
    }


def totals(results: list[dict[str, Any]]) -> dict[str, int]:
    """The zoo's score: broken cases detected and right at top-1, false alarms on clean runs."""
    broken = [r for r in results if r["expected"] is not None]
    clean = [r for r in results if r["expected"] is None]
    return {
        "cases": len(broken),
        "correct_top1": sum(r["correct"] for r in broken),
        "detected": sum(bool(r["serious"]) for r in broken),
        "clean_runs": len(clean),
        "false_alarms": sum(bool(r["serious"]) for r in clean),
        "config_fixable": sum(r["config_fixable"] for r in broken),
        "repaired": sum(r["repaired"] for r in broken if r["config_fixable"]),
    }


def repair_rate(rows: list[dict[str, Any]]) -> float | None:
    """Repaired over config-fixable cases among `rows` (None: none is config-fixable)."""
    fixable = [r for r in rows if r["config_fixable"]]
    return round(sum(r["repaired"] for r in fixable) / len(fixable), 3) if fixable else None


def per_category(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fault category (and "clean"): cases, top-1 accuracy, detection rate, false alarms,
    the repair rate over its config-fixable cases (None: it has none) and the time to verdict
    (median and max seconds)."""
    table = {}
    for name in (*CATEGORIES, "clean"):
        rows = [r for r in results if r["category"] == name]
        if not rows:
            continue
        seconds = sorted(r["seconds"] for r in rows)
        entry = {
            "cases": len(rows),
            "seconds_median": round(seconds[len(seconds) // 2], 2),
            "seconds_max": round(seconds[-1], 2),
        }
        if name == "clean":
            entry["false_alarms"] = sum(bool(r["serious"]) for r in rows)
        else:
            entry.update(
                {
                    "correct_top1": sum(r["correct"] for r in rows),
                    "top1_accuracy": round(sum(r["correct"] for r in rows) / len(rows), 3),
                    "detection_rate": round(sum(bool(r["serious"]) for r in rows) / len(rows), 3),
                    "config_fixable": sum(r["config_fixable"] for r in rows),
                    "repaired": sum(r["repaired"] for r in rows if r["config_fixable"]),
                    "repair_rate": repair_rate(rows),
                }
            )
        table[name] = entry
    return table


def print_per_category(table: dict[str, dict[str, Any]]) -> None:
    """The per-category table, then the anchors' published figures beside ours."""
    rows = [
        [
            name,
            e["cases"],
            e.get("top1_accuracy", "-"),
            e.get("detection_rate", "-"),
            e.get("false_alarms", "-"),
            f"{e['repaired']}/{e['config_fixable']}" if e.get("config_fixable") else "-",
            e["seconds_median"],
            e["seconds_max"],
        ]
        for name, e in table.items()
    ]
    headers = ["category", "cases", "top-1", "detected", "false alarms", "repair", "s median"]
    print(common.format_table([*headers, "s max"], rows))
    print()
    for anchor in ANCHORS:
        shared = [c for c in anchor["categories"] if c in table]
        if not shared:
            continue
        ours = ""
        if anchor["measure"] == "top1_accuracy":
            correct = sum(table[c]["correct_top1"] for c in shared)
            cases = sum(table[c]["cases"] for c in shared)
            ours = f"; ours on {', '.join(shared)}: {correct}/{cases} right at top-1"
        elif anchor["measure"] == "repair_rate":
            fixable = sum(e.get("config_fixable", 0) for e in table.values())
            repaired = sum(e.get("repaired", 0) for e in table.values())
            ours = f"; ours (debug.fix): {repaired} of {fixable} config-fixable cases repaired"
        print(f"{anchor['tool']}: {anchor['claim']}{ours}")


def main(argv: list[str] | None = None) -> int:
    """Run the zoo, print the table and totals; exit 1 on a wrong top finding or false alarm."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the totals as JSON to this file")
    parser.add_argument("--only", default="", help="comma-separated case names to run")
    parser.add_argument(
        "--cold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time each timed case as a fresh process (imports and compilation included)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    unknown = only - {case.name for case in CASES}
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; valid: {[c.name for c in CASES]}")
    results = []
    for case in CASES:
        if only and case.name not in only:
            continue
        result = run_case(case)
        results.append(result)
        print(
            f"{result['name']}: expected {result['expected']}, top {result['top']} "
            f"({result['top_severity']}), {'ok' if result['correct'] else 'WRONG'}, "
            f"{result['seconds']:.1f} s",
            flush=True,
        )
    rows = [
        [
            r["name"],
            r["expected"] or "(clean)",
            r["top"] if r["expected"] or r["serious"] else "(no warning)",
            "yes" if r["correct"] else "NO",
            r["seconds"],
        ]
        for r in results
    ]
    print()
    print(common.format_table(["case", "expected", "top finding", "correct", "seconds"], rows))
    score = totals(results)
    print()
    print(", ".join(f"{k}={v}" for k, v in score.items()))
    print()
    categories = per_category(results)
    print_per_category(categories)
    for r in results:
        if r["name"] in TIMED:
            if args.cold:
                r.update(fresh_process_times(r["name"]))
            target = TIMED[r["name"]]
            print(
                f"time to verdict {r['name']}: {r['seconds']:.1f} s in this process "
                f"({'within' if r['seconds'] < target else 'OVER'} the {target:g} s target)"
                + (
                    f"; fresh process, cold: {r['cold_verdict_seconds']:.1f} s to verdict, "
                    f"{r['cold_process_seconds']:.1f} s in all; warm compilation cache: "
                    f"{r['warm_verdict_seconds']:.1f} s, {r['warm_process_seconds']:.1f} s"
                    if "cold_process_seconds" in r
                    else ""
                ),
                flush=True,
            )
    if args.out:
        timed = {
            r["name"]: {k: v for k, v in r.items() if k == "seconds" or k.endswith("_seconds")}
            for r in results
            if r["name"] in TIMED
        }
        common.write_json(
            args.out,
            {
                **score,
                "load_average": [round(x, 2) for x in os.getloadavg()],
                "time_to_verdict": timed,
                "per_category": categories,
                "cases_detail": [
                    {
                        k: r[k]
                        for k in (
                            *("name", "category", "expected", "top", "correct", "seconds"),
                            *("config_fixable", "fix", "repaired"),
                        )
                    }
                    for r in results
                ],
            },
        )
    return 0 if all(r["correct"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
