"""Training examples/s of the grain input pipeline against the in-memory one, in one process.

Both pipelines train the same config with `engine.fit`, the loop every stage runs:

  memory         config.dataset.pipeline="memory": the training split on the device, each
                 step's batch gathered there by example index;
  grain          "grain" with dataset.grain.worker_count=0: each step's batch read on the host
                 through grain (read threads of this process), K steps' batches stacked by the
                 feeder thread while the device runs the previous K, then copied to the device;
  grain_workers  the same with one grain worker process reading the batches.

Cases: the MNIST-1D paper's MLP (40-100-100-10, batch 100) and LeNet on 28x28x1 synthetic
images (batch 100); on an accelerator also `--cases=resnet20_32x32` (ResNet-20 on 32x32x3
synthetic images, batch 128: whether the host keeps a CIFAR-sized ResNet fed). The rate is
fit's own (`FitResult.steps_per_s`: the calls that compiled excluded, a wait for the feeder
included, so a starved device shows as a lower rate), times the batch size. The pipelines
run in rounds, in an order shuffled from round to round; each ratio is the median over rounds
of the per-round ratio to memory (other processes change the machine's speed from second to
second; blocks of one round see nearly the same machine).

Command:
    python -m benchmarks.grain_pipeline --out=benchmarks/results/cpu_grain_pipeline.json
    python -m benchmarks.grain_pipeline --cases=resnet20_32x32,mlp_mnist1d   # on a GPU
"""

import argparse
import os
import platform
import random
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks import common
from workflow import config_lib, engine, experiment
from workflow.engine.state import copy_state

PIPELINES = {
    "memory": {"dataset.pipeline": "memory"},
    "grain": {"dataset.pipeline": "grain", "dataset.grain.worker_count": 0},
    "grain_workers": {"dataset.pipeline": "grain", "dataset.grain.worker_count": 1},
}
CASES = ("mlp_mnist1d", "lenet_28x28", "resnet20_32x32")
DEFAULT_CASES = ("mlp_mnist1d", "lenet_28x28")  # resnet20_32x32: for an accelerator


def case_config(name: str, steps: int, steps_per_call: int) -> ml_collections.ConfigDict:
    """The config of benchmark case `name`, training `steps` steps."""
    if name == "mlp_mnist1d":
        config = common.paper_config("mlp", steps=steps)
    elif name in ("lenet_28x28", "resnet20_32x32"):
        path = os.path.join(config_lib.project_root(), "configs", "synthetic.py")
        lenet = name == "lenet_28x28"
        config = config_lib.load_config_file(path, "image" if lenet else "image,resnet20")
        config.dataset.kwargs.image_size = 28 if lenet else 32
        config.dataset.kwargs.channels = 1 if lenet else 3
        config.dataset.kwargs.num_train = 3000 if lenet else 10000
        config.dataset.kwargs.num_test = 500
        config.batch_size = 100 if lenet else 128
        config.num_steps = steps
        config.log_every = steps
        config.eval_every = steps  # validation only at the end: not part of the benchmark
        config.checkpoint_every = 0
        config.progress = False
    else:
        raise ValueError(f"unknown case {name!r}; valid: {', '.join(CASES)}")
    config.steps_per_call = steps_per_call
    return config


def with_pipeline(config: ml_collections.ConfigDict, pipeline: str) -> ml_collections.ConfigDict:
    """A copy of `config` on `pipeline` (a PIPELINES name)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.update_from_flattened_dict(PIPELINES[pipeline])
    return config


def examples_per_s(setup: experiment.Setup, config: ml_collections.ConfigDict) -> dict:
    """One fit from the set-up state: its examples/s and the loop form it ran."""
    result = engine.fit(setup.task, copy_state(setup.state), setup.dataset, config, progress=False)
    return {
        "examples_per_s": result.steps_per_s * config.batch_size,
        "loop": (result.loop or {}).get("form"),
    }


def benchmark_case(name: str, steps: int, steps_per_call: int, rounds: int, seed: int) -> dict:
    """Each pipeline's median examples/s over `rounds` and its median ratio to memory's."""
    config = case_config(name, steps, steps_per_call)
    setup = experiment.prepare(config)
    configs = {p: with_pipeline(config, p) for p in PIPELINES}
    for pipeline in PIPELINES:  # compile each program (and time its loop form) once, untimed
        examples_per_s(setup, configs[pipeline])
    rates: dict[str, list[float]] = {p: [] for p in PIPELINES}
    forms: dict[str, str | None] = {}
    order = list(PIPELINES)
    shuffle = random.Random(seed)
    for _ in range(rounds):
        shuffle.shuffle(order)
        for pipeline in order:
            run = examples_per_s(setup, configs[pipeline])
            rates[pipeline].append(run["examples_per_s"])
            forms[pipeline] = run["loop"]
    out: dict[str, Any] = {
        "batch_size": config.batch_size,
        "steps": steps,
        "steps_per_call": steps_per_call,
        "train_examples": len(setup.dataset.y_train),
        "input_shape": list(setup.dataset.x_train.shape[1:]),
    }
    for pipeline in PIPELINES:
        out[f"{pipeline}_examples_per_s"] = float(np.median(rates[pipeline]))
        out[f"{pipeline}_loop"] = forms[pipeline]
        if pipeline != "memory":
            ratios = np.asarray(rates[pipeline]) / np.asarray(rates["memory"])
            out[f"{pipeline}_over_memory"] = float(np.median(ratios))
            out[f"{pipeline}_over_memory_quartiles"] = [
                float(q) for q in np.percentile(ratios, [25, 75])
            ]
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated: {', '.join(CASES)}"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mlp_steps", type=int, default=3000)
    parser.add_argument("--lenet_steps", type=int, default=120, help="and resnet20's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the cases, print the table, write the JSON."""
    args = parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        print(f"unknown case(s) {unknown or args.cases!r}; valid: {', '.join(CASES)}")
        return 2
    t0 = time.perf_counter()
    results = {}
    for case in cases:
        steps = args.mlp_steps if case.startswith("mlp") else args.lenet_steps
        per_call = 100 if case.startswith("mlp") else 20
        results[case] = benchmark_case(case, steps, min(per_call, steps), args.rounds, args.seed)
        print(f"{case}: done", file=sys.stderr)
    rows = [
        [
            case,
            r["memory_examples_per_s"],
            r["grain_examples_per_s"],
            r["grain_over_memory"],
            r["grain_workers_examples_per_s"],
            r["grain_workers_over_memory"],
        ]
        for case, r in results.items()
    ]
    headers = ["case", "memory ex/s", "grain ex/s", "grain/memory", "1 worker ex/s", "1 worker/mem"]
    print(common.format_table(headers, rows))
    payload = {
        "benchmark": "grain_pipeline",
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        # Other processes' load while it ran (1, 5, 15-minute averages): read the rates with it.
        "load_average": list(os.getloadavg()),
        "rounds": args.rounds,
        "seconds": time.perf_counter() - t0,
        "cases": results,
    }
    if args.out:
        common.write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
