"""The persistent compilation cache: time to the first training step, first run against second.

Every stage turns on JAX's persistent compilation cache (workflow/cli.py). This script runs the
same config twice, each time in a fresh Python process sharing one new, empty cache directory,
and times inside each process:

  first step   building the model and state, then the first call of the compiled multi-step
               (K = steps_per_call training steps) until its losses are on the host;
  first eval   the first evaluation pass over the validation split.

The first process compiles and fills the cache; the second reads the programs back. The ratio
first / second of each is printed, measured in this one run (other load on the machine slows
both processes alike).

Command:
    python -m benchmarks.compile_cache --out=/tmp/compile_cache.json
    python -m benchmarks.compile_cache --config=configs/mnist1d.py:lstm

Measured on the 2-core CPU (digits, LeNet; 2026-11-27, another job running): see the closing
notes of issue 6.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def time_first_step(config_arg: str, cache_dir: str) -> dict[str, float]:
    """In this process: the seconds to the first training call and the first evaluation."""
    t_start = time.perf_counter()
    from workflow import cli, config_lib, data, engine, experiment

    cli.enable_compilation_cache(cache_dir)
    path, _, arg = config_arg.partition(":")
    config = config_lib.load_config_file(os.path.join(ROOT, path), arg or None)
    config.progress = False
    t_imported = time.perf_counter()
    setup = experiment.prepare(config)
    multi_step = engine.make_multi_step(setup.task)
    x, y = setup.dataset.x_train, setup.dataset.y_train
    indices = data.batch_indices(len(x), config.batch_size, config.seed, 0, config.steps_per_call)
    state, metrics = multi_step(setup.state, x, y, indices)
    losses = metrics["loss"].tolist()  # on the host: the step is done
    t_step = time.perf_counter()
    engine.Evaluator(setup.task, config.eval_batch_size)(
        state, setup.dataset.x_val, setup.dataset.y_val
    )
    t_eval = time.perf_counter()
    return {
        "imports_seconds": t_imported - t_start,
        "first_step_seconds": t_step - t_imported,
        "first_eval_seconds": t_eval - t_step,
        "first_loss": losses[0],
    }


def run_process(config_arg: str, cache_dir: str) -> dict[str, float]:
    """time_first_step in a fresh Python process (nothing compiled in memory yet)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_cache", "--child", config_arg, cache_dir],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_seconds"] = time.perf_counter() - t0
    return result


def main(argv: list[str]) -> int:
    """Two fresh processes on one empty cache; print and write their times and ratios."""
    if argv[:1] == ["--child"]:
        print(json.dumps(time_first_step(argv[1], argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache_dir:
        first = run_process(args.config, cache_dir)
        second = run_process(args.config, cache_dir)
    if first["first_loss"] != second["first_loss"]:
        raise SystemExit("the cached program computed other numbers")
    keys = ("first_step_seconds", "first_eval_seconds", "process_seconds")
    results: dict[str, Any] = {
        "config": args.config,
        "first_run": first,
        "second_run": second,
        "ratio_first_over_second": {k: first[k] / second[k] for k in keys},
    }
    rows = [[k.replace("_seconds", ""), first[k], second[k], first[k] / second[k]] for k in keys]
    print(common.format_table(["seconds", "first run", "second run", "first / second"], rows))
    if args.out:
        common.write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
