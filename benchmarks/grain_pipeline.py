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

Sources (`--sources`): the point of streaming is that host memory stays bounded as the
dataset grows. An image folder of PNGs (`--image_size` pixels square, RGB, 10 classes) is
written at each of `--source_sizes` examples; LeNet trains on it with the memory pipeline
(every split decoded into arrays at load) and with the grain pipeline's lazy training split
(decoded as batches are read: in threads of the training process, and in `--source_workers`
worker processes). Each (size, pipeline) runs in a process of its own, so its peak resident
memory (`ru_maxrss`, the training process; its grain workers' apart) is its own; its rate is
fit's examples/s as above, from one run (read it with the load average beside it).

Command:
    python -m benchmarks.grain_pipeline --out=benchmarks/results/cpu_grain_pipeline.json
    python -m benchmarks.grain_pipeline --cases=resnet20_32x32,mlp_mnist1d   # on a GPU
    python -m benchmarks.grain_pipeline --sources --out=benchmarks/results/cpu_grain_sources.json
"""

import argparse
import json
import os
import pathlib
import platform
import random
import resource
import subprocess
import sys
import tempfile
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


# The sources benchmark's pipelines: memory, and the lazy split read in threads or workers.
SOURCE_PIPELINES = {
    "memory": {"dataset.pipeline": "memory"},
    "grain_lazy": {"dataset.pipeline": "grain", "dataset.grain.worker_count": 0},
    "grain_lazy_workers": {"dataset.pipeline": "grain"},  # worker_count: --source_workers
}


def write_image_folder(root: pathlib.Path, examples: int, size: int, seed: int = 0) -> None:
    """`examples` RGB PNGs of `size` x `size` pixels in root/<class>/, 10 classes: each class a
    colour gradient of its own, with noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for index in range(examples):
        label = index % 10
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        angle = label * np.pi / 10
        base = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
        pixels = np.stack([base, base[::-1], base.T], -1) * 160 + 40
        pixels = pixels + rng.normal(0, 25, pixels.shape)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(
            folder / f"{index:06d}.png"
        )


def source_config(folder: str, pipeline: str, steps: int, workers: int):
    """LeNet on the image folder `folder`, on sources pipeline `pipeline`."""
    path = os.path.join(config_lib.project_root(), "configs", "synthetic.py")
    config = config_lib.load_config_file(path, "image")
    config.dataset.name = folder
    config.dataset.kwargs = ml_collections.ConfigDict()
    config.batch_size = 64
    config.num_steps = steps
    config.steps_per_call = 20
    config.log_every = steps
    config.eval_every = steps  # validation only at the end
    config.checkpoint_every = 0
    config.progress = False
    config.update_from_flattened_dict(SOURCE_PIPELINES[pipeline])
    if pipeline == "grain_lazy_workers":
        config.dataset.grain.worker_count = workers
    return config


def source_run(folder: str, pipeline: str, steps: int, workers: int) -> dict:
    """In this process: load the folder and train on `pipeline`; the rate and peak memory."""
    t0 = time.perf_counter()
    config = source_config(folder, pipeline, steps, workers)
    setup = experiment.prepare(config)
    load_seconds = time.perf_counter() - t0
    result = engine.fit(setup.task, setup.state, setup.dataset, config, progress=False)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "examples_per_s": result.steps_per_s * config.batch_size,
        "train_examples": len(setup.dataset.y_train),
        "load_seconds": load_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": children / 1024 if config.dataset.pipeline == "grain" else None,
        "train_split_decoded_mb": setup.dataset.x_train.nbytes / 2**20,
    }


def benchmark_sources(sizes: list[int], image_size: int, steps: int, workers: int) -> dict:
    """Each (dataset size, sources pipeline) in a process of its own; their measurements."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for examples in sizes:
            folder = pathlib.Path(tmp) / f"images{examples}"
            write_image_folder(folder, examples, image_size)
            runs = {}
            for pipeline in SOURCE_PIPELINES:
                command = [
                    sys.executable,
                    "-m",
                    "benchmarks.grain_pipeline",
                    f"--source_run={folder}",
                    f"--pipeline={pipeline}",
                    f"--source_steps={steps}",
                    f"--source_workers={workers}",
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise RuntimeError(f"{pipeline} on {examples} images: {done.stderr[-2000:]}")
                runs[pipeline] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{examples} images, {pipeline}: done", file=sys.stderr)
            out[str(examples)] = runs
    return out


def sources_main(args: argparse.Namespace) -> int:
    """The sources benchmark: print the table, write the JSON."""
    sizes = [int(v) for v in args.source_sizes.split(",")]
    t0 = time.perf_counter()
    load_before = list(os.getloadavg())
    results = benchmark_sources(sizes, args.image_size, args.source_steps, args.source_workers)
    rows = [
        [size, pipeline, r["train_examples"], r["examples_per_s"], r["peak_rss_mb"]]
        for size, runs in results.items()
        for pipeline, r in runs.items()
    ]
    headers = ["images", "pipeline", "train examples", "examples/s", "peak RSS MB"]
    print(common.format_table(headers, rows))
    payload = {
        "benchmark": "grain_sources",
        "device": jax.devices()[0].device_kind,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "image_size": [args.image_size, args.image_size, 3],
        "model": "lenet",
        "batch_size": 64,
        "steps": args.source_steps,
        "source_workers": args.source_workers,
        # Other processes' load (1, 5, 15-minute averages) at the start and at the end.
        "load_average_start": load_before,
        "load_average_end": list(os.getloadavg()),
        "seconds": time.perf_counter() - t0,
        "sizes": results,
    }
    if args.out:
        common.write_json(args.out, payload)
    return 0


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
    parser.add_argument("--sources", action="store_true", help="the image-folder sources case")
    parser.add_argument("--source_sizes", default="2000,8000", help="images per folder")
    parser.add_argument("--image_size", type=int, default=48)
    parser.add_argument("--source_steps", type=int, default=200)
    parser.add_argument("--source_workers", type=int, default=1)
    parser.add_argument("--source_run", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the cases, print the table, write the JSON."""
    args = parse_args(argv)
    if args.source_run:  # one (size, pipeline) of the sources benchmark, in its own process
        run = source_run(args.source_run, args.pipeline, args.source_steps, args.source_workers)
        print(json.dumps(run))
        return 0
    if args.sources:
        return sources_main(args)
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
