"""Several hosts, one run: JAX's distributed runtime, global arrays, and who writes what.

Every process runs the same stage command. `initialize` joins them through
`jax.distributed.initialize`: from the --coordinator_address/--num_processes/--process_id flags,
or from the cluster's environment (SLURM, Cloud TPU, or JAX_COORDINATOR_ADDRESS and friends),
which JAX reads itself. Afterwards `jax.devices()` lists every host's devices and the
data-parallel mesh of engine.fit spans them all.

Every process builds the same initial state (same seed); `global_array` turns such a host value
into one global array whose shards each process fills from its own copy.

The training data comes in one of two layouts (config.parallel.data; "auto", the default, is
"per_host" with several processes and "replicated" with one):

- "per_host": each process holds only its shard of the training split. data.load_dataset carves
  val from the whole training index set first (the same on every process), keeps val and test
  whole on every host, and gives process i the i-th of `num_processes` equal, contiguous ranges
  of the remaining training examples (the remainder, fewer than processes x devices, is dropped
  and counted in the dataset info). TFDS reads only those records (tfds.data_source); the
  in-memory loaders (mnist1d, digits, synthetic, custom) generate everything and keep the slice.
  Normalization statistics are combined from every host's sums (`sum_over_processes`), so they
  are the full training split's on every host. engine.fit lays the shards end to end as one
  global array split over the mesh's data axis, each device holding one equal block, and each
  device gathers its part of every batch from its own block by local indices
  (data.block_batch_indices: epoch permutations of the block, a function of seed, step and
  block, so a resumed run draws what the uninterrupted one did).
- "replicated": every process holds the whole training split and every device a copy of it;
  batches are gathered by global indices (the one-device run's batches).

Process 0 writes the run directory's files (config, metrics, reports, plots); every process
takes part in writing checkpoints, which Orbax coordinates; a corrupt checkpoint is set aside by
process 0 alone while the others wait, and all resume from the same step.

Stages: start_simple, debug, evaluate, tune and improve run multi-process; workflow.run refuses
(UsageError, exit 2). Batched trials (workflow/engine/trials.py: tune's search and range test,
improve's lr / L2 candidates) run on each process's local devices with the whole training split
loaded on every host, so every process computes the same trials; process 0 alone records them (the
Optuna study) and `broadcast_json` hands its results and decisions to the others, so that every
process takes the same next steps (the same engine.fit runs, the same collectives).

Launch lines (the same for both layouts):
    # SLURM, one task per host (JAX reads SLURM's variables):
    srun --nodes=2 --ntasks-per-node=1 python -m workflow.start_simple --config=... --workdir=DIR
    # A Cloud TPU VM slice (JAX finds the other workers itself):
    gcloud compute tpus tpu-vm ssh NAME --worker=all --command="cd repo && python -m \\
        workflow.start_simple --config=... --workdir=gs-or-shared-DIR"
    # Anywhere, by hand: the same command on each host with its own id
    python -m workflow.start_simple ... --coordinator_address=host0:1234 --num_processes=2 \\
        --process_id=0
"""

import os
import zlib
from typing import Any

import jax
import numpy as np

from workflow.errors import UsageError

# Variables by which a cluster announces several processes to jax.distributed.initialize().
CLUSTER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",  # JAX's own
    "TPU_WORKER_HOSTNAMES",  # Cloud TPU VMs with several workers
    "MEGASCALE_COORDINATOR_ADDRESS",  # multi-slice TPU
)


def cluster_detected(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment describes a job of several processes JAX can join by itself."""
    env = os.environ if environ is None else environ
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in env:
        return True
    workers = env.get("TPU_WORKER_HOSTNAMES", "")
    if "," in workers:
        return True
    return any(env.get(name) for name in CLUSTER_VARIABLES if name != "TPU_WORKER_HOSTNAMES")


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join the other processes of this run; False when it is a single-process run."""
    explicit = [coordinator_address, num_processes, process_id]
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            raise UsageError(
                "invalid multi-host flags: --coordinator_address, --num_processes and "
                "--process_id go together (all three, or none to read the cluster's "
                f"environment); got {coordinator_address!r}, {num_processes!r}, {process_id!r}"
            )
        if not 0 <= process_id < num_processes:
            raise UsageError(
                f"invalid value --process_id={process_id}: must lie in [0, {num_processes})"
            )
    elif not cluster_detected():
        return False
    # Cross-process collectives of CPU devices (tests, CPU clusters) go through gloo; the
    # setting leaves GPU and TPU collectives alone.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def is_writer() -> bool:
    """Whether this process writes the run directory's files (process 0 does)."""
    return jax.process_index() == 0


def multi_process() -> bool:
    """Whether this run spans several processes."""
    return jax.process_count() > 1


def global_array(value: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """One global array from a value every process holds in full, placed by `sharding`.

    Single-process runs simply device_put; with several processes each fills the shards of
    its own devices from its copy (PRNG keys travel as their raw key data).
    """
    if not multi_process():
        return jax.device_put(value, sharding)
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        data = global_array(jax.random.key_data(value), _key_data_sharding(sharding))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _key_data_sharding(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """The sharding of a key array's raw data (one trailing axis more, never split)."""
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = jax.sharding.PartitionSpec(*sharding.spec, None)
        return jax.sharding.NamedSharding(sharding.mesh, spec)
    return sharding


def global_tree(tree: Any, shardings: Any) -> Any:
    """`global_array` over a pytree, with a matching pytree of shardings (or one sharding)."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda leaf: global_array(leaf, shardings), tree)
    return jax.tree.map(global_array, tree, shardings)


DATA_LAYOUTS = ("auto", "replicated", "per_host")  # config.parallel.data


def data_layout(mode: str = "auto") -> str:
    """config.parallel.data resolved: "per_host" or "replicated" ("auto": per_host with several
    processes, replicated with one)."""
    if mode == "auto":
        return "per_host" if multi_process() else "replicated"
    if mode not in DATA_LAYOUTS:
        raise UsageError(f"invalid value parallel.data={mode!r}: one of {', '.join(DATA_LAYOUTS)}")
    return mode


def allgather(value: Any) -> np.ndarray:
    """Every process's `value` stacked along a new leading axis, in process order (numpy)."""
    value = np.asarray(value)
    if not multi_process():
        return value[None]
    from jax.experimental import multihost_utils

    # As raw bytes: through JAX, float64 and int64 would arrive as 32-bit values (no x64).
    raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(raw, tiled=False), np.uint8)
    return np.ascontiguousarray(gathered).view(value.dtype).reshape(-1, *value.shape)


def concat_over_processes(value: np.ndarray) -> np.ndarray:
    """Every process's rows of `value` end to end, in process order (equal shapes required)."""
    gathered = allgather(value)
    return gathered.reshape(-1, *gathered.shape[2:])


def sum_over_processes(value: Any) -> np.ndarray:
    """The sum of every process's `value`, added in process order: the same on every host."""
    gathered = allgather(value)
    total = np.zeros_like(gathered[0])
    for part in gathered:  # a fixed order, so every process gets the same bits
        total = total + part
    return total


def all_agree(flag: bool) -> bool:
    """Whether `flag` holds on every process (a collective: every process must call it)."""
    return bool(np.all(allgather(np.asarray(bool(flag)))))


def same_on_every_process(*arrays: Any) -> bool:
    """Whether every process holds the same arrays (by shape and CRC-32 of their bytes)."""
    if not multi_process():
        return True
    fingerprint = []
    for array in arrays:
        array = np.ascontiguousarray(array)
        data = memoryview(array.reshape(-1).view(np.uint8))
        fingerprint += [*array.shape, array.ndim, zlib.crc32(data)]
    gathered = allgather(np.asarray(fingerprint, np.int64))
    return bool(np.all(gathered == gathered[0]))


def broadcast_ints(values: list[int]) -> list[int]:
    """Process 0's list of integers on every process."""
    if not multi_process():
        return list(values)
    from jax.experimental import multihost_utils

    count = int(multihost_utils.broadcast_one_to_all(np.asarray(len(values), np.int32)))
    padded = np.zeros(max(count, 1), np.int32)  # JAX carries 32-bit integers
    padded[: min(count, len(values))] = values[:count]
    out = multihost_utils.broadcast_one_to_all(padded)
    return [int(v) for v in np.asarray(out)[:count]]


def broadcast_json(value: Any) -> Any:
    """Process 0's JSON-able `value` on every process (floats exactly: JSON keeps float64)."""
    if not multi_process():
        return value
    import json

    from jax.experimental import multihost_utils

    def plain(obj: Any) -> Any:  # numpy scalars and arrays as Python values
        return obj.tolist() if hasattr(obj, "tolist") else str(obj)

    text = json.dumps(value, default=plain) if is_writer() else ""
    raw = np.frombuffer(text.encode(), np.uint8)
    count = int(multihost_utils.broadcast_one_to_all(np.asarray(len(raw), np.int32)))
    padded = np.zeros(max(count, 1), np.uint8)
    padded[: min(count, len(raw))] = raw[:count]
    out = np.asarray(multihost_utils.broadcast_one_to_all(padded), np.uint8)[:count]
    return json.loads(out.tobytes().decode())


def barrier(name: str) -> None:
    """Wait here until every process has arrived (nothing to wait for with one process)."""
    if multi_process():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def local_positions(mesh: jax.sharding.Mesh) -> list[int]:
    """Positions along a 1-D mesh of this process's devices (contiguous, by construction of
    engine.data_mesh)."""
    me = jax.process_index()
    return [i for i, d in enumerate(np.asarray(mesh.devices).flat) if d.process_index == me]


def host_local_array(
    local: np.ndarray, sharding: jax.sharding.Sharding, global_rows: int
) -> jax.Array:
    """One global array whose rows each process fills from its own `local` rows (its devices'
    part along the leading axis, which `sharding` splits)."""
    local = np.asarray(local)
    return jax.make_array_from_process_local_data(sharding, local, (global_rows, *local.shape[1:]))
