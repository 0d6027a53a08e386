"""The training loop: train from the state's step to num_steps, logging, evaluating,
checkpointing, and stopping on a non-finite loss or gradient."""

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from workflow.engine import distributed
from workflow.engine.early_stopping import resume_early_stopping
from workflow.engine.evaluator import Evaluator
from workflow.engine.layer_statistics import layer_statistics
from workflow.engine.optimizer import learning_rates_at
from workflow.engine.progress import Progress
from workflow.engine.sharding import (
    data_layout,
    data_mesh,
    device_blocks,
    index_sharding,
    replicated,
    state_shardings,
)
from workflow.engine.state import Task, TrainState, copy_state
from workflow.engine.step import make_batch_train_loop, make_train_loop


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
    # The form the steps ran in and why (engine.loop_form.LoopChoice.to_json()); None: no step ran.
    loop: dict | None = None


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


def with_learning_rate(records: list[dict], config: ml_collections.ConfigDict) -> list[dict]:
    """The train records with the learning rate of each one's step (`lr`: the schedule's)."""
    steps = [record["step"] for record in records]
    rates = learning_rates_at(config.optimizer, config.num_steps, steps)
    for record, rate in zip(records, rates, strict=True):
        record["lr"] = rate
    return records


# ----------------------------------------------------------------------------- placement


def place_state(
    state: TrainState, config: ml_collections.ConfigDict, mesh: Mesh | None
) -> tuple[TrainState, Any]:
    """The state on the mesh as config.parallel.params lays it out, and its shardings (None
    on one device, where the state stays as it is)."""
    if mesh is None:
        return state, None
    shardings = state_shardings(state, mesh, config.parallel.params)
    return distributed.global_tree(state, shardings), shardings


@dataclasses.dataclass
class TrainingData:
    """The training split where the compiled steps read it, and how their batches are drawn."""

    x: jax.Array
    y: jax.Array
    mesh: Mesh | None
    rows: int  # the examples batches are drawn from (all of them, or one device's block)
    per_host: bool  # each device holds a block of `rows` examples and draws from it alone
    info: dict  # FitResult.data

    def batch_indices(self, config: ml_collections.ConfigDict, step: int, num_steps: int):
        """Example indices (num_steps, batch_size) of steps [step, step + num_steps) on the host:
        per-host, each device's columns index its own block."""
        from workflow import data

        if self.per_host:
            return data.block_batch_indices(
                self.rows, self.mesh.size, config.batch_size, config.seed, step, num_steps
            )
        return data.batch_indices(self.rows, config.batch_size, config.seed, step, num_steps)

    def on_devices(self, indices: np.ndarray) -> jax.Array:
        """Host indices where the step reads them (every process passes the same global ones)."""
        if self.mesh is not None:
            indices = distributed.global_array(indices, index_sharding(self.mesh))
        return jnp.asarray(indices)

    def chunk_rows(self, config: ml_collections.ConfigDict, step: int, num_steps: int) -> tuple:
        """The train loop's arguments after the state for steps [step, step + num_steps)."""
        indices = self.batch_indices(config, step, num_steps)
        return self.x, self.y, self.on_devices(indices)

    def state_at(self, step: int) -> None:
        """No data state: the batches are a function of (seed, step) alone."""
        return None

    def close(self) -> None:
        """Nothing to release (the arrays go with the object)."""


def place_training_data(
    dataset, config: ml_collections.ConfigDict, mesh: Mesh | None
) -> TrainingData:
    """The training split on one device, replicated over the mesh, or per-host in blocks.

    A per-host dataset (each process loaded only its shard) is gathered whole when the layout
    is replicated, since every device then needs all of it.
    """
    layout = data_layout(config) if mesh is not None else "replicated"
    x_host, y_host = dataset.x_train, dataset.y_train
    shard = dataset.info.get("shard") or {}
    held_in_parts = shard.get("processes", 1) > 1  # each process loaded only its shard
    if held_in_parts and layout == "replicated":
        x_host, y_host = (distributed.concat_over_processes(a) for a in (x_host, y_host))
        held_in_parts = False
    info = {"layout": layout, "examples": len(y_host)}
    if mesh is None:
        x, y = jnp.asarray(x_host), jnp.asarray(y_host)
        return TrainingData(x, y, mesh, len(y_host), per_host=False, info=info)
    if layout != "per_host":
        x, y = distributed.global_tree((x_host, y_host), replicated(mesh))
        return TrainingData(x, y, mesh, len(y_host), per_host=False, info=info)
    x, y, block_size = device_blocks(x_host, y_host, mesh, held_in_parts)
    used = block_size * mesh.size
    seen = shard.get("global_size", len(y_host)) if held_in_parts else len(y_host)
    info.update(examples=used, blocks=mesh.size, block_size=block_size, dropped=seen - used)
    return TrainingData(x, y, mesh, block_size, per_host=True, info=info)


@dataclasses.dataclass
class StreamedTrainingData:
    """The grain pipeline's training batches (workflow.data.pipeline): read on the host, a
    chunk of K steps' batches at a time, placed on the devices as the rows of the train loop."""

    stream: Any  # data.pipeline.Stream
    mesh: Mesh | None
    batch_size: int
    info: dict  # FitResult.data
    per_host: bool = False  # the step's batches are never per-host blocks (see place_rows)

    def chunk_rows(self, config: ml_collections.ConfigDict, step: int, num_steps: int) -> tuple:
        """(xs, ys) of steps [step, step + num_steps) on the devices (waits for the feeder)."""
        chunk = self.stream.next_chunk(num_steps)
        return self.place_rows(chunk.x), self.place_rows(chunk.y)

    def place_rows(self, local: np.ndarray) -> jax.Array:
        """(K, part, ...) rows of this process's part of every batch as one global (K, batch,
        ...) array, the batch axis split over the mesh."""
        if self.mesh is None:
            return jnp.asarray(local)
        sharding = index_sharding(self.mesh)
        if not distributed.multi_process():
            return jax.device_put(local, sharding)
        shape = (local.shape[0], self.batch_size, *local.shape[2:])
        return jax.make_array_from_process_local_data(sharding, local, shape)

    def state_at(self, step: int) -> dict:
        """The data state a checkpoint at `step` (a chunk's end) stores."""
        return self.stream.state_at(step)

    def close(self) -> None:
        """Stop the feeder and grain's workers."""
        self.stream.close()


def stream_training_data(
    dataset,
    config: ml_collections.ConfigDict,
    mesh: Mesh | None,
    start_step: int,
    chunks: Sequence[int],
    resume: dict | None,
) -> StreamedTrainingData:
    """The grain pipeline over the training split (arrays, or a lazy split's records decoded
    by the pipeline's readers: workflow/data/lazy.py), from `start_step` through
    `chunks`; `resume`, a checkpoint's data state, continues its iterator."""
    from workflow.data import pipeline

    x_host, y_host = dataset.x_train, dataset.y_train
    shard = dataset.info.get("shard") or {}
    held_in_parts = shard.get("processes", 1) > 1  # each process loaded only its shard
    rows = len(y_host)
    if held_in_parts:  # every process draws from as many examples as the smallest shard holds
        rows = int(np.min(distributed.allgather(np.asarray([rows]))))
    plan = pipeline.process_part(rows, config.batch_size, config.seed, held_in_parts=held_in_parts)
    source = pipeline.ArraySource(x_host, y_host)
    augment = pipeline.host_augment(config)
    stream = pipeline.Stream(source, plan, config, start_step, chunks, resume, augment)
    settings = config.dataset.get("grain", pipeline.default_config())
    info = {
        "layout": "streamed",
        "pipeline": "grain",
        "examples": rows * (plan.processes if held_in_parts else 1),
        "worker_count": settings.worker_count,
        "augment_on_host": augment is not None,
    }
    return StreamedTrainingData(stream, mesh, config.batch_size, info)


def pipeline_of(config: ml_collections.ConfigDict) -> str:
    """config.dataset.pipeline ("memory" where a config predates it)."""
    return config.dataset.get("pipeline", "memory")


# ----------------------------------------------------------------------------- per chunk


@dataclasses.dataclass
class ChunkTimer:
    """Seconds of training chunks, with the first call of each chunk length (which compiles
    its programs, and the first also measures the loop's form) counted apart from the rest."""

    compile_seconds: float = 0.0
    train_seconds: float = 0.0
    timed_steps: int = 0
    compiled: set[int] = dataclasses.field(default_factory=set)

    def add(self, steps: int, seconds: float) -> None:
        """Count one call of `steps` steps that took `seconds`."""
        if steps in self.compiled:
            self.train_seconds += seconds
            self.timed_steps += steps
        else:
            self.compiled.add(steps)
            self.compile_seconds += seconds

    @property
    def steps_per_s(self) -> float:
        """Training speed over the calls that did not compile (0 when every call compiled)."""
        return format_rate(self.timed_steps, self.train_seconds) if self.timed_steps else 0.0


def train_chunk(
    multi_step: Callable,
    state: TrainState,
    training: TrainingData | StreamedTrainingData,
    config: ml_collections.ConfigDict,
    step: int,
    num_steps: int,
    bar: Progress | None = None,
) -> tuple[TrainState, dict[str, np.ndarray], float]:
    """`num_steps` steps from `step` in one call: the new state, each step's metrics on the
    host, and the call's seconds (with the wait for a streamed chunk: input that stalls the
    devices counts against the rate)."""
    t0 = now()
    watch = bar.watch if bar is not None and bar.enabled else None
    rows = training.chunk_rows(config, step, num_steps)
    state, metrics = multi_step(state, *rows, watch=watch)
    metrics = jax.device_get(metrics)
    return state, metrics, now() - t0


def chunk_divergence(step: int, metrics: dict[str, np.ndarray], state: TrainState) -> dict | None:
    """Where the chunk of steps after `step` diverged, or None when it did not.

    A non-finite loss or gradient norm names its step; a chunk whose metrics are all finite
    but whose parameters are not (an update can overflow them) is blamed on its last step.
    Returns {"step" (1-based, as in metrics.jsonl), "quantity" ("loss" or "gradient"),
    "last_finite_loss" (None when the chunk's first step diverged)}.
    """
    bad_loss = first_nonfinite(np.asarray(metrics["loss"]))
    bad_grad = first_nonfinite(np.asarray(metrics["grad_norm"]))
    if bad_loss is None and bad_grad is None:
        if params_finite(state):
            return None
        bad_grad = len(metrics["loss"]) - 1
    first = min(i for i in (bad_loss, bad_grad) if i is not None)
    return {
        "step": step + first + 1,
        "quantity": "loss" if first == bad_loss else "gradient",
        "last_finite_loss": float(metrics["loss"][first - 1]) if first else None,
    }


def validation_record(evaluator: Evaluator, state: TrainState, dataset, step: int) -> dict:
    """The metrics.jsonl record of one evaluation on the validation split."""
    val = evaluator(state, dataset.x_val, dataset.y_val)
    return {"step": step, "val_loss": val["loss"], "val_accuracy": val["accuracy"]}


def evaluation_due(step: int, config: ml_collections.ConfigDict) -> bool:
    """Whether `step` ends an evaluation period, or training."""
    return step % config.eval_every == 0 or step == config.num_steps


def checkpoint_due(
    step: int, config: ml_collections.ConfigDict, *, improved: bool, stopped: bool
) -> bool:
    """Whether to checkpoint at `step`: the end of training or of a checkpoint period, a new
    best state (for a resumed run to restore), or where early stopping ended training (so a
    rerun resumes, and stops, there)."""
    periodic = bool(config.checkpoint_every) and step % config.checkpoint_every == 0
    return step == config.num_steps or periodic or improved or stopped


def save_checkpoint(checkpointer, step: int, state: TrainState, training) -> None:
    """Checkpoint `state` at `step`, with the input pipeline's state where it has one (the
    memory pipeline has none, and saves exactly as before it existed)."""
    data_state = training.state_at(step)
    if data_state is None:
        checkpointer.save(step, state)
    else:
        checkpointer.save(step, state, data_state=data_state)


# ----------------------------------------------------------------------------- fit


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
    log_layers: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train from `state.step` to `config.num_steps`, logging, evaluating and checkpointing.

    With config.early_stopping on, training stops once the validation metric has not improved
    for `patience` evaluations, and the best evaluated state is returned. Every new best is
    checkpointed (a checkpoint of the current state at its step), so a resumed run restores it
    from there; `history` (the metrics.jsonl records up to the resume step) replays the
    evaluations the tracker saw. A stopped run that is rerun trains nothing and returns the
    best state again; the latest checkpoint stays the state where training stopped, so a
    resumed run's numbers are the uninterrupted run's. `log_layers`, when given, receives the
    per-layer statistics of a training batch at each evaluation (engine.layer_statistics).

    config.dataset.pipeline picks where training batches come from: "memory" places the split
    on the devices (place_training_data); "grain" streams host-read batches
    (stream_training_data, workflow.data.pipeline), resuming the iterator state the
    checkpoint at `state.step` holds, and saves that state with every checkpoint.
    """
    mesh = data_mesh(config)
    state, shardings = place_state(state, config, mesh)
    evaluator = Evaluator(task, config.eval_batch_size, mesh)
    start_step = step = int(state.step)
    last_checkpoint = checkpointer.latest_step() if checkpointer else None
    tracker, best_state = resume_early_stopping(config, history, state, start_step, checkpointer)
    stopped = tracker is not None and tracker.exhausted and start_step < config.num_steps
    every = (config.eval_every, config.checkpoint_every)  # chunks end on these steps
    chunks = schedule_chunks(start_step, config.num_steps, config.steps_per_call, every)
    form = config.get("loop", "auto")
    if pipeline_of(config) == "grain":
        resume = checkpointer.data_state(start_step) if checkpointer and start_step else None
        training = stream_training_data(
            dataset, config, mesh, start_step, [] if stopped else chunks, resume
        )
        if training.info["augment_on_host"]:  # the batches arrive augmented
            task = dataclasses.replace(task, augment=None)
        multi_step = make_batch_train_loop(task, mesh, shardings, form=form)
    else:
        training = place_training_data(dataset, config, mesh)
        multi_step = make_train_loop(task, mesh, shardings, per_host=training.per_host, form=form)
    records, step_losses, divergence, timer = [], [], None, ChunkTimer()

    def emit(new_records: list[dict]) -> None:
        for record in new_records:
            records.append(record)
            log(record)

    bar = Progress(config.num_steps, "train", "step", enabled=progress, initial=start_step)
    with contextlib.closing(training), bar:
        bar.phase("compiling" if chunks and not stopped else "")
        t_start = now()
        for k in [] if stopped else chunks:
            state, metrics, seconds = train_chunk(multi_step, state, training, config, step, k, bar)
            bar.phase()
            timer.add(k, seconds)
            rate = format_rate(k, seconds)
            divergence = chunk_divergence(step, metrics, state)
            if divergence:  # keep the steps before it
                k = divergence["step"] - step - 1
                metrics = {name: values[:k] for name, values in metrics.items()}
            step_losses.append(np.asarray(metrics["loss"]))
            if k:
                emit(
                    with_learning_rate(
                        window_records(step, metrics, config.log_every, rate), config
                    )
                )
            step += k
            if divergence:
                break
            bar.advance_to(step, loss=f"{float(metrics['loss'][-1]):.4f}")
            improved = False
            if evaluation_due(step, config):
                record = validation_record(evaluator, state, dataset, step)
                emit([record])
                if log_layers is not None:
                    log_layers(
                        step, layer_statistics(task, state, dataset.x_train, dataset.y_train)
                    )
                if tracker is not None:
                    improved = tracker.update(step, record)
                    if improved:
                        best_state = copy_state(state)
                    stopped = tracker.exhausted and step < config.num_steps
            if checkpointer and checkpoint_due(step, config, improved=improved, stopped=stopped):
                save_checkpoint(checkpointer, step, state, training)
                last_checkpoint = step
            if stopped:
                break
    final_step = int(state.step)  # after a divergence: the end of the chunk, as before
    if best_state is not None and not divergence:
        state = best_state
    return FitResult(
        state=state,
        status="diverged" if divergence else "ok",
        records=records,
        step_losses=np.concatenate(step_losses) if step_losses else np.zeros(0, np.float32),
        divergence=divergence,
        wall_seconds=now() - t_start,
        steps_per_s=timer.steps_per_s,
        compile_seconds=timer.compile_seconds,
        start_step=start_step,
        last_checkpoint=last_checkpoint,
        final_step=final_step,
        stopped_early=stopped,
        best_step=int(state.step),
        best_value=tracker.best if tracker is not None and best_state is not None else None,
        data=training.info,
        loop=multi_step.choice.to_json() if multi_step.choice else None,
    )
