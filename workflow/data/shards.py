"""Per-host data: which part of the training split this process holds."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from workflow.errors import UsageError

# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of the training split in per-host data mode."""

    index: int  # this process, in [0, count)
    count: int  # processes, each holding one equal part
    blocks: int = 1  # equal device blocks each part splits into (the process's data devices)

    def plan(self, num_examples: int) -> tuple[int, int, int]:
        """(start, stop, kept): this process's range of the first `kept` examples, the most
        that count x blocks divide; the rest are dropped."""
        multiple = self.count * self.blocks
        kept = num_examples - num_examples % multiple
        if kept == 0:
            raise UsageError(
                f"per-host data needs at least {multiple} training examples ({self.count} "
                f"processes x {self.blocks} devices each), the dataset has {num_examples}; use "
                "more data or --config.parallel.data=replicated"
            )
        size = kept // self.count
        return self.index * size, (self.index + 1) * size, kept


def process_shard(config: ml_collections.ConfigDict | None = None) -> Shard | None:
    """This process's Shard under config.parallel (None: the config's defaults), or None where
    every process loads the training split whole (parallel.data resolves to "replicated")."""
    import jax

    from workflow.engine import distributed

    parallel = (config.get("parallel") if config is not None else None) or {}
    if distributed.data_layout(parallel.get("data", "auto")) != "per_host":
        return None
    count = jax.process_count()
    devices = parallel.get("data_devices", 0) or jax.device_count()
    return Shard(jax.process_index(), count, max(1, devices // count))


def shard_info(
    shard: Shard, read: dict, y_train: np.ndarray, num_classes: int, task: str = "classification"
) -> dict:
    """dataset.info["shard"]: this process's range, and every process's as it loaded it
    (gathered: collective, so every process calls it at the same point)."""
    from workflow.engine import distributed

    mine = np.asarray([read["start"], read["stop"], len(y_train)], np.int64)
    hosts = [
        {"process": i, "start": int(a), "stop": int(b), "examples": int(n)}
        for i, (a, b, n) in enumerate(distributed.allgather(mine))
    ]
    return {
        "process": shard.index,
        "processes": shard.count,
        "devices_per_process": shard.blocks,
        "start": int(read["start"]),
        "stop": int(read["stop"]),
        "size": len(y_train),
        "global_size": int(read["global_size"]),
        "dropped": int(read["dropped"]),
        "read": read["read"],
        "hosts": hosts,
        **_target_counts(y_train, num_classes, task),
    }


# What shard_info counts of the whole training split, by config.task: examples per class, or
# positives per label; regression's targets are described by their statistics (Dataset.task).
TARGET_COUNTS = {"classification": "class_counts", "multilabel": "label_counts"}


def _target_counts(y_train: np.ndarray, num_classes: int, task: str) -> dict[str, list[int]]:
    """Every process's training examples per class, or positives per label, summed over
    processes (collective); nothing for regression."""
    from workflow.engine import distributed

    key = TARGET_COUNTS.get(task)
    if key is None:
        return {}
    if key == "class_counts":
        counts = np.bincount(y_train, minlength=num_classes)
    else:
        counts = np.sum(y_train, axis=0)
    summed = distributed.sum_over_processes(np.asarray(counts).astype(np.int64))
    return {key: [int(c) for c in summed]}


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """What a loader that reads per host needs to carve val and pick its records itself."""

    seed: int
    val_fraction: float
    train_size: int | None
    shard: Shard | None
