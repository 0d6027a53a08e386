"""Orbax checkpoints of the train state, stored as a flat {path: array} mapping.

Each save also records a SHA-256 digest of the arrays in checkpoints/checksums.json, so a
checkpoint whose files were damaged after it was written (truncated, partly deleted, bits
flipped) is caught on restore even where Orbax would read it back without complaint. A resumed
run sets such a checkpoint aside (renamed corrupt-<step>, by process 0 alone when several
processes run) and resumes from the one before.
"""

import hashlib
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from workflow import files
from workflow.engine import distributed
from workflow.errors import UsageError

CHECKSUMS = "checksums.json"


class CorruptCheckpoint(UsageError):
    """A checkpoint that cannot be read back as it was written."""


def digest(flat: dict[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a flat checkpoint, in name order."""
    h = hashlib.sha256()
    for name in sorted(flat):
        value = np.asarray(flat[name])
        h.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_flat(state) -> dict[str, np.ndarray]:
    """A checkpointable dict: typed PRNG keys become their raw key data."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {
        jax.tree_util.keystr(path): jax.random.key_data(x) if _is_key(x) else x
        for path, x in leaves
    }


def from_flat(flat: dict, template):
    """Rebuild a state shaped like `template` from `to_flat` output."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, like in paths:
        name = jax.tree_util.keystr(path)
        if name not in flat:
            raise UsageError(f"checkpoint lacks {name}: it was written for a different model")
        value = flat[name]
        if _is_key(like):
            value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(like))
        elif np.shape(value) != np.shape(like):
            raise UsageError(
                f"checkpoint {name} has shape {np.shape(value)}, the model {np.shape(like)}"
            )
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _whole_on_host(value) -> bool:
    """Whether this process can read all of `value` (one host's, or replicated everywhere)."""
    if not isinstance(value, jax.Array):
        return True
    return value.is_fully_addressable or value.is_fully_replicated


class Checkpointer:
    """Periodic and final checkpoints under DIR/checkpoints, keeping the newest few."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        self._directory = os.path.abspath(directory)
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self._directory, options=self._options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        """Write the state at `step` (atomically: orbax finalizes a temporary directory)."""
        flat = to_flat(state)
        self._manager.save(step, args=ocp.args.StandardSave(flat), force=True)
        self._manager.wait_until_finished()
        if not distributed.is_writer():
            return  # every process writes its shards (Orbax); process 0 the checksums
        sums = {k: v for k, v in self._checksums().items() if int(k) in self._manager.all_steps()}
        if all(_whole_on_host(value) for value in flat.values()):
            sums[str(step)] = digest(jax.device_get(flat))
        else:  # parameters split over hosts: none sees them whole; Orbax's own checks remain
            sums.pop(str(step), None)
        files.write_json(os.path.join(self._directory, CHECKSUMS), sums)  # atomic

    def _checksums(self) -> dict[str, str]:
        try:
            return files.read_json(os.path.join(self._directory, CHECKSUMS))
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: checkpoints are then checked by Orbax alone

    def restore(self, step: int, template):
        """The state saved at `step`, in the structure of `template`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_flat(template))
        try:
            flat = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 - tensorstore raises plain Exceptions
            message = str(e).splitlines()[0][:300]
            raise CorruptCheckpoint(f"cannot read checkpoint at step {step}: {message}") from None
        expected = self._checksums().get(str(step))
        if expected is not None and digest(jax.device_get(flat)) != expected:
            raise CorruptCheckpoint(
                f"checkpoint at step {step} does not match the checksum recorded when it was "
                "written: its files were changed or damaged since"
            )
        return from_flat(flat, template)

    def restore_latest(self, template) -> tuple[object, int | None, list[dict]]:
        """The newest readable checkpoint as (state, step, skipped); step None: none readable.

        A corrupt or partial checkpoint is renamed corrupt-<step> (kept for inspection, out of
        Orbax's way) and reported in `skipped`; the one before it is tried next. With several
        processes every one tries the same steps (process 0's list), a step counts as readable
        only where all of them read it, and process 0 alone renames while the others wait, so
        all resume from the same step. Every process must call it (collectives).
        """
        skipped = []
        steps = sorted(self._manager.all_steps(), reverse=True)
        for step in distributed.broadcast_ints(steps):
            error = None
            try:
                state = self.restore(step, template)
            except CorruptCheckpoint as e:
                error = str(e)
            if distributed.all_agree(error is None):
                return state, step, skipped
            if error is None:
                error = f"checkpoint at step {step} could not be read by another process"
            skipped.append({"step": step, "error": error, "moved_to": self._set_aside(step)})
        return template, None, skipped

    def _set_aside(self, step: int) -> str:
        source = os.path.join(self._directory, str(step))
        target = os.path.join(self._directory, f"corrupt-{step}")
        distributed.barrier(f"checkpoints:set_aside:{step}:read")  # every process is done with it
        if distributed.is_writer():
            shutil.rmtree(target, ignore_errors=True)
            os.replace(source, target)
        distributed.barrier(f"checkpoints:set_aside:{step}:moved")
        # A fresh manager: a failed restore can leave the old one expecting another layout.
        self._manager.close()
        self._manager = ocp.CheckpointManager(self._directory, options=self._options)
        return target

    def close(self) -> None:
        """Release the manager's resources."""
        self._manager.close()
