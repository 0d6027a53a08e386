"""The accelerator suite: training throughput, batched-search speedup, MNIST-1D reproduction time.

One script for a lent GPU/TPU, in one process, writing everything to one JSON file (rewritten
after each part, so a run cut short still leaves what it measured):

  device       platform, device kind and count, jax version;
  throughput   training examples/s of our compiled multi-step (workflow.engine) for LeNet
               (28x28x1, MNIST's shape), ResNet-20 (32x32x3, CIFAR-10's) and the one-layer
               LSTM (MNIST-1D's 40x1, hidden 128), on random data kept on the device. The batch
               is doubled from --min_batch until examples/s gains under 10% (the chip is full)
               or memory runs out; float32 throughout, then bfloat16 (config.dtype) at the
               batch float32 chose;
  search       benchmarks/search_throughput at N = --search_sizes trials of the MNIST-1D MLP
               against --sequential_runs single-trial runs (trials/s and the ratio), batched
               and pruned as the search prunes (--prune_rungs rungs, a third kept at each);
  mnist1d      benchmarks/reproduce_mnist1d: test accuracy and wall seconds of the paper's
               MLP, CNN and our LSTM (6,000 steps each).

Each timed unit is a call of --steps_per_call steps, best of --repeats after one compiling
call; compile seconds are reported apart. --budget_seconds stops starting new parts once spent.

Command (on the accelerator):
    python -m benchmarks.gpu_suite --out=/tmp/gpu_suite.json
and a quick check that it runs anywhere (tiny sizes, seconds on a CPU):
    python -m benchmarks.gpu_suite --small --out=/tmp/gpu_suite_small.json

Measured on one NVIDIA H100 80GB HBM3 (jax 0.11.2, flax 0.12.10 of the lent machine's image),
2026-11-26; JSON in benchmarks/results/h100_gpu_suite*.json. Throughput at the batch where
doubling gained under 10% (the second run of LeNet stopped at 2048, the first reached 8192):

    model      batch    f32 examples/s   bf16 examples/s   bf16 x   compile s
    LeNet      8,192    1,701,746        1,735,927         1.02     4.7
    ResNet-20  2,048    102,526          184,214           1.80     8.6
    LSTM-128   16,384   947,051          1,778,908         1.88     3.7

Search, MNIST-1D MLP, 100 steps at batch 100 per trial, best of 3:
    sequential 16 x 1: 98.5 trials/s; batched N = 1: 102 (1.04x), N = 16: 1,446 (14.7x),
    N = 64: 4,489 (45.6x), N = 256: 10,137 (103x): 256 trials take 25 ms, one takes 10 ms.

MNIST-1D reproduction (6,000 steps each; wall seconds include data and compile): MLP 63.7%
test in 12.3 s (17,600 steps/s), CNN 91.7% in 6.6 s, LSTM 97.1% in 11.7 s. The MLP and CNN
land just under reproduce_mnist1d's floors (65%, 92%) on this card, where float32 matmuls run
in TF32 by default; on the CPU they pass.
"""

import argparse
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from workflow import config_lib, engine

# Benchmark name -> (registered model, options, input shape, classes, data kind).
THROUGHPUT_MODELS: dict[str, tuple[str, dict, tuple[int, ...], int, str]] = {
    "lenet": ("lenet", {}, (28, 28, 1), 10, "image"),
    "resnet20": ("resnet", {"depth": 20}, (32, 32, 3), 10, "image"),
    "lstm": ("lstm", {"hidden_size": 128}, (40, 1), 10, "sequence"),
}
FULL_GAIN = 1.10  # doubling the batch gains less than this: the chip is full


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA's resource-exhausted error (the device ran out of memory)."""
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def throughput_config(name: str, batch: int, dtype: str):
    """A config for benchmark model `name` at `batch`, computing in `dtype`."""
    model_name, options, _, _, _ = THROUGHPUT_MODELS[name]
    config = config_lib.base_config("synthetic", config_lib.model_config(model_name, **options))
    config.batch_size = batch
    config.dtype = dtype
    return config


def time_training(
    name: str, batch: int, dtype: str, steps_per_call: int, repeats: int
) -> dict[str, Any]:
    """Examples/s of `steps_per_call` training steps at `batch`: best call after a compiling one."""
    _, _, input_shape, num_classes, kind = THROUGHPUT_MODELS[name]
    config = throughput_config(name, batch, dtype)
    model = engine.build_model(config, input_shape, num_classes)
    task, state = engine.create_train_state(model, config, kind)
    multi_step = engine.make_multi_step(task)
    examples = 4 * batch  # batches are gathered on the device from a pool of random examples
    key_x, key_y = jax.random.split(jax.random.key(0))
    x = jax.random.normal(key_x, (examples, *input_shape), jnp.float32)
    y = jax.random.randint(key_y, (examples,), 0, num_classes)
    rng = np.random.default_rng(0)
    indices = jnp.asarray(rng.integers(0, examples, size=(steps_per_call, batch)))
    t0 = time.perf_counter()
    state, metrics = multi_step(state, x, y, indices)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = multi_step(state, x, y, indices)
        jax.block_until_ready(metrics)
        best = min(best, time.perf_counter() - t0)
    loss = np.asarray(metrics["loss"])
    return {
        "batch": batch,
        "dtype": dtype,
        "examples_per_s": steps_per_call * batch / best,
        "steps_per_s": steps_per_call / best,
        "compile_seconds": max(0.0, first - best),
        "finite": bool(np.all(np.isfinite(loss))),
    }


def fill_the_chip(
    name: str, min_batch: int, max_batch: int, steps_per_call: int, repeats: int
) -> dict[str, Any]:
    """Double the float32 batch until throughput stops growing; then bfloat16 at that batch."""
    sweep, batch = [], min_batch
    while batch <= max_batch:
        try:
            sweep.append(time_training(name, batch, "float32", steps_per_call, repeats))
        except Exception as e:  # noqa: BLE001 - only out-of-memory ends the sweep quietly
            if not is_out_of_memory(e):
                raise
            sweep.append({"batch": batch, "dtype": "float32", "out_of_memory": True})
            break
        print(f"  {name} batch {batch}: {sweep[-1]['examples_per_s']:,.0f} examples/s", flush=True)
        if len(sweep) > 1 and sweep[-1]["examples_per_s"] < FULL_GAIN * sweep[-2]["examples_per_s"]:
            break
        batch *= 2
    measured = [row for row in sweep if "examples_per_s" in row]
    chosen = max(measured, key=lambda row: row["examples_per_s"])
    try:
        bf16 = time_training(name, chosen["batch"], "bfloat16", steps_per_call, repeats)
    except Exception as e:  # noqa: BLE001
        if not is_out_of_memory(e):
            raise
        bf16 = {"batch": chosen["batch"], "dtype": "bfloat16", "out_of_memory": True}
    return {"sweep": sweep, "float32": chosen, "bfloat16": bf16}


def search_part(args: argparse.Namespace) -> dict[str, Any]:
    """Batched search trials/s against sequential trials (benchmarks/search_throughput)."""
    from benchmarks import search_throughput

    return search_throughput.benchmark(
        args.search_model,
        args.search_steps,
        args.search_sizes,
        args.sequential_runs,
        args.repeats,
        prune_rungs=args.prune_rungs,
    )


def mnist1d_part(args: argparse.Namespace) -> dict[str, Any]:
    """Test accuracy and wall seconds of the MNIST-1D reproduction (reproduce_mnist1d)."""
    from benchmarks import reproduce_mnist1d

    return {
        name: reproduce_mnist1d.train(name, args.reproduce_steps, seed=0)
        for name in args.reproduce_models
    }


def device_info() -> dict[str, Any]:
    """What the suite ran on."""
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "jax_version": jax.__version__,
    }


def print_tables(results: dict[str, Any]) -> None:
    """The suite's tables, plain text."""
    info = results["device"]
    print(
        f"\n{info['device_kind']} x {info['device_count']} ({info['platform']}, jax "
        f"{info['jax_version']})"
    )
    rows = []
    for name, part in results.get("throughput", {}).items():
        f32, bf16 = part["float32"], part["bfloat16"]
        rows.append(
            [
                name,
                f32["batch"],
                f32["examples_per_s"],
                bf16.get("examples_per_s"),
                (bf16["examples_per_s"] / f32["examples_per_s"])
                if "examples_per_s" in bf16
                else None,
                f32["compile_seconds"],
            ]
        )
    if rows:
        headers = ["model", "batch", "f32 ex/s", "bf16 ex/s", "bf16 x", "compile s"]
        print(common.format_table(headers, rows))
    search = results.get("search")
    if search:
        rows = [["sequential", search["sequential_runs"], search["sequential_trials_per_s"], 1.0]]
        for n, rate in search["batched"].items():
            rows.append([f"batched N={n}", n, rate, search["ratio_to_sequential"][n]])
        pruned = search.get("pruned", {})
        for n, rate in pruned.get("trials_per_s", {}).items():
            rows.append([f"pruned N={n}", n, rate, pruned["ratio_to_sequential"][n]])
        print(common.format_table(["search", "trials", "trials/s", "x sequential"], rows))
    reproduction = results.get("mnist1d")
    if reproduction:
        rows = [
            [name, r["test_accuracy"], r["wall_seconds"], r["compile_seconds"], r["steps_per_s"]]
            for name, r in reproduction.items()
        ]
        print(common.format_table(["mnist1d", "test acc", "wall s", "compile s", "steps/s"], rows))


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The suite's options; --small shrinks every size for a quick check on a CPU."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/gpu_suite.json")
    parser.add_argument("--small", action="store_true", help="tiny sizes: check that it runs")
    parser.add_argument("--parts", default="throughput,search,mnist1d")
    parser.add_argument("--models", default=",".join(THROUGHPUT_MODELS))
    parser.add_argument("--budget_seconds", type=float, default=480.0)
    parser.add_argument("--search_model", default="mlp", help="benchmarks/search_throughput model")
    parser.add_argument(
        "--search_steps", type=int, help="steps per trial (default 900; --small: 5)"
    )
    parser.add_argument(
        "--prune_rungs", type=int, default=3, help="the pruned search's rungs (1: not timed)"
    )
    args = parser.parse_args(argv)
    small = args.small
    args.min_batch = 8 if small else 256
    args.max_batch = 16 if small else 65536
    args.steps_per_call = 2 if small else 20
    args.repeats = 1 if small else 3
    args.search_steps = args.search_steps or (5 if small else 900)
    args.search_sizes = [1, 4] if small else [1, 16, 64, 256]
    args.sequential_runs = 2 if small else 16
    args.reproduce_steps = 20 if small else common.PAPER_STEPS
    args.reproduce_models = ["mlp"] if small else ["mlp", "cnn", "lstm"]
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    args.models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [p for p in args.parts if p not in ("throughput", "search", "mnist1d")]
    unknown += [m for m in args.models if m not in THROUGHPUT_MODELS]
    if unknown:
        parser.error(
            f"unknown part(s) or model(s) {unknown}; valid parts: throughput, search, "
            f"mnist1d; models: {', '.join(THROUGHPUT_MODELS)}"
        )
    return args


def main(argv: list[str]) -> int:
    """Run the parts in the order given, rewriting the JSON after each; print the tables."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    results: dict[str, Any] = {"device": device_info(), "small": args.small, "skipped": []}
    print(results["device"], flush=True)

    def over_budget(part: str) -> bool:
        if time.perf_counter() - t_start > args.budget_seconds:
            results["skipped"].append(part)
            return True
        return False

    for part in args.parts:
        if part == "throughput":
            results["throughput"] = {}
            for name in args.models:
                if not over_budget(f"throughput:{name}"):
                    results["throughput"][name] = fill_the_chip(
                        name, args.min_batch, args.max_batch, args.steps_per_call, args.repeats
                    )
                    common.write_json(args.out, results)
        elif not over_budget(part):
            print(f"{part} ...", flush=True)
            results[part] = {"search": search_part, "mnist1d": mnist1d_part}[part](args)
            common.write_json(args.out, results)
    results["wall_seconds"] = time.perf_counter() - t_start
    common.write_json(args.out, results)
    print_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
