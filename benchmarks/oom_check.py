"""Provoke a real out-of-memory error and print, as JSON, what the stage reported.

Each scenario runs the start_simple stage in this process inside `memory.run_guarded`, as
`python -m workflow.start_simple` does, on a wide MLP whose training batch is sized from the
device's memory (the allocator's limit) and the step's measured activations per example, so
that one step needs several times what the device has:

  halving   --config.memory.retry_halving=True: expect status "ok", an `out_of_memory` warning
            and attempts that halve the batch size until one fits.
  no_retry  the same batch without retry: expect exit code 1, status "failed" and an
            `out_of_memory` error carrying the sizes (parameters, activations) and what to scale
            back, with no traceback.
  model     (opt-in, slower) a model whose parameters alone exceed the device: expect exit 1
            after halving down to batch size 1.

Command:
    python -m benchmarks.oom_check                       # on a GPU: ~2.5 minutes on an H100
    python -m benchmarks.oom_check --small               # anywhere: nothing runs out of memory
    python -m benchmarks.oom_check --small --simulate    # CPU: memory.step_limit_mb provokes it

Only the JSON goes to stdout (the stages' own console output and XLA's autotuning log go to
stderr); the exit code is 0 when every scenario behaved as expected.

Measured on one NVIDIA H100 80GB HBM3 (jax 0.11.2, flax 0.12.10 of the lent machine's image;
allocator limit 63.8 GB, 75% preallocated), JSON in benchmarks/results/h100_oom_check.json: the
8192-wide MLP needs 64 KiB of activations per example, so the batch was 4,194,304. halving: out
of memory at 4,194,304, 2,097,152 and 1,048,576 (XLA failed to allocate 128, 64 and 32 GiB),
trained at 524,288 (status ok, an out_of_memory warning; 128 s). no_retry: exit 1, status
failed, an out_of_memory error with 67,371,018 parameters (257 MiB), activations 256 GiB
(scaled from a compiled batch of 64: the full step does not compile) and the four suggestions
(20 s). `--overshoot=2` starts one halving lower and saves about a third of the time.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
from typing import Any

import jax

from benchmarks import common
from workflow import config_lib, experiment
from workflow.diagnostics import memory

SCENARIOS = ("halving", "no_retry", "model")
# The MLP of the batch-driven scenarios: wide enough that activations, not parameters, dominate
# (8192 x 8192 is 67M parameters: 268 MB, 0.8 GB with Adam's moments).
WIDTH = 8192
# One step at the chosen batch needs at least this many times the device's memory.
OVERSHOOT = 3.0
# Without a device memory limit (CPU), the batch-driven scenarios use this batch.
CPU_BATCH = 64


def make_config(width: int, batch: int, num_train: int, *, depth: int = 2):
    """A synthetic tabular problem and an MLP of `depth` layers of `width`, two steps long."""
    config = config_lib.load_config_file(os.path.join(common_root(), "configs", "synthetic.py"))
    config.dataset.kwargs.num_train = num_train
    config.dataset.kwargs.num_test = 200
    config.model.hidden_sizes = (width,) * depth
    config.batch_size = batch
    config.eval_batch_size = min(batch, 4096)
    config.num_steps = 2
    config.steps_per_call = 1
    config.log_every = 1
    config.eval_every = 2
    config.checkpoint_every = 0
    config.progress = False
    return config


def common_root() -> str:
    """The repository root (configs/ lives there)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def device_limit() -> int | None:
    """The allocator's byte limit on the first device (None on the CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def oversized_batch(width: int, limit: int, overshoot: float) -> tuple[int, dict[str, Any]]:
    """A power-of-two batch whose step needs `overshoot` x `limit`, from a small batch's
    compiled memory analysis (nothing is allocated)."""
    probe = make_config(width, 1024, 1200)
    sizes = memory.estimate(probe)
    per_example = max(1, sizes.get("activation_bytes_per_example", 0))
    batch = 2 ** math.ceil(math.log2(overshoot * limit / per_example))
    return batch, sizes


def run_scenario(name: str, config, workdir: str) -> dict[str, Any]:
    """Run start_simple on `config` inside the out-of-memory guard; what it reported."""

    def stage() -> int:
        setup = experiment.prepare(config)
        summary = experiment.train_and_report(setup, workdir, "start_simple", None)
        return 0 if summary.status == "ok" else 1

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        code = memory.run_guarded(stage, config, workdir, "start_simple")
    seconds = time.perf_counter() - t0
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    oom = next((f for f in summary["findings"] if f["id"] == "out_of_memory"), None)
    result = {
        "exit_code": code,
        "status": summary["status"],
        "findings": [f"{f['severity']}:{f['id']}" for f in summary["findings"]],
        "final_batch_size": summary["config"]["batch_size"],
        "seconds": round(seconds, 1),
    }
    if oom is not None:
        ev = oom["evidence"]
        result["out_of_memory"] = {
            "severity": oom["severity"],
            "message": oom["message"],
            "attempts": [[a["batch_size"], a["result"]] for a in ev.get("attempts", [])],
            "error": ev.get("error"),
            "num_params": ev.get("num_params"),
            "activation_bytes": ev.get("activation_bytes"),
            "param_bytes": ev.get("param_bytes"),
            "device_memory": ev.get("device_memory"),
            "estimate_source": ev.get("estimate_source"),
            "suggestions": oom["suggestions"],
        }
    return result


def expectation(name: str, result: dict[str, Any], provoked: bool) -> tuple[str, bool]:
    """What the scenario should report, and whether it did."""
    oom = result.get("out_of_memory")
    if not provoked:
        return "status ok, no out_of_memory", result["status"] == "ok" and oom is None
    if name == "halving":
        ok = (
            result["status"] == "ok"
            and oom is not None
            and oom["severity"] == "warning"
            and oom["attempts"][-1][1] == "ok"
            and len(oom["attempts"]) >= 2
        )
        return "status ok after halving; out_of_memory warning listing each attempt", ok
    ok = result["exit_code"] == 1 and oom is not None and oom["severity"] == "error"
    return "exit 1, status failed, out_of_memory error with the sizes", ok


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print their reports as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny sizes: nothing runs out")
    parser.add_argument(
        "--simulate",
        action="store_true",
        help="with --small: provoke it with memory.step_limit_mb (a CPU has no device limit)",
    )
    parser.add_argument("--scenarios", default="halving,no_retry", help=",".join(SCENARIOS))
    parser.add_argument(
        "--overshoot",
        type=float,
        default=OVERSHOOT,
        help="one step at the first batch needs this many times the device's memory",
    )
    parser.add_argument("--workdir", default=None, help="keep the run directories here")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        parser.error(f"unknown scenario(s) {unknown or args.scenarios!r}; valid: {SCENARIOS}")

    limit = None if args.small else device_limit()
    if not args.small and limit is None:
        parser.error("no device memory limit on this backend (CPU?): use --small [--simulate]")
    report: dict[str, Any] = {
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "device_memory_limit_bytes": limit,
        "mode": "small+simulate" if args.simulate else "small" if args.small else "device",
        "scenarios": {},
    }
    if args.small:
        width, batch = 32, CPU_BATCH
    else:
        width = WIDTH
        batch, probe = oversized_batch(width, limit, args.overshoot)
        report["activation_bytes_per_example"] = probe.get("activation_bytes_per_example")
    report["batch_size"] = batch
    step_limit = None
    if args.simulate:
        # Between what batch/4 and batch/2 need: two halvings, then it fits.
        quarter = memory.estimate(make_config(width, batch // 4, int(batch / 0.9) + 1))
        step_limit = (quarter["training_bytes"] + 1) / memory.MIB
        report["step_limit_mb"] = step_limit
    with contextlib.ExitStack() as stack:
        root = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="oom_"))
        all_ok = run_all(names, args, report, root, width, batch, limit, step_limit)
    if args.workdir:
        report["workdir"] = args.workdir
    report["all_as_expected"] = all_ok
    print(json.dumps(report, indent=2))
    if args.out:
        common.write_json(args.out, report)
    return 0 if all_ok else 1


def run_all(
    names: list[str],
    args: argparse.Namespace,
    report: dict[str, Any],
    root: str,
    width: int,
    batch: int,
    limit: int | None,
    step_limit: float | None,
) -> bool:
    """Every scenario in `names`, each in its own run directory under `root`."""
    all_ok = True
    for name in names:
        if name == "model":
            # Parameters alone beyond the device: a width x width layer of float32 fills it.
            wide = 1024 if args.small else int(math.sqrt((limit or 0) / 4)) + 1
            config = make_config(wide, 8, 100)
        else:
            config = make_config(width, batch, int(batch / 0.9) + 1)
        config.memory.retry_halving = name != "no_retry"
        if step_limit is not None:
            config.memory.step_limit_mb = step_limit
        workdir = os.path.join(root, name)
        result = run_scenario(name, config, workdir)
        provoked = not args.small or args.simulate
        result["expected"], result["as_expected"] = expectation(name, result, provoked)
        all_ok &= result["as_expected"]
        report["scenarios"][name] = result
        print(f"oom_check: {name}: {result['status']} ({result['seconds']} s)", file=sys.stderr)
    return all_ok


if __name__ == "__main__":
    sys.exit(main())
