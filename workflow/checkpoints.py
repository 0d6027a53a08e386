"""Orbax checkpoints of the train state, stored as a flat {path: array} mapping."""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from workflow.errors import UsageError


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


class Checkpointer:
    """Periodic and final checkpoints under DIR/checkpoints, keeping the newest few."""

    def __init__(self, directory: str, max_to_keep: int = 3):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state) -> None:
        """Write the state at `step` (atomically: orbax finalizes a temporary directory)."""
        self._manager.save(step, args=ocp.args.StandardSave(to_flat(state)), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, template):
        """The state saved at `step`, in the structure of `template`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, to_flat(template))
        try:
            flat = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except (ValueError, FileNotFoundError, KeyError, OSError) as e:
            raise UsageError(f"cannot read checkpoint at step {step}: {e}") from None
        return from_flat(flat, template)

    def close(self) -> None:
        """Release the manager's resources."""
        self._manager.close()
