"""Several hosts, one run: JAX's distributed runtime, global arrays, and who writes what.

Every process runs the same stage command. `initialize` joins them through
`jax.distributed.initialize`: from the --coordinator_address/--num_processes/--process_id flags,
or from the cluster's environment (SLURM, Cloud TPU, or JAX_COORDINATOR_ADDRESS and friends),
which JAX reads itself. Afterwards `jax.devices()` lists every host's devices and the
data-parallel mesh of training.fit spans them all.

Each process loads the same dataset (the loaders are deterministic) and builds the same initial
state (same seed). `global_array` turns such a host value into one global array whose shards
each process fills from its own copy; each host's devices then gather only their part of every
batch. Process 0 writes the run directory's files (config, metrics, reports, plots); every
process takes part in writing checkpoints, which Orbax coordinates.

Launch lines:
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
