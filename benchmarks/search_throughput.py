"""Search throughput: N trials batched into one vmapped program against N single-trial runs.

The tune stage trains its trials in batches, one compiled program per batch
(workflow/engine/trials.py: the train step `vmap`ped over a leading trial axis). This script
times, in one process, on MNIST-1D (configs/mnist1d.py with the model of --model, batch 100)
and with a fixed trial length of --steps steps:

  batched      one `TrialRunner.run` call training N trials together, for each N of --sizes;
  sequential   --sequential_runs single-trial `TrialRunner.run` calls one after another: the
               same compiled program as N = 1, as a search without batching would run them;
  pruned       with --prune_rungs > 1, N trials halved as the search prunes a group
               (`TrialRunner.run_halving`, workflow/search/pruning.py): all to the first rung,
               the best 1/--prune_factor on to the next, in programs of --prune_width lanes. A
               cut trial counts as a searched trial: it was trained, evaluated and ruled out.

A timed unit is the whole `run` call the tune stage makes: initialization, the training steps
and the validation pass. Every program shape is compiled and run once before any timing; its
compile seconds (the first call minus its best timed call) are reported apart. The sequential
block and the batched calls are then timed in --repeats interleaved rounds, the order rotating
each round, and each keeps its best round: other processes sharing the CPU slow single rounds
down, the best one is the least disturbed. Trials differ in learning rate, L2 weight and seed.

Command:
    python -m benchmarks.search_throughput --out=/tmp/search_throughput.json

Measured here (a shared 2-core CPU with another job on it, no GPU; jax 0.10.2 cpu; mlp, 100
steps at batch 100, best of 3 rounds; two runs of the command above):

    trials                  trials/s        x sequential    wall s (one call)
    sequential, 8 x 1       72.8 / 70.8     1.00            0.11 (the 8 runs)
    batched N = 8           104 / 102       1.43 / 1.44     0.08
    batched N = 32          107 / 111       1.47 / 1.57     0.29
    batched N = 128         92.8 / 95.2     1.27 / 1.35     1.36

Compiling one program shape took 3.4 to 7.7 s (per N, excluded above); a whole run about 35 s.

On this CPU batching gains little (1.3 to 1.6 x): the trials' arithmetic grows with N on the
same two cores, so what batching can save is mostly the per-call host work (dispatch,
initialization, the validation pass), and the gain falls off again at N = 128. The
point of batching is an accelerator, where a model this small leaves the chip mostly idle and
N trials should take little more time than one; this was not measured here: run the command
there to see that ratio.
"""

import argparse
import dataclasses
import math
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np

from benchmarks import common
from workflow import config_lib, data, engine
from workflow.engine import trials as trials_lib
from workflow.search import pruning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(ROOT, "configs", "mnist1d.py")
MODELS = ("mlp", "tcn", "lstm")
DEFAULT_SIZES = (1, 8, 32, 128)
# Ranges the hyperparameters are spread over (log-uniform); the values only need to differ.
LR_RANGE = (1e-4, 1e-2)
L2_RANGE = (1e-6, 1e-3)


def search_config(model: str, steps: int, num_samples: int | None) -> ml_collections.ConfigDict:
    """configs/mnist1d.py:<model> at batch 100 with trials of `steps` steps, no progress bars;
    `num_samples` overrides the generator's example count (train + test, 5,000 by default)."""
    config = config_lib.load_config_file(CONFIG_FILE, model)
    config.batch_size = 100
    config.num_steps = steps
    config.progress = False
    if num_samples:
        config.dataset.kwargs.num_samples = num_samples
    return config


def make_hparams(count: int, seed: int = 0) -> trials_lib.TrialHparams:
    """`count` trials with log-uniform learning rates and L2 weights and distinct seeds."""
    rng = np.random.default_rng(seed)
    lr = np.exp(rng.uniform(*np.log(LR_RANGE), size=count))
    l2 = np.exp(rng.uniform(*np.log(L2_RANGE), size=count))
    return trials_lib.TrialHparams(
        learning_rate=[float(v) for v in lr],
        l2=[float(v) for v in l2],
        seed=[seed + i for i in range(count)],
    )


def subset(hparams: trials_lib.TrialHparams, start: int, count: int) -> trials_lib.TrialHparams:
    """Trials `start` .. `start + count - 1` of `hparams`."""
    stop = start + count
    return trials_lib.TrialHparams(
        learning_rate=hparams.learning_rate[start:stop],
        l2=hparams.l2[start:stop],
        seed=hparams.seed[start:stop],
    )


def timed_run(
    runner: trials_lib.TrialRunner,
    hparams: trials_lib.TrialHparams,
    dataset: data.Dataset,
    steps: int,
) -> float:
    """Wall seconds of one `runner.run` call (it returns host numpy results: all work is done)."""
    t0 = engine.now()
    states, result = runner.run(hparams, dataset, steps)
    jax.block_until_ready(states)
    if not np.all(np.isfinite(result.initial_loss)):
        raise FloatingPointError("a benchmark trial had a non-finite loss in its first window")
    return engine.now() - t0


def timed_halving(
    runner: trials_lib.TrialRunner,
    hparams: trials_lib.TrialHparams,
    dataset: data.Dataset,
    prune: "Pruning",
) -> float:
    """Wall seconds of one successive halving of `hparams` as the search prunes a group: every
    trial to the first rung, the best 1/factor on to the next, in programs of the width's lanes."""
    return runner.run_halving(
        hparams,
        dataset,
        prune.rungs,
        min(len(hparams), prune.width),
        keep=lambda losses, scores: pruning.survivors(losses, prune.factor),
        on_batch=lambda rung, slots, result: False,
        on_rung=lambda rung, kept, cut: None,
    )


@dataclasses.dataclass(frozen=True)
class Pruning:
    """The pruned search's cuts: trial lengths (rungs), the share kept (1/factor), lanes."""

    rungs: tuple[int, ...]
    factor: int
    width: int


def measure(
    runner: trials_lib.TrialRunner,
    dataset: data.Dataset,
    steps: int,
    sizes: list[int],
    sequential_runs: int,
    repeats: int,
    prune: Pruning | None = None,
) -> dict[str, Any]:
    """Best wall seconds of the sequential block, of each batch size and (with `prune`) of each
    pruned search of that many trials, and compile seconds."""
    hparams = make_hparams(max(max(sizes), sequential_runs))
    first_call = {}
    for n in sorted({1, *sizes}):  # compile every program shape (N = 1 is the sequential one)
        first_call[n] = timed_run(runner, subset(hparams, 0, n), dataset, steps)
    if prune:  # the pruned programs' widths (their first rung's states are fresh, later stored)
        for n in sizes:
            timed_halving(runner, subset(hparams, 0, n), dataset, prune)

    def sequential() -> float:
        return sum(
            timed_run(runner, subset(hparams, i, 1), dataset, steps) for i in range(sequential_runs)
        )

    blocks = {"sequential": sequential}
    for n in sizes:
        blocks[str(n)] = lambda n=n: timed_run(runner, subset(hparams, 0, n), dataset, steps)
        if prune:
            blocks[f"pruned {n}"] = lambda n=n: timed_halving(
                runner, subset(hparams, 0, n), dataset, prune
            )
    names = list(blocks)
    best = dict.fromkeys(names, math.inf)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            best[name] = min(best[name], blocks[name]())
    one_trial = best["1"] if "1" in best else best["sequential"] / sequential_runs
    compile_seconds = {
        str(n): max(0.0, seconds - (best[str(n)] if str(n) in best else one_trial))
        for n, seconds in first_call.items()
    }
    return {"best_seconds": best, "compile_seconds": compile_seconds}


def benchmark(
    model: str,
    steps: int,
    sizes: list[int],
    sequential_runs: int,
    repeats: int,
    num_samples: int | None = None,
    prune_rungs: int = 1,
    prune_factor: int = 3,
    prune_width: int = 64,
) -> dict[str, Any]:
    """The JSON payload: trials/s sequential, batched and (prune_rungs > 1) pruned, ratios, wall
    and compile seconds."""
    config = search_config(model, steps, num_samples)
    config_lib.validate_config(config)
    dataset = data.load_dataset(config.dataset, seed=config.seed)
    runner = trials_lib.TrialRunner(config, dataset.input_shape, dataset.num_classes)
    rungs = pruning.rung_steps(steps, prune_rungs, prune_factor, config.steps_per_call)
    prune = Pruning(rungs, prune_factor, prune_width) if len(rungs) > 1 else None
    timing = measure(runner, dataset, steps, sizes, sequential_runs, repeats, prune)
    best = timing["best_seconds"]
    sequential_rate = sequential_runs / best["sequential"]
    batched = {str(n): n / best[str(n)] for n in sizes}
    device = jax.devices()[0]
    pruned = {}
    if prune:
        rates = {str(n): n / best[f"pruned {n}"] for n in sizes}
        pruned = {
            "pruned": {
                "rungs": list(rungs),
                "factor": prune_factor,
                "width": prune_width,
                "trials_per_s": rates,
                "ratio_to_sequential": {n: rate / sequential_rate for n, rate in rates.items()},
                "ratio_to_batched": {n: rate / batched[n] for n, rate in rates.items()},
                "trial_steps": {
                    str(n): pruning.halving_cost(n, rungs, prune_factor) for n in sizes
                },
            }
        }
    return {
        "sequential_trials_per_s": sequential_rate,
        "batched": batched,
        "ratio_to_sequential": {n: rate / sequential_rate for n, rate in batched.items()},
        **pruned,
        "wall_seconds": best,
        "compile_seconds": timing["compile_seconds"],
        "trial_steps_per_s": {n: int(n) * steps / best[n] for n in batched},
        "model": model,
        "steps": steps,
        "batch_size": config.batch_size,
        "train_size": len(dataset.x_train),
        "num_samples": config.dataset.kwargs.get("num_samples"),
        "sequential_runs": sequential_runs,
        "repeats": repeats,
        "device": f"{device.platform}: {device.device_kind} x {jax.device_count()}",
        "jax_version": jax.__version__,
    }


def print_table(results: dict[str, Any]) -> None:
    """The rich table: one row for the sequential block, one per batch size."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"{results['model']} on MNIST-1D, {results['steps']} steps at batch "
            f"{results['batch_size']}, {results['device']}, best of {results['repeats']}"
        )
    )
    for header in ("trials", "wall s", "trials/s", "x sequential", "compile s"):
        table.add_column(header, justify="right")
    seq_n = results["sequential_runs"]
    table.add_row(
        f"{seq_n} x 1 (sequential)",
        f"{results['wall_seconds']['sequential']:.3f}",
        f"{results['sequential_trials_per_s']:.3g}",
        "1.00",
        f"{results['compile_seconds'].get('1', 0.0):.2f}",
    )
    for n, rate in results["batched"].items():
        table.add_row(
            f"{n} batched",
            f"{results['wall_seconds'][n]:.3f}",
            f"{rate:.3g}",
            f"{results['ratio_to_sequential'][n]:.2f}",
            f"{results['compile_seconds'][n]:.2f}",
        )
    pruned = results.get("pruned")
    for n, rate in (pruned or {}).get("trials_per_s", {}).items():
        table.add_row(
            f"{n} pruned at {pruned['rungs'][:-1]}",
            f"{results['wall_seconds'][f'pruned {n}']:.3f}",
            f"{rate:.3g}",
            f"{pruned['ratio_to_sequential'][n]:.2f}",
            "",
        )
    Console().print(table)


def parse_sizes(text: str) -> list[int]:
    """Comma-separated positive trial counts, in the given order without repeats."""
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--sizes={text!r}: comma-separated positive integers") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--sizes={text!r}: comma-separated positive integers")
    return list(dict.fromkeys(sizes))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=MODELS, help="configs/mnist1d.py arg")
    parser.add_argument("--steps", type=int, default=100, help="training steps per trial")
    parser.add_argument(
        "--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="trials per batched call"
    )
    parser.add_argument(
        "--sequential_runs", type=int, default=8, help="single-trial runs per sequential block"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is kept")
    parser.add_argument(
        "--num_samples",
        type=int,
        help="MNIST-1D examples to generate, train + test (default 5,000; fewer for tests)",
    )
    parser.add_argument(
        "--prune_rungs",
        type=int,
        default=1,
        help="also time the pruned search: trials cut at this many rungs (1: off)",
    )
    parser.add_argument("--prune_factor", type=int, default=3, help="keep 1/factor per rung")
    parser.add_argument(
        "--prune_width", type=int, default=64, help="lanes of the pruned search's programs"
    )
    parser.add_argument("--out", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    for name in ("steps", "sequential_runs", "repeats", "prune_rungs", "prune_width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    try:
        args.sizes = parse_sizes(args.sizes)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write --out."""
    args = parse_args(argv)
    results = benchmark(
        args.model,
        args.steps,
        args.sizes,
        args.sequential_runs,
        args.repeats,
        args.num_samples,
        args.prune_rungs,
        args.prune_factor,
        args.prune_width,
    )
    print_table(results)
    if args.out:
        common.write_json(args.out, results)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
