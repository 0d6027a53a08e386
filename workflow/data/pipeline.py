"""The grain input pipeline: training batches read on the host, a step at a time, and streamed.

config.dataset.pipeline picks where a training batch is assembled:

  memory  (the default) the whole training split sits on the devices and each step gathers its
          batch there by example index (engine.loop.place_training_data);
  grain   each step's batch is read on the host from a random-access source through a grain
          dataset (`grain.MapDataset` -> `IterDataset`, in `dataset.grain.worker_count` worker
          processes when that is > 0, else in `read_threads` threads of this process), and a
          feeder thread stacks the next chunk's K batches while the devices run the current
          chunk. Only the batches in flight are in memory on the devices. The source is the
          training split: in-memory arrays, or a lazy split (data.lazy: image files, TFDS or
          array_record records) whose examples the readers decode as they read them, so the
          host holds only the batches in flight too.

Order: step s's batch holds the examples `data.batch_indices(n, batch, seed, s, 1)` names, the
memory path's order, so switching the pipeline changes where a batch is assembled, never which
examples it holds (nor, up to XLA's fusion choices, the numbers). Grain's dataset is the
range of steps, each mapped to its batch (`ReadStepBatch`): random access by step, so a run can
start anywhere. With several processes each process reads only its part of every batch (its
devices' columns, `process_part`; with per-host data, from its own shard), and the global batch
is assembled from the parts (`jax.make_array_from_process_local_data`).

Resume: the grain iterator's state (`get_state()`, JSON) after every chunk is kept by the
feeder; a checkpoint at step s stores the state at s beside the TrainState
(engine.checkpoints, covered by its checksum), and a resumed run builds the same dataset and
`set_state`s it, so it reads exactly the batches the uninterrupted run read. Every process's
iterator walks the same range of steps, so process 0's state is every process's.

Evaluation (val/test) stays in memory (engine.evaluator).
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import ml_collections
import numpy as np

from workflow.data.batching import batch_indices, block_batch_indices
from workflow.errors import UsageError

PIPELINES = ("memory", "grain")  # config.dataset.pipeline
# The data state's format in a checkpoint (engine.checkpoints): a newer one is refused.
STATE_VERSION = 1


def default_config() -> ml_collections.ConfigDict:
    """config.dataset.grain: the grain pipeline's workers and buffers (2-core friendly)."""
    return ml_collections.ConfigDict(
        {
            # Worker processes reading (decoding, augmenting) batches; 0: threads of this process.
            "worker_count": 0,
            # Batches each worker prepares ahead.
            "worker_buffer_size": 2,
            # Threads reading batches in this process (worker_count 0) or in each worker.
            "read_threads": 2,
            # Chunks (K steps' batches, stacked) the feeder prepares ahead of the devices.
            "prefetch_chunks": 1,
            # With augment.enabled: augment each batch on the host as it is read (in the
            # workers), not in the train step; the same function and keys, on the host's CPU.
            "augment_on_host": False,
        }
    )


def validate_config(dataset: ml_collections.ConfigDict) -> None:
    """UsageError (one line) for a pipeline name or a grain setting that cannot run."""
    pipeline = dataset.get("pipeline", "memory")
    if pipeline not in PIPELINES:
        raise UsageError(
            f"invalid value dataset.pipeline={pipeline!r}: one of {', '.join(PIPELINES)}"
        )
    settings = dataset.get("grain", default_config())
    for key, low in (
        ("worker_count", 0),
        ("worker_buffer_size", 1),
        ("read_threads", 0),
        ("prefetch_chunks", 1),
    ):
        value = settings.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(
                f"invalid value dataset.grain.{key}={value!r}: must be an integer >= {low}"
            )
    on_host = settings.get("augment_on_host", False)
    if not isinstance(on_host, bool):
        raise UsageError(
            f"invalid value dataset.grain.augment_on_host={on_host!r}: must be True or False"
        )


# ----------------------------------------------------------------------------- sources


class ExampleSource(Protocol):
    """A random-access source of (x, y) examples (grain's RandomAccessDataSource shape)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]: ...


@dataclasses.dataclass
class ArraySource:
    """Examples of arrays, or of a lazy split (data.lazy.LazyInputs, decoded as indexed); a
    batch is read with one fancy index."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Any]:
        return self.x[index], self.y[index]

    def read_batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples at `indices`, stacked."""
        return self.x[indices], self.y[indices]


def read_batch(source: ExampleSource, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The examples of `source` at `indices` as stacked (x, y): the source's own batch read
    where it has one, else one example at a time (decoded as it is read)."""
    if hasattr(source, "read_batch"):
        return source.read_batch(indices)
    examples = [source[int(i)] for i in indices]
    x = np.stack([np.asarray(e[0]) for e in examples])
    y = np.asarray([e[1] for e in examples], np.int32)
    return x, y


# ----------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """Which examples a process reads for each step: its part of the global batch.

    With the data whole on every process, step s's global batch is `batch_indices(num_examples,
    batch_size, seed, s)` and a process reads its columns [start, start + part). With per-host
    data (each process holds a shard of `num_examples` examples), each process's part comes
    from its own shard, as `block_batch_indices` draws one block's part (block = process).
    """

    num_examples: int
    batch_size: int
    seed: int
    process: int = 0
    processes: int = 1
    per_host: bool = False

    @property
    def part(self) -> int:
        """Examples per step this process reads."""
        return self.batch_size // self.processes

    def indices(self, step: int) -> np.ndarray:
        """This process's example indices (into its source) for `step`."""
        if self.per_host:
            rows = block_batch_indices(
                self.num_examples, self.processes, self.batch_size, self.seed, step, 1
            )
        else:
            rows = batch_indices(self.num_examples, self.batch_size, self.seed, step, 1)
        start = self.process * self.part
        return rows[0, start : start + self.part]


def process_part(
    num_examples: int, batch_size: int, seed: int, *, held_in_parts: bool = False
) -> BatchPlan:
    """This process's BatchPlan (`held_in_parts`: each process loaded only its shard, and
    `num_examples` is the smallest shard's size, so every process draws alike)."""
    import jax

    processes = jax.process_count()
    if batch_size % processes:
        raise UsageError(
            f"batch_size={batch_size} must be a multiple of the {processes} processes "
            "(dataset.pipeline='grain': each process reads its part of every batch)"
        )
    return BatchPlan(
        num_examples,
        batch_size,
        seed,
        process=jax.process_index(),
        processes=processes,
        per_host=held_in_parts and processes > 1,
    )


def _grain():
    """The grain package, flags marked parsed (its workers read absl flags, which a library
    caller, unlike the stage scripts, never parses)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    import grain

    return grain


@dataclasses.dataclass(frozen=True)
class HostAugment:
    """engine.augment's augmentation of one step's batch, run on the host's CPU: the function
    and the key (`step_key(seed, step)`) the train step would use, so the batches are the ones
    the step would have augmented (picklable: grain's workers run it)."""

    kind: str
    options: dict
    seed: int

    def __call__(self, step: int, x: np.ndarray) -> np.ndarray:
        import jax

        from workflow.engine import augment

        cpu = jax.devices("cpu")[0]
        with jax.default_device(cpu):
            key = augment.step_key(self.seed, np.int32(step))
            out = _cpu_augment(self.kind, tuple(sorted(self.options.items())))(key, x)
        return np.asarray(out)


@functools.lru_cache(maxsize=8)
def _cpu_augment(kind: str, options: tuple):
    """The jitted augmentation of `kind` with `options` (compiled once per process)."""
    import jax

    from workflow.engine import augment

    return jax.jit(augment.make_augment(kind, {kind: dict(options)}))


@dataclasses.dataclass(frozen=True)
class ReadFailure:
    """A batch that could not be read: the one line naming the record and the problem (a bad
    image file, a record of the wrong format), raised as a UsageError where the batch is taken,
    so a worker's failure reaches the user as that line, not as a worker's traceback."""

    line: str


@dataclasses.dataclass(frozen=True)
class ReadStepBatch:
    """step -> this process's (x, y) batch of that step, augmented when `augment` is given
    (picklable: grain's workers run it); a ReadFailure where a record cannot be read."""

    source: ExampleSource
    plan: BatchPlan
    augment: HostAugment | None = None

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray] | ReadFailure:
        try:
            x, y = read_batch(self.source, self.plan.indices(int(step)))
        except UsageError as error:
            return ReadFailure(str(error))
        if self.augment is not None:
            x = self.augment(int(step), x)
        return x, y


def step_batches(
    source: ExampleSource,
    plan: BatchPlan,
    first_step: int,
    last_step: int,
    settings: ml_collections.ConfigDict,
    augment: HostAugment | None = None,
):
    """The grain IterDataset of the batches of steps [first_step, last_step), in order."""
    grain = _grain()
    read = ReadStepBatch(source, plan, augment)
    dataset = grain.MapDataset.range(first_step, last_step).map(read)
    read = grain.ReadOptions(
        num_threads=settings.read_threads,
        prefetch_buffer_size=max(1, settings.read_threads * settings.worker_buffer_size),
    )
    batches = dataset.to_iter_dataset(read)
    if settings.worker_count > 0:
        # Batches come back from the workers pickled, not in shared memory: grain's shared
        # blocks still in flight when a run stops early (a bad record, early stopping) would
        # be left behind at exit, with the resource tracker's warning.
        batches = grain.experimental.WithOptionsIterDataset(
            batches, grain.experimental.DatasetOptions(min_shm_size=2**62)
        )
        batches = batches.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=settings.worker_count,
                per_worker_buffer_size=settings.worker_buffer_size,
            ),
            worker_init_fn=die_with_parent,
        )
    return batches


def die_with_parent(worker_index: int, worker_count: int) -> None:
    """In a grain worker: JAX (host augmentation) on the CPU alone, never taking an
    accelerator's memory; and end with the training process, even when it is killed (kill -9
    leaves no chance to close the workers, which would otherwise linger; Linux only)."""
    import ctypes
    import os
    import signal
    import sys

    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", "cpu")
    else:
        os.environ["JAX_PLATFORMS"] = "cpu"
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


# ----------------------------------------------------------------------------- feeding


@dataclasses.dataclass
class Chunk:
    """K steps' batches stacked (leading step axis), and the iterator state after them."""

    end_step: int
    x: np.ndarray
    y: np.ndarray
    state: dict


class ChunkFeeder:
    """Stacks the batches of each chunk of steps on a thread, ahead of the devices.

    `chunks` are the lengths of the chunks fit will run from `first_step`; the feeder reads
    them in order from `iterator` (a grain DatasetIterator over the steps' batches), at most
    `depth` chunks ahead, and records the iterator's state after each (the state a checkpoint
    at that chunk's end stores).
    """

    def __init__(self, iterator, first_step: int, chunks: Sequence[int], depth: int = 1):
        self._iterator = iterator
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._step = first_step
        self._states = {first_step: iterator.get_state()}
        self._thread = threading.Thread(
            target=self._produce, args=(first_step, list(chunks)), daemon=True
        )
        self._thread.start()

    def _produce(self, step: int, chunks: list[int]) -> None:
        try:
            for k in chunks:
                parts = [next(self._iterator) for _ in range(k)]
                failed = next((p for p in parts if isinstance(p, ReadFailure)), None)
                if failed is not None:
                    raise UsageError(failed.line)
                step += k
                chunk = Chunk(
                    step,
                    np.stack([p[0] for p in parts]),
                    np.stack([p[1] for p in parts]),
                    self._iterator.get_state(),
                )
                if not self._put(chunk):
                    return
        except BaseException as error:  # noqa: BLE001 - raised again where the chunk is taken
            self._put(error)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next_chunk(self, num_steps: int) -> Chunk:
        """The next chunk, of `num_steps` steps (the schedule the feeder was given)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item.end_step != self._step + num_steps:
            raise RuntimeError(
                f"the feeder's chunk ends at step {item.end_step}, fit asked for the "
                f"{num_steps} steps after {self._step}"
            )
        self._step = item.end_step
        self._states[item.end_step] = item.state
        return item

    def state_at(self, step: int) -> dict:
        """The iterator's state after the chunk that ended at `step` (taken already)."""
        return self._states[step]

    def close(self) -> None:
        """Stop the thread and the iterator's workers."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                pass
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


def host_augment(config: ml_collections.ConfigDict) -> HostAugment | None:
    """The augmentation the pipeline runs on the host (dataset.grain.augment_on_host with
    augment.enabled), or None: the train step augments, if anything does."""
    settings = config.dataset.get("grain", default_config())
    augment = config.get("augment")
    if not settings.get("augment_on_host", False) or augment is None or not augment.enabled:
        return None
    kind = augment.kind
    return HostAugment(kind, augment[kind].to_dict(), int(config.seed))


def data_state(first_step: int, step: int, iterator_state: dict) -> dict:
    """The checkpoint's record of the pipeline at `step` (JSON)."""
    return {
        "version": STATE_VERSION,
        "pipeline": "grain",
        "first_step": first_step,
        "step": step,
        "iterator": iterator_state,
    }


def check_data_state(state: dict, step: int) -> None:
    """UsageError where a checkpoint's data state cannot resume the grain pipeline at `step`."""
    if state.get("version") != STATE_VERSION or state.get("pipeline") != "grain":
        raise UsageError(
            f"the checkpoint at step {step} holds a data state this version cannot read "
            f"(version {state.get('version')!r}, pipeline {state.get('pipeline')!r})"
        )
    if state.get("step") != step:
        raise UsageError(
            f"the checkpoint at step {step} holds the data state of step {state.get('step')}"
        )


class Stream:
    """The grain pipeline of one fit: a feeder over the steps' batches, resumable."""

    def __init__(
        self,
        source: ExampleSource,
        plan: BatchPlan,
        config: ml_collections.ConfigDict,
        start_step: int,
        chunks: Sequence[int],
        resume: dict | None = None,
        augment: HostAugment | None = None,
    ):
        settings = config.dataset.get("grain", default_config())
        if resume is not None:
            check_data_state(resume, start_step)
            self.first_step = int(resume["first_step"])
        else:
            self.first_step = start_step
        batches = step_batches(source, plan, self.first_step, config.num_steps, settings, augment)
        iterator = iter(batches)
        if resume is not None:
            iterator.set_state(resume["iterator"])
        self._feeder = ChunkFeeder(iterator, start_step, chunks, settings.prefetch_chunks)

    def next_chunk(self, num_steps: int) -> Chunk:
        """The next `num_steps` steps' batches, stacked."""
        return self._feeder.next_chunk(num_steps)

    def state_at(self, step: int) -> dict:
        """The checkpoint's data state at `step`, a chunk's end."""
        return data_state(self.first_step, step, self._feeder.state_at(step))

    def close(self) -> None:
        """Stop reading."""
        self._feeder.close()
