"""Where arrays live: the data-parallel mesh, state shardings and per-host data blocks."""

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from workflow.engine import distributed
from workflow.engine.state import TrainState
from workflow.errors import UsageError

DATA_AXIS = "data"  # the mesh axis a data-parallel batch is split over


def data_mesh(config: ml_collections.ConfigDict) -> Mesh | None:
    """The data-parallel mesh of config.parallel; None on one device, where nothing is split."""
    parallel = config.get("parallel") or ml_collections.ConfigDict({"data_devices": 0})
    devices = jax.devices()
    count = parallel.data_devices or len(devices)
    if count > len(devices):
        raise UsageError(
            f"invalid value parallel.data_devices={count}: only {len(devices)} device(s) "
            f"are visible ({devices[0].platform}); valid: 0 (all) or 1..{len(devices)}"
        )
    if count == 1:
        return None
    check_divisible_batch(config.batch_size, count)
    if distributed.multi_process():
        devices = _even_over_processes(devices, count)
    return Mesh(np.array(devices[:count]), (DATA_AXIS,))


def _even_over_processes(devices: list, count: int) -> list:
    """`count` devices, the same number from every process, process by process: each host's
    devices then hold one contiguous range of the mesh (its shard of per-host data)."""
    processes = jax.process_count()
    if count % processes:
        raise UsageError(
            f"invalid value parallel.data_devices={count}: with {processes} processes it must "
            f"be a multiple of {processes} (the same number of devices on every host), or 0"
        )
    by_process: dict[int, list] = {}
    for device in sorted(devices, key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(device.process_index, []).append(device)
    return [d for p in sorted(by_process) for d in by_process[p][: count // processes]]


def data_layout(config: ml_collections.ConfigDict) -> str:
    """config.parallel.data resolved for this run: "per_host" or "replicated"."""
    parallel = config.get("parallel") or {}
    return distributed.data_layout(parallel.get("data", "auto"))


def check_divisible_batch(batch_size: int, devices: int) -> None:
    """Reject a batch the data-parallel mesh cannot split evenly, naming the nearest sizes."""
    if batch_size % devices == 0:
        return
    below = batch_size // devices * devices
    nearest = [size for size in (below, below + devices) if size > 0]
    raise UsageError(
        f"invalid value batch_size={batch_size}: data parallelism splits each batch over "
        f"{devices} devices, so it must be a multiple of {devices}; nearest valid: "
        f"{' or '.join(map(str, nearest))} (or set --config.parallel.data_devices to a "
        f"divisor of {batch_size}, 1 for no data parallelism)"
    )


def state_shardings(state: TrainState, mesh: Mesh, layout: str = "replicated") -> Any:
    """Where each leaf of the state lives: every device ("replicated") or split ("sharded").

    "sharded" splits each array along its largest axis the mesh divides (parameters and the
    optimizer moments alike, ZeRO-style); XLA gathers them where the step needs them whole.
    """

    def place(leaf):
        shape = getattr(leaf, "shape", ())
        if layout != "sharded" or not shape:
            return replicated(mesh)
        axes = [a for a in range(len(shape)) if shape[a] % mesh.size == 0]
        if not axes:
            return replicated(mesh)
        axis = max(axes, key=lambda a: shape[a])
        spec = [None] * len(shape)
        spec[axis] = DATA_AXIS
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(place, state)


def replicated(mesh: Mesh) -> NamedSharding:
    """Arrays held whole on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split along their leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def index_sharding(mesh: Mesh) -> NamedSharding:
    """A (K, batch) block of example indices: each device holds its part of every row."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def device_blocks(
    x: np.ndarray, y: np.ndarray, mesh: Mesh, held_in_parts: bool
) -> tuple[jax.Array, jax.Array, int]:
    """Per-host data as global arrays split over the mesh in equal blocks: (x, y, block size).

    `held_in_parts`: every process holds only its own shard (data.load_dataset's per-host
    loading), which its devices split among themselves; otherwise every process holds the
    whole split and keeps its devices' blocks of it. Rows past the last full block are dropped.
    """
    positions = distributed.local_positions(mesh)
    local, total = len(positions), mesh.size
    if positions != list(range(positions[0], positions[0] + local)):
        raise UsageError(f"this host's devices are not contiguous in the mesh: {positions}")
    if held_in_parts:
        block = len(x) // local
        rows = slice(0, local * block)
    else:
        block = len(x) // total
        rows = slice(positions[0] * block, (positions[-1] + 1) * block)
    if block < 1:
        raise UsageError(
            f"per-host data: {len(x)} training examples cannot give each of the {local} "
            "devices of this host one; use more data or --config.parallel.data=replicated"
        )
    sharding = batch_sharding(mesh)
    x_global = distributed.host_local_array(x[rows], sharding, total * block)
    y_global = distributed.host_local_array(y[rows], sharding, total * block)
    return x_global, y_global, block
