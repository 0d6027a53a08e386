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

With --setup it times instead, each in a fresh process without the persistent cache, the
set-up choices a cold first run depends on:

  import_sklearn       importing scikit-learn, which data.sources avoids by reading the digits
                       CSV it ships;
  init_eager           building the config's model op by op, every initializer operation
                       compiled on its own for each parameter shape;
  init_program         engine.initialize: the same initialization traced once and compiled at
                       XLA's lowest backend optimization level (engine.few_runs_options);
  init_program_default_level   that program at XLA's default optimization level.

Command:
    python -m benchmarks.compile_cache --out=/tmp/compile_cache.json
    python -m benchmarks.compile_cache --config=configs/mnist1d.py:lstm
    python -m benchmarks.compile_cache --setup --out=/tmp/setup.json

Measured on the 2-core CPU (digits, LeNet; 2026-11-27, another job running): see the closing
notes of issue 6. --setup on the same 2-core CPU, shared with other jobs (digits, LeNet; jax
0.10.2): benchmarks/results/cpu_setup_compile.json.
"""

import argparse
import importlib.metadata
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


SETUP_PARTS = ("import_sklearn", "init_eager", "init_program", "init_program_default_level")


def time_setup_part(part: str, config_arg: str) -> dict[str, float]:
    """In this process: the seconds of one SETUP_PARTS part (the data is loaded beforehand)."""
    if part == "import_sklearn":
        t0 = time.perf_counter()
        import sklearn.datasets  # noqa: F401

        return {"seconds": time.perf_counter() - t0}
    import jax
    from flax import nnx

    import models
    from workflow import config_lib, data, engine
    from workflow.engine import programs

    path, _, arg = config_arg.partition(":")
    config = config_lib.load_config_file(os.path.join(ROOT, path), arg or None)
    dataset = data.load_dataset(config.dataset, seed=config.seed)

    def make():
        return models.build_model(
            config.model.name,
            tuple(dataset.input_shape),
            dataset.num_classes,
            rngs=nnx.Rngs(config.seed, dropout=config.seed + 1),
            **engine.model_kwargs(config),
        )

    if part == "init_program_default_level":
        programs.few_runs_options = lambda: None  # XLA's defaults for the set-up program
    t0 = time.perf_counter()
    model = make() if part == "init_eager" else engine.initialize(make)
    jax.block_until_ready(nnx.state(model))
    return {"seconds": time.perf_counter() - t0}


def run_setup(config_arg: str) -> dict[str, Any]:
    """Every SETUP_PARTS part in a fresh process, and the ratios the set-up choices rest on."""
    seconds = {}
    for part in SETUP_PARTS:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.compile_cache", "--setup-child", part, config_arg],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        seconds[part] = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
    return {
        "config": config_arg,
        "jax_version": importlib.metadata.version("jax"),
        "cpus": os.cpu_count(),
        "seconds": seconds,
        "init_eager_over_program": seconds["init_eager"] / seconds["init_program"],
        "init_default_level_over_lowest": (
            seconds["init_program_default_level"] / seconds["init_program"]
        ),
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
    if argv[:1] == ["--setup-child"]:
        print(json.dumps(time_setup_part(argv[1], argv[2])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits.py")
    parser.add_argument("--setup", action="store_true", help="time the set-up choices instead")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.setup:
        results = run_setup(args.config)
        rows = [[part, results["seconds"][part]] for part in SETUP_PARTS]
        print(common.format_table(["part", "seconds"], rows))
        print(
            f"eager / one program: {results['init_eager_over_program']:.3g}; default / lowest "
            f"optimization level: {results['init_default_level_over_lowest']:.3g}"
        )
        if args.out:
            common.write_json(args.out, results)
            print(f"wrote {args.out}")
        return 0
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
