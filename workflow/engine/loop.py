"""The training loop: train from the state's step to num_steps, logging, evaluating,
checkpointing, and stopping on a non-finite loss or gradient."""

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from workflow.engine import distributed
from workflow.engine.early_stopping import EarlyStopping, resume_best
from workflow.engine.evaluator import Evaluator
from workflow.engine.sharding import (
    data_layout,
    data_mesh,
    device_blocks,
    index_sharding,
    replicated,
    state_shardings,
)
from workflow.engine.state import Task, TrainState, copy_state
from workflow.engine.step import make_multi_step


def first_nonfinite(values: np.ndarray) -> int | None:
    """Index of the first NaN/inf in a 1-D array, or None."""
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if bad.size else None


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(tree)]))


def params_finite(state: TrainState) -> bool:
    """Whether every parameter is finite (one compiled check, one host sync)."""
    return bool(_all_finite(state.params))


def schedule_chunks(start: int, stop: int, max_chunk: int, every: tuple[int, ...]) -> list[int]:
    """Chunk lengths from `start` to `stop` that end exactly on every multiple of `every`."""
    chunks, step = [], start
    while step < stop:
        end = min(stop, step + max_chunk)
        for period in every:
            if period > 0:
                end = min(end, (step // period + 1) * period)
        chunks.append(end - step)
        step = end
    return chunks


def format_rate(steps: int, seconds: float) -> float:
    """Steps per second, safe for a zero duration."""
    return steps / seconds if seconds > 0 else math.inf


def now() -> float:
    """Monotonic wall clock in seconds."""
    return time.perf_counter()


@dataclasses.dataclass
class FitResult:
    """What a training run produced: final state, status, logged records and timing."""

    state: TrainState  # with early stopping: the best evaluated state, else the last one
    status: str  # "ok" | "diverged"
    records: list[dict]
    step_losses: np.ndarray  # the training loss of every step run in this process
    divergence: dict | None
    wall_seconds: float
    steps_per_s: float
    compile_seconds: float
    start_step: int
    last_checkpoint: int | None
    final_step: int = 0  # the step training reached (where it stopped early, if it did)
    stopped_early: bool = False  # early stopping ended training before config.num_steps
    best_step: int | None = None  # the step `state` comes from
    best_value: float | None = None  # its early-stopping metric (None without early stopping)
    # Where the training data lived: {"layout", "examples"} and, per-host, the device blocks
    # ("blocks", "block_size", and "dropped": examples left out here, beyond load_dataset's).
    data: dict = dataclasses.field(default_factory=dict)


def window_records(step0: int, metrics: dict[str, np.ndarray], log_every: int, rate: float):
    """Mean train metrics of each log window that ends inside a chunk (steps are 1-based)."""
    records, k = [], len(metrics["loss"])
    ends = [s for s in range(step0 + 1, step0 + k + 1) if s % log_every == 0]
    if not ends or ends[-1] != step0 + k:
        ends.append(step0 + k)  # always log the chunk's last step
    lo = 0
    for end in ends:
        hi = end - step0
        lo = max(lo, hi - log_every)
        record = {"step": end}
        for name, values in metrics.items():
            record[f"train_{name}"] = float(np.mean(values[lo:hi]))
        record["steps_per_s"] = rate
        records.append(record)
        lo = hi
    return records


def fit(
    task: Task,
    state: TrainState,
    dataset,
    config: ml_collections.ConfigDict,
    *,
    log: Callable[[dict], None] = lambda record: None,
    checkpointer=None,
    progress: bool = True,
    history: Sequence[dict] = (),
) -> FitResult:
    """Train from `state.step` to `config.num_steps`, logging, evaluating and checkpointing.

    With config.early_stopping on, training stops once the validation metric has not improved
    for `patience` evaluations, and the best evaluated state is returned. Every new best is
    checkpointed (a checkpoint of the current state at its step), so a resumed run restores it
    from there; `history` (the metrics.jsonl records up to the resume step) replays the
    evaluations the tracker saw. A stopped run that is rerun trains nothing and returns the
    best state again; the latest checkpoint stays the state where training stopped, so a
    resumed run's numbers are the uninterrupted run's.
    """
    from tqdm.auto import tqdm

    from workflow import data

    mesh = data_mesh(config)
    layout = data_layout(config) if mesh is not None else "replicated"
    x_host, y_host = dataset.x_train, dataset.y_train
    shard = dataset.info.get("shard") or {}
    held_in_parts = shard.get("processes", 1) > 1  # each process loaded only its shard
    if held_in_parts and layout == "replicated":  # every device needs all of it: gather
        x_host, y_host = (distributed.concat_over_processes(a) for a in (x_host, y_host))
        held_in_parts = False
    shardings, block_size = None, None
    data_info = {"layout": layout, "examples": len(y_host)}
    if mesh is None:
        x_train, y_train = jnp.asarray(x_host), jnp.asarray(y_host)
    else:
        shardings = state_shardings(state, mesh, config.parallel.params)
        state = distributed.global_tree(state, shardings)
        if layout == "per_host":
            x_train, y_train, block_size = device_blocks(x_host, y_host, mesh, held_in_parts)
            used = block_size * mesh.size
            seen = shard.get("global_size", len(y_host)) if held_in_parts else len(y_host)
            data_info.update(
                examples=used, blocks=mesh.size, block_size=block_size, dropped=seen - used
            )
        else:
            x_train, y_train = distributed.global_tree((x_host, y_host), replicated(mesh))
    multi_step = make_multi_step(task, mesh, shardings, per_host=block_size is not None)
    evaluator = Evaluator(task, config.eval_batch_size, mesh)
    start_step = step = int(state.step)
    last_checkpoint = checkpointer.latest_step() if checkpointer else None
    tracker = EarlyStopping.from_config(config)
    best_state = None
    if tracker is not None:
        tracker.replay(history, start_step)
        best_state = resume_best(tracker, state, start_step, checkpointer)
    stopped = tracker is not None and tracker.exhausted and start_step < config.num_steps
    chunks = schedule_chunks(
        start_step,
        config.num_steps,
        config.steps_per_call,
        (config.eval_every, config.checkpoint_every),
    )
    records, step_losses, divergence = [], [], None
    compiled, compile_seconds, train_seconds, timed_steps = set(), 0.0, 0.0, 0
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        disable=not progress,
        unit="step",
        desc="train",
        leave=False,
    )
    t_start = now()
    for k in [] if stopped else chunks:
        if block_size is not None:  # per-host: each device's columns index its own block
            indices = data.block_batch_indices(
                block_size, mesh.size, config.batch_size, config.seed, step, k
            )
        else:
            indices = data.batch_indices(len(y_host), config.batch_size, config.seed, step, k)
        t0 = now()
        if mesh is not None:  # every process passes the same global indices
            indices = distributed.global_array(indices, index_sharding(mesh))
        state, metrics = multi_step(state, x_train, y_train, jnp.asarray(indices))
        metrics = jax.device_get(metrics)
        seconds = now() - t0
        if k in compiled:
            train_seconds, timed_steps = train_seconds + seconds, timed_steps + k
        else:  # the first call of each chunk length includes its compilation
            compiled.add(k)
            compile_seconds += seconds
        rate = format_rate(k, seconds)
        bad = first_nonfinite(np.asarray(metrics["loss"]))
        bad_grad = first_nonfinite(np.asarray(metrics["grad_norm"]))
        if bad is None and bad_grad is None and not params_finite(state):
            bad_grad = k - 1
        if bad is not None or bad_grad is not None:
            first = min(i for i in (bad, bad_grad) if i is not None)
            divergence = {
                "step": step + first + 1,  # steps count from 1, as in metrics.jsonl
                "quantity": "loss" if first == bad else "gradient",
                "last_finite_loss": float(metrics["loss"][first - 1]) if first else None,
            }
            metrics = {name: values[:first] for name, values in metrics.items()}
            k = first
        step_losses.append(np.asarray(metrics["loss"]))
        if k:
            for record in window_records(step, metrics, config.log_every, rate):
                records.append(record)
                log(record)
        step += k
        bar.update(k)
        if divergence:
            break
        bar.set_postfix(loss=f"{float(metrics['loss'][-1]):.4f}", steps_per_s=f"{rate:,.0f}")
        improved = False
        if step % config.eval_every == 0 or step == config.num_steps:
            val = evaluator(state, dataset.x_val, dataset.y_val)
            record = {"step": step, "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
            records.append(record)
            log(record)
            if tracker is not None:
                improved = tracker.update(step, record)
                if improved:
                    best_state = copy_state(state)
                stopped = tracker.exhausted and step < config.num_steps
        if checkpointer and (
            step == config.num_steps
            or (config.checkpoint_every and step % config.checkpoint_every == 0)
            or improved  # the best state, for a resumed run to restore
            or stopped  # where training ended, so a rerun resumes (and stops) here
        ):
            checkpointer.save(step, state)
            last_checkpoint = step
        if stopped:
            break
    bar.close()
    losses_run = np.concatenate(step_losses) if step_losses else np.zeros(0, np.float32)
    final_step = int(state.step)  # after a divergence: the end of the chunk, as before
    if best_state is not None and not divergence:
        state = best_state
    return FitResult(
        state=state,
        status="diverged" if divergence else "ok",
        records=records,
        step_losses=losses_run,
        divergence=divergence,
        wall_seconds=now() - t_start,
        steps_per_s=format_rate(timed_steps, train_seconds) if timed_steps else 0.0,
        compile_seconds=compile_seconds,
        start_step=start_step,
        last_checkpoint=last_checkpoint,
        final_step=final_step,
        stopped_early=stopped,
        best_step=int(state.step),
        best_value=tracker.best if tracker is not None and best_state is not None else None,
        data=data_info,
    )
