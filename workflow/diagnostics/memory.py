"""Out of memory: XLA's resource-exhausted error becomes an `out_of_memory` finding.

Every stage runs inside `run_guarded` (cli.run does it). When the device runs out of memory
anywhere in a stage, the stage writes summary.json (status "failed") and report.md with one
`out_of_memory` finding instead of a traceback, and exits 1. The finding carries the sizes that
drove the memory (batch size, parameters, optimizer state, the activations of one training
step from XLA's own memory analysis of the compiled step, the training set kept on the device)
and what to scale back in the workflow's order: batch size, model size, sequence/image size,
precision.

With `--config.memory.retry_halving=True` the stage is run again at half the batch size (and
half the eval batch size) until it fits; summary.json then holds an `out_of_memory` warning
listing every attempt. `--config.memory.step_limit_mb=N` treats a training step estimated above
N MiB as out of memory before it runs: the same path, testable on a CPU (and a way to keep a
run within a share of a GPU).
"""

from __future__ import annotations

import gc
import math
import os
import re
import shlex
import shutil
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

import models
from workflow import config_lib, reporting
from workflow.diagnostics.findings import Finding, rank_findings
from workflow.reporting import rundir
from workflow.reporting.summary import Summary

MIB = 2**20
# Where compiling a step at the real batch size fails, the estimate compiles this one and scales.
SMALL_BATCH = 64
# batch_sizes() names -> config keys.
_CONFIG_KEYS = {
    "batch_size": "batch_size",
    "eval_batch_size": "eval_batch_size",
    "debug_batch_size": "debug.batch_size",
}
OOM_MARKER = "RESOURCE_EXHAUSTED"  # the XLA status every out-of-memory error carries


def out_of_memory_error(error: BaseException | None) -> BaseException | None:
    """XLA's resource-exhausted error: `error` itself or one it was raised from, else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, jax.errors.JaxRuntimeError) and OOM_MARKER in str(error):
            return error
        error = error.__cause__ or error.__context__
    return None


# XLA's allocator names the failed request somewhere in the message; on GPUs the first line may
# only say that autotuning failed ("Failed to get configs for: 4 out of 32 instructions").
_ALLOCATION_RE = re.compile(r"Out of memory while trying to allocate [^\n\[]*")


def error_line(error: BaseException) -> str:
    """One line for an out-of-memory error: the allocation that failed where XLA names it."""
    match = _ALLOCATION_RE.search(str(error))
    if match:
        return f"{OOM_MARKER}: {match.group(0).strip().rstrip('.')}"
    return _first_line(error)


def is_out_of_memory(error: BaseException | None) -> bool:
    """Whether `error`, or an error it was raised from, is XLA's resource-exhausted error."""
    return out_of_memory_error(error) is not None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:500] if lines else type(error).__name__


# ----------------------------------------------------------------------------- batch sizes


def batch_sizes(config: ml_collections.ConfigDict) -> dict[str, int]:
    """The batch sizes a retry halves: training, evaluation and the debug stage's batch."""
    sizes = {"batch_size": int(config.batch_size), "eval_batch_size": int(config.eval_batch_size)}
    if "debug" in config:
        sizes["debug_batch_size"] = int(config.debug.batch_size)
    return sizes


def batch_multiple(config: ml_collections.ConfigDict) -> int:
    """The multiple a batch must stay: the data-parallel device count (1 on one device)."""
    parallel = config.get("parallel")
    if parallel is None:
        return 1
    count = parallel.get("data_devices", 0) or len(jax.devices())
    return max(1, int(count))


def _halved(batch: int, config: ml_collections.ConfigDict) -> int:
    """Half of `batch`, rounded down to a multiple of the data-parallel devices."""
    step = batch_multiple(config)
    return max(step, batch // 2 // step * step)


def halve_batch(config: ml_collections.ConfigDict) -> bool:
    """Halve the batch sizes in place (kept a multiple of the data-parallel devices); False
    when the training batch is already at its smallest."""
    smaller = _halved(config.batch_size, config)
    if smaller >= config.batch_size:
        return False
    config.batch_size = smaller
    config.eval_batch_size = max(1, config.eval_batch_size // 2)
    if "debug" in config and config.debug.batch_size > smaller:
        config.debug.batch_size = smaller
    return True


# ----------------------------------------------------------------------------- estimate


def _nbytes(tree: Any) -> int:
    return sum(
        math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
    )


def _resolved(config: ml_collections.ConfigDict, dataset: Any) -> ml_collections.ConfigDict:
    """A copy with what experiment.prepare fills in from the data (model 'auto', augment kind)."""
    config = config.copy_and_resolve_references()
    if config.model.name == "auto":
        config.model.name = models.default_model_for_kind(dataset.kind)
    if "augment" in config and config.augment.get("kind") is None:
        config.augment.kind = dataset.kind
    return config


# estimate() results by config: a stage's retries and its final finding compile each once.
_ESTIMATES: dict[str, dict[str, Any]] = {}


def estimate(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The sizes that drive a training step's memory at config.batch_size; never raises.

    Nothing is allocated on the device: the model is built under `jax.eval_shape` and one
    training step is compiled for abstract inputs, whose `memory_analysis()` gives XLA's own
    argument, output and temporary (activation and workspace) sizes.
    """
    key = config.to_json_best_effort(sort_keys=True)
    if key not in _ESTIMATES:
        if len(_ESTIMATES) > 16:
            _ESTIMATES.clear()
        _ESTIMATES[key] = _estimate(config)
    sizes = dict(_ESTIMATES[key])
    if stats := _device_memory():  # read now: the allocator's peak changes as the stage runs
        sizes["device_memory"] = stats
    return sizes


def _estimate(config: ml_collections.ConfigDict) -> dict[str, Any]:
    from workflow import data, engine
    from workflow.reporting import model_summary

    batch = int(config.batch_size)
    out: dict[str, Any] = {"batch_size": batch}
    try:
        # Whole, without per-host loading's collectives: one process may be the only one here.
        dataset = data.load_dataset(
            config.dataset, seed=config.seed, shard=None, task=config.get("task", "classification")
        )
    except Exception as e:  # noqa: BLE001 - the finding still names the batch size
        out["error"] = f"cannot load the dataset: {_first_line(e)}"
        return out
    shape = tuple(dataset.input_shape)
    x_dtype = dataset.x_train.dtype  # float32, or int32 token ids
    out["input_shape"] = list(shape)
    out["batch_input_bytes"] = batch * math.prod(shape) * x_dtype.itemsize
    # fit() keeps the whole training split on the device and gathers each batch from it.
    out["train_set_bytes"] = int(dataset.x_train.nbytes + dataset.y_train.nbytes)
    try:
        config = _resolved(config, dataset)
        built: dict[str, Any] = {}

        def build():
            model = engine.build_model(config, shape, dataset.num_classes)
            built["layers"] = model_summary.summarize(model, shape, batch, x_dtype)["layers"]
            task, state = engine.create_train_state(model, config, task_kind=dataset.task)
            built["task"] = task
            return state

        state = jax.eval_shape(build)
    except Exception as e:  # noqa: BLE001
        out["error"] = f"cannot build the model abstractly: {_first_line(e)}"
        return out
    out["num_params"] = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state.params))
    out["param_bytes"] = _nbytes(state.params)
    out["optimizer_state_bytes"] = _nbytes(state.opt_state)
    out["largest_layer_outputs"] = _largest_layer_outputs(built.get("layers", []))
    out.update(_step_memory(built["task"], state, shape, x_dtype, batch, out["train_set_bytes"]))
    return out


def _largest_layer_outputs(layers: list[dict]) -> list[dict[str, Any]]:
    """The three layers with the largest outputs per example (float32 bytes)."""
    widest = [
        {
            "path": layer["path"],
            "output_shape": layer["output_shape"],
            "bytes_per_example": math.prod(layer["output_shape"][1:]) * 4,
        }
        for layer in layers
        if layer["path"] and layer["output_shape"] and isinstance(layer["output_shape"][0], int)
    ]
    return sorted(widest, key=lambda w: -w["bytes_per_example"])[:3]


def _step_memory(
    task: Any, state: Any, shape: tuple, x_dtype: Any, batch: int, train_set_bytes: int
) -> dict[str, Any]:
    """XLA's memory analysis of one compiled training step at `batch` (scaled from a small batch
    when the compiler refuses the full one): the step's and the whole training's bytes, or
    "error" when no step compiles."""
    from workflow import engine

    step = jax.jit(engine.make_train_step(task))

    def analyze(size: int) -> Any:
        abstract_batch = {
            "x": jax.ShapeDtypeStruct((size, *shape), x_dtype),
            "y": jax.ShapeDtypeStruct((size,), jnp.int32),
        }
        return step.lower(state, abstract_batch).compile().memory_analysis()

    scaled_from = None
    try:
        analysis = analyze(batch)
    except Exception as e:  # noqa: BLE001 - e.g. the compiler refuses a step beyond the device
        if batch <= SMALL_BATCH:
            return {"error": f"cannot compile one training step: {_first_line(e)}"}
        # Activations grow linearly with the batch: measure a small one and scale.
        try:
            analysis, scaled_from = analyze(SMALL_BATCH), SMALL_BATCH
        except Exception:  # noqa: BLE001
            return {"error": f"cannot compile one training step: {_first_line(e)}"}
    temp = int(analysis.temp_size_in_bytes)
    arguments = int(analysis.argument_size_in_bytes)
    if scaled_from:
        temp = temp * batch // scaled_from
        arguments += (batch - scaled_from) * (math.prod(shape) * x_dtype.itemsize + 4)
    outputs = int(analysis.output_size_in_bytes)
    aliased = int(analysis.alias_size_in_bytes)
    return {
        "step": {
            "argument_bytes": arguments,
            "output_bytes": outputs,
            "alias_bytes": aliased,
            "temp_bytes": temp,
        },
        "activation_bytes": temp,
        "activation_bytes_per_example": temp // max(1, batch),
        "training_bytes": arguments + outputs - aliased + temp + train_set_bytes,
        "source": "XLA memory_analysis() of one compiled training step"
        + (f" at batch size {scaled_from}, scaled linearly" if scaled_from else ""),
    }


def _device_memory() -> dict[str, int] | None:
    """The allocator's limit and peak on the first device (None where unsupported: CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001
        return None
    if not stats:
        return None
    keys = ("bytes_limit", "peak_bytes_in_use", "bytes_in_use")
    return {k: int(stats[k]) for k in keys if k in stats}


def _mib(value: Any) -> str:
    """Bytes the way a person reads them: 800 B, 78.2 KiB, 1.5 GiB."""
    if not isinstance(value, int | float):
        return "unknown"
    for unit, scale in (("GiB", 2**30), ("MiB", MIB), ("KiB", 2**10)):
        if abs(value) >= scale:
            return f"{value / scale:,.1f} {unit}"
    return f"{value:,.0f} B"


# ----------------------------------------------------------------------------- finding


def out_of_memory_finding(
    stage: str,
    attempts: list[dict[str, Any]],
    sizes: dict[str, Any],
    config: ml_collections.ConfigDict,
    *,
    retry: dict[str, Any],
) -> Finding:
    """`out_of_memory` with the sizes that drove it and what to scale back, in order.

    An error when the stage could not finish; a warning when halving the batch made it fit.
    """
    failed = [a for a in attempts if a["result"] == "out_of_memory"]
    recovered = attempts[-1]["result"] == "ok"
    first, last = attempts[0], attempts[-1]
    batch = last["batch_size"] if recovered else failed[-1]["batch_size"]
    if recovered:
        message = (
            f"the device ran out of memory during {stage} at batch size "
            + ", ".join(str(a["batch_size"]) for a in failed)
            + f"; halving the batch size made it fit at {batch}"
        )
    elif len(failed) > 1 and retry.get("stopped_because") == "smallest batch size":
        message = (
            f"the device ran out of memory during {stage} at every batch size from "
            f"{first['batch_size']} down to {batch}: what does not shrink with the batch "
            "(parameters, optimizer state, the training set on the device) does not fit"
        )
    else:
        message = f"the device ran out of memory during {stage} at batch size {batch}"
    act = sizes.get("activation_bytes")
    params, opt = sizes.get("param_bytes"), sizes.get("optimizer_state_bytes")
    if act is not None and not recovered:
        message += (
            f" (one training step: activations {_mib(act)}, parameters {_mib(params)}, "
            f"optimizer state {_mib(opt)})"
        )
    suggestions = _suggestions(sizes, config, batch, recovered, retry, attempts)
    evidence = {
        "stage": stage,
        "batch_size": batch,
        "num_params": sizes.get("num_params"),
        "param_bytes": params,
        "optimizer_state_bytes": opt,
        "activation_bytes": act,
        "activation_bytes_per_example": sizes.get("activation_bytes_per_example"),
        "training_bytes": sizes.get("training_bytes"),
        "input_shape": sizes.get("input_shape"),
        "train_set_bytes": sizes.get("train_set_bytes"),
        "largest_layer_outputs": sizes.get("largest_layer_outputs"),
        "device_memory": sizes.get("device_memory"),
        "error": failed[-1].get("error") if failed else None,
        "attempts": attempts,
        "retry": retry,
        "estimate_batch_size": sizes.get("batch_size"),
        "estimate_source": sizes.get("source") or sizes.get("error"),
    }
    return Finding(
        id="out_of_memory",
        severity="warning" if recovered else "error",
        message=message,
        evidence={k: v for k, v in evidence.items() if v is not None},
        suggestions=suggestions,
    )


def override_flags(attempts: list[dict[str, Any]]) -> list[str]:
    """--config.* flags for the batch sizes the last attempt changed from the first."""
    first, last = attempts[0], attempts[-1]
    return [
        f"--config.{key}={last[name]}"
        for name, key in _CONFIG_KEYS.items()
        if name in last and last[name] != first.get(name)
    ]


def _suggestions(
    sizes: dict[str, Any],
    config: ml_collections.ConfigDict,
    batch: int,
    recovered: bool,
    retry: dict[str, Any],
    attempts: list[dict[str, Any]],
) -> list[str]:
    """What to scale back, in the workflow's order: batch, model, sequence/image size, precision."""
    act = sizes.get("activation_bytes")
    per_example = sizes.get("activation_bytes_per_example")
    if recovered:
        first = (
            f"batch size: pass {' '.join(override_flags(attempts))} to the next stages (the "
            "original batch size runs out of memory); a smaller batch changes the gradient "
            "noise, so re-tune the learning rate (workflow.tune)"
        )
    elif batch > batch_multiple(config):
        first = f"batch size: halve it, --config.batch_size={_halved(batch, config)}"
        first += (
            " (with --config.optimizer.accumulate_steps=2 the update still averages the "
            f"gradients of {2 * _halved(batch, config)} examples)"
        )
        if act is not None:
            first += f" (activations {_mib(act)} at {batch}, ~{_mib(per_example)} per example)"
        if not retry.get("enabled"):
            first += "; or let the stage find one that fits: --config.memory.retry_halving=True"
    else:
        params, opt = _mib(sizes.get("param_bytes")), _mib(sizes.get("optimizer_state_bytes"))
        first = (
            f"batch size: already {batch}, the smallest; what stays regardless of it does not "
            f"fit: parameters {params}, optimizer state {opt}, training set "
            f"{_mib(sizes.get('train_set_bytes'))}"
        )
    model = "model size: fewer or narrower layers"
    if sizes.get("num_params") is not None:
        model += (
            f" ({sizes['num_params']:,} parameters take {_mib(sizes.get('param_bytes'))}, the "
            f"optimizer state {_mib(sizes.get('optimizer_state_bytes'))}, the gradients as "
            "much again)"
        )
    widest = sizes.get("largest_layer_outputs") or []
    if widest:
        model += "; the widest outputs per example: " + ", ".join(
            f"{w['path']} {tuple(w['output_shape'][1:])}" for w in widest
        )
    shape = sizes.get("input_shape")
    inputs = "sequence/image size: shorter sequences or smaller images"
    if shape:
        inputs += f" (inputs {tuple(shape)}; activations scale with their length/area)"
    on_device = config.get("dataset", {}).get("pipeline", "memory") == "memory"
    if sizes.get("train_set_bytes") is not None and on_device:
        inputs += (
            f"; the training set is kept on the device ({_mib(sizes['train_set_bytes'])}): "
            "--config.dataset.pipeline=grain streams it batch by batch instead, "
            "--config.dataset.train_size takes a subset"
        )
    if "dtype" not in config:
        precision = "precision: lower-precision activations (bfloat16) halve their memory"
    elif config.dtype == "bfloat16":
        precision = (
            "precision: already bfloat16 (config.dtype); parameters and optimizer state stay "
            "float32, so the steps above come first"
        )
    else:
        precision = (
            "precision: compute in bfloat16, --config.dtype=bfloat16 (about halves the "
            "activations; parameters and optimizer state stay float32)"
        )
    return [first, model, inputs, precision]


# ----------------------------------------------------------------------------- the guard


def _saved_work(workdir: str) -> bool:
    """Whether the run directory holds something worth keeping: checkpoints or a study."""
    for root, dirs, files in os.walk(workdir):
        if rundir.STUDY in files:
            return True
        if os.path.basename(root) == rundir.CHECKPOINTS and (dirs or files):
            return True
    return False


def _is_empty(workdir: str | None) -> bool:
    """Whether nothing but the stage's own lock is in `workdir`."""
    if workdir is None or not os.path.isdir(workdir):
        return True
    return not [name for name in os.listdir(workdir) if name != rundir.LOCK]


def _clear(workdir: str, existed: bool) -> None:
    """Remove what a failed attempt wrote (the directory was empty when the stage began); the
    lock the stage holds on it stays."""
    if not os.path.isdir(workdir):
        return
    for name in os.listdir(workdir):
        if name == rundir.LOCK:
            continue
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    if not existed and not os.listdir(workdir):
        os.rmdir(workdir)


def _simulated(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]] | None:
    """memory.step_limit_mb: (the error line, the estimate) when one step would exceed it."""
    limit = (config.get("memory") or {}).get("step_limit_mb")
    if limit is None:
        return None
    sizes = estimate(config)
    need = sizes.get("training_bytes")
    if need is None or need <= limit * MIB:
        return None
    line = (
        f"{OOM_MARKER}: simulated by memory.step_limit_mb={limit:g}: training at batch size "
        f"{config.batch_size} needs {_mib(need)}"
    )
    return line, sizes


def run_guarded(
    run_stage: Callable[[], int],
    config: ml_collections.ConfigDict,
    workdir: str | None,
    stage: str,
) -> int:
    """Run a stage; turn running out of device memory into an `out_of_memory` finding (exit 1),
    and with memory.retry_halving rerun it at half the batch size until it fits.

    `run_stage` reads `config`, which a retry changes in place. A retry first removes what the
    failed attempt wrote, so it only runs when the run directory was empty at the start and
    holds no checkpoint since; otherwise the finding says why it did not.
    """
    config_lib.validate_debug_and_memory(config)
    retry_on = bool((config.get("memory") or {}).get("retry_halving", False))
    existed = workdir is not None and os.path.isdir(workdir)
    fresh = _is_empty(workdir)
    attempts: list[dict[str, Any]] = []
    sizes: dict[str, Any] | None = None
    while True:
        record = batch_sizes(config)
        simulated = _simulated(config)
        if simulated is None:
            try:
                code = run_stage()
            except Exception as e:
                cause = out_of_memory_error(e)
                if cause is None:
                    raise
                record.update(result="out_of_memory", error=error_line(cause))
                del cause
                sizes = None
            else:
                if attempts:
                    attempts.append({**record, "result": "ok"})
                    _record_recovery(workdir, stage, config, attempts, retry_on)
                return code
        else:
            line, sizes = simulated
            record.update(result="out_of_memory", error=line)
        attempts.append(record)
        # The failed attempt's frames (and the device buffers they hold) are gone by now.
        gc.collect()
        stopped = _no_retry_because(config, workdir, retry_on, fresh)
        if stopped is None:
            print(
                f"{stage}: out of memory at batch size {record['batch_size']}; retrying at "
                f"{config.batch_size} (memory.retry_halving)",
                flush=True,
            )
            if workdir is not None:
                _clear(workdir, existed)
            continue
        if sizes is None or sizes.get("batch_size") != config.batch_size:
            sizes = estimate(config)
        retry = {"enabled": retry_on, "stopped_because": stopped}
        finding = out_of_memory_finding(stage, attempts, sizes, config, retry=retry)
        if workdir is not None:
            if fresh and not _saved_work(workdir):
                _clear(workdir, existed)  # so the same command with a smaller batch can rerun
            write_failure(workdir, stage, config, finding, sizes)
        print_finding(stage, finding)
        return 1


def _no_retry_because(
    config: ml_collections.ConfigDict, workdir: str | None, retry_on: bool, fresh: bool
) -> str | None:
    """Why a failed attempt is not retried; None after halving config.batch_size for a retry."""
    if not retry_on:
        return "retry off (memory.retry_halving=False)"
    if not fresh:
        return f"--workdir={workdir} held an earlier run: its batch size is fixed"
    if workdir is not None and _saved_work(workdir):
        return "the attempt saved checkpoints or a study, which a retry would discard"
    if not halve_batch(config):
        return "smallest batch size"
    return None


def write_failure(
    workdir: str,
    stage: str,
    config: ml_collections.ConfigDict,
    finding: Finding,
    sizes: dict[str, Any],
) -> None:
    """summary.json (status failed) and report.md for a stage stopped by running out of memory;
    nothing in a directory that holds another kind of run (the console has the finding)."""
    run = rundir.RunDir(workdir)
    if run.kind not in (None, rundir.KINDS.get(stage)):
        return
    summary = Summary(
        stage=stage,
        status="failed",
        config=rundir.config_to_dict(config),
        metrics={},
        findings=[finding],
        next=[],
        memory={"attempts": finding.evidence["attempts"], "estimate": sizes},
    )
    run.write_summary(summary)
    run.write_report(
        f"{stage}: out of memory (failed)",
        [
            ("Findings", reporting.findings_markdown(summary.findings)),
            ("Memory", memory_markdown(finding.evidence["attempts"], sizes)),
        ],
    )


def memory_markdown(attempts: list[dict[str, Any]], sizes: dict[str, Any] | None) -> str:
    """The attempts (batch sizes and outcome) and the estimated sizes as markdown tables."""
    rows = [
        [i + 1, a["batch_size"], a["eval_batch_size"], a["result"], a.get("error", "")]
        for i, a in enumerate(attempts)
    ]
    text = reporting.markdown_table(["attempt", "batch", "eval batch", "result", "error"], rows)
    if sizes:
        keys = (
            "batch_size",
            "num_params",
            "param_bytes",
            "optimizer_state_bytes",
            "activation_bytes",
            "activation_bytes_per_example",
            "train_set_bytes",
            "training_bytes",
        )
        size_rows = [
            [k, _mib(sizes[k]) if "bytes" in k else reporting.fmt(sizes[k])]
            for k in keys
            if sizes.get(k) is not None
        ]
        text += "\n\n" + reporting.markdown_table(["size", "value"], size_rows)
        if sizes.get("source"):
            text += f"\n\nFrom the {sizes['source']} at batch size {sizes['batch_size']}."
    return text


def _record_recovery(
    workdir: str | None,
    stage: str,
    config: ml_collections.ConfigDict,
    attempts: list[dict[str, Any]],
    retry_on: bool,
) -> None:
    """Add the `out_of_memory` warning and the attempts to the summary the stage wrote."""
    # The sizes at the batch size that fits (one more compile, no allocation).
    sizes = estimate(config)
    finding = out_of_memory_finding(
        stage, attempts, sizes, config, retry={"enabled": retry_on, "stopped_because": "it fit"}
    )
    print_finding(stage, finding)
    run = rundir.RunDir(workdir) if workdir else None
    summary = run.read_summary() if run is not None else None
    if summary is None:
        return
    summary.findings = rank_findings([*summary.findings, finding])
    summary.memory = {"attempts": attempts, "estimate": sizes}
    # The next stages inherit this invocation's flags: pass them the batch size that fits.
    extra = override_flags(attempts)
    summary.next = [shlex.join([*shlex.split(cmd), *extra]) for cmd in summary.next]
    run.write_summary(summary)
    run.append_to_report(
        "Out of memory",
        reporting.findings_markdown([finding]) + "\n\n" + memory_markdown(attempts, sizes),
    )


def print_finding(stage: str, finding: Finding) -> None:
    """The finding on the console, instead of a traceback."""
    print(f"{stage}: {finding.severity} out_of_memory: {finding.message}", flush=True)
    for suggestion in finding.suggestions:
        print(f"        try: {suggestion}", flush=True)
