"""Orbax checkpoints of the train state, stored as nested dictionaries of arrays.

A checkpoint is the TrainState as plain nested dicts: {"step", "params", "model_state",
"opt_state"}, where "params" is exactly `nnx.state(model, nnx.Param).to_pure_dict()` of the
model (string keys; typed PRNG keys as their raw key data). Orbax's standard API reads it back
outside the workflow, and `nnx.replace_by_pure_dict` puts it into a model built from the run's
config (docs/run-directory.md shows how). On the grain pipeline (data.pipeline) a checkpoint
also holds DATA_STATE, the input iterator's JSON state as bytes, so it is written in the same
atomic step and covered by the same checksum; `data_state(step)` returns what a restore read.
Checkpoints of the older flat layout (one
{".params['l1']['kernel'].value": array} mapping) still restore.

Each save first records a SHA-256 digest of the arrays in checkpoints/checksums.json, so a
checkpoint whose files were damaged after it was written (truncated, partly deleted, bits
flipped) is caught on restore even where Orbax would read it back without complaint. A resumed
run sets such a checkpoint aside (renamed corrupt-<step>, by process 0 alone when several
processes run) and resumes from the one before.

Verification fails closed: a checkpoint whose checksum cannot be read (checksums.json damaged
or missing, or without its step) is unverified. An older verified checkpoint is preferred to it
(the unverified one is set aside as unverified-<step>); only when none is verified is the
newest readable one used, and `unverified_reason` says why it could not be checked. A full disk
while saving is an OSError naming the checkpoints folder, never Orbax's tracebacks.
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from workflow import files
from workflow.engine import distributed
from workflow.errors import UsageError

CHECKSUMS = "checksums.json"
# The input pipeline's state beside the TrainState (config.dataset.pipeline "grain"): its JSON
# as a uint8 array, so it is written atomically with the arrays and covered by their checksum.
DATA_STATE = "data_state"
# The errors of the place checkpoints are written to (the user's to fix: cli words them).
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
# The room a checkpoint of N array bytes needs: N times this plus this many bytes (Orbax's
# metadata and the file system's blocks).
SPACE_MARGIN, SPACE_SLACK = 1.05, 2**16
# tensorstore reports the operating system's error inside its message.
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


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
    """The older flat layout: {keystr(path): array}, typed PRNG keys as raw key data."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {
        jax.tree_util.keystr(path): jax.random.key_data(x) if _is_key(x) else x
        for path, x in leaves
    }


def _key_name(entry) -> str:
    """One step of a pytree path as a dictionary key: an attribute's name, a key, an index."""
    for field in ("name", "key", "idx"):
        if hasattr(entry, field):
            return str(getattr(entry, field))
    raise TypeError(f"unexpected pytree path entry {entry!r}")


def _tree_path(path) -> tuple[str, ...]:
    """A leaf's path as dictionary keys; an NNX Variable's `.value` is dropped (the variable
    is the leaf in `nnx.State.to_pure_dict()`)."""
    names = tuple(_key_name(entry) for entry in path)
    if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
        names = names[:-1]
    return names


def to_nested(state) -> dict:
    """The checkpoint of `state`: nested dicts of arrays, typed PRNG keys as raw key data."""
    nested: dict = {}
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        *parents, leaf = _tree_path(path)
        node = nested
        for name in parents:
            node = node.setdefault(name, {})
        if leaf in node:
            raise ValueError(f"two leaves of the state share the path {'/'.join(_tree_path(path))}")
        node[leaf] = jax.random.key_data(x) if _is_key(x) else x
    return nested


def named_leaves(nested: dict, prefix: str = "") -> dict[str, Any]:
    """{"params/out/kernel": array} from nested dicts: the names the checksums use."""
    out: dict[str, Any] = {}
    for name, value in nested.items():
        if isinstance(value, dict):
            out.update(named_leaves(value, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = value
    return out


def from_nested(nested: dict, template):
    """Rebuild a state shaped like `template` from `to_nested` output."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, like in paths:
        names, value = _tree_path(path), nested
        for name in names:
            if not isinstance(value, dict) or name not in value:
                where = "/".join(names)
                raise UsageError(f"checkpoint lacks {where}: it was written for a different model")
            value = value[name]
        leaves.append(_leaf_like(value, like, "/".join(names)))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _leaf_like(value, like, name: str):
    """A restored leaf as the template's: raw key data wrapped as a typed key, shapes equal."""
    if _is_key(like):
        return jax.random.wrap_key_data(value, impl=jax.random.key_impl(like))
    if np.shape(value) != np.shape(like):
        raise UsageError(
            f"checkpoint {name} has shape {np.shape(value)}, the model {np.shape(like)}"
        )
    return value


def from_flat(flat: dict, template):
    """Rebuild a state shaped like `template` from the older flat layout (`to_flat`)."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, like in paths:
        name = jax.tree_util.keystr(path)
        if name not in flat:
            raise UsageError(f"checkpoint lacks {name}: it was written for a different model")
        leaves.append(_leaf_like(flat[name], like, name))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def encode_data_state(state: dict) -> np.ndarray:
    """An input pipeline's JSON state as the uint8 array a checkpoint stores."""
    return np.frombuffer(json.dumps(state, sort_keys=True).encode(), np.uint8).copy()


def decode_data_state(array, step: int) -> dict:
    """The JSON state `encode_data_state` stored; CorruptCheckpoint where it does not parse."""
    try:
        state = json.loads(np.asarray(array, np.uint8).tobytes().decode())
    except (UnicodeDecodeError, ValueError):
        raise CorruptCheckpoint(
            f"checkpoint at step {step} holds an unreadable data state"
        ) from None
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"checkpoint at step {step} holds a data state that is no object")
    return state


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
        self._manager = self._new_manager()
        self._failed = False  # a save failed on storage: closing may fail the same way
        self._data_states: dict[int, dict] = {}  # read with the states restored

    def _new_manager(self) -> ocp.CheckpointManager:
        # The standard handler named, so the metadata of a checkpoint (its layout) reads back.
        return ocp.CheckpointManager(
            self._directory, options=self._options, item_handlers=ocp.StandardCheckpointHandler()
        )

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state, data_state: dict | None = None) -> None:
        """Write the state at `step`: its checksum first, then the arrays (atomically: Orbax
        finalizes a temporary directory), so every finished checkpoint has its checksum.
        `data_state`, the input pipeline's (JSON), is saved beside the state (DATA_STATE)."""
        nested = to_nested(state)
        if data_state is not None:
            nested[DATA_STATE] = encode_data_state(data_state)
        flat = named_leaves(nested)
        self._check_space(flat)
        if distributed.is_writer():  # every process writes its shards (Orbax); process 0 sums
            self._record_checksum(step, flat)
        try:
            with _orbax_quiet():
                self._manager.save(step, args=ocp.args.StandardSave(nested), force=True)
                self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - tensorstore raises plain Exceptions
            code = _os_error(e)
            if code not in STORAGE_ERRNOS:
                raise
            self._failed = True
            raise OSError(code, os.strerror(code), self._directory) from None

    def _check_space(self, flat: dict) -> None:
        """A full disk refused before Orbax starts writing: Orbax stopped by a failed write
        leaves threads that print tracebacks as they die. (A disk that fills meanwhile, or a
        quota, still fails in Orbax, and is worded the same.)"""
        need = sum(int(np.prod(np.shape(v))) * np.dtype(v.dtype).itemsize for v in flat.values())
        free = shutil.disk_usage(self._directory).free
        # Every process saves (a collective), so all of them stop if one would not fit.
        if not distributed.all_agree(free >= need * SPACE_MARGIN + SPACE_SLACK):
            self._failed = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._directory)

    def _record_checksum(self, step: int, flat: dict) -> None:
        """checksums.json with `step`'s digest (None where parameters split over hosts: no
        process sees them whole, and Orbax's own checks remain), kept to the steps on disk."""
        sums, _ = self._checksums()
        steps = set(self._manager.all_steps())
        sums = {k: v for k, v in (sums or {}).items() if k.isdigit() and int(k) in steps}
        if all(_whole_on_host(value) for value in flat.values()):
            sums[str(step)] = digest(jax.device_get(flat))
        else:
            sums[str(step)] = None
        files.write_json(os.path.join(self._directory, CHECKSUMS), sums)  # atomic

    def _checksums(self) -> tuple[dict | None, str | None]:
        """(step -> digest, None) from checksums.json, or (None, why it cannot be read)."""
        path = os.path.join(self._directory, CHECKSUMS)
        try:
            sums = files.read_json(path)
        except FileNotFoundError:
            return None, f"{CHECKSUMS} is missing"
        except (OSError, ValueError) as e:
            return None, f"{CHECKSUMS} does not read back ({type(e).__name__}: {str(e)[:100]})"
        if not isinstance(sums, dict):
            return None, f"{CHECKSUMS} is not a JSON object"
        return sums, None

    def _flat_layout(self, step: int) -> bool:
        """Whether the checkpoint at `step` has the older flat layout (keys like ".params[...]")."""
        metadata = self._manager.item_metadata(step)
        keys = list(metadata.keys()) if hasattr(metadata, "keys") else []
        return bool(keys) and all(str(key).startswith(".") for key in keys)

    def _data_state_shape(self, step: int) -> tuple[int, ...] | None:
        """The shape of the data state saved at `step`, or None when it holds none."""
        metadata = self._manager.item_metadata(step)
        if not hasattr(metadata, "keys") or DATA_STATE not in metadata.keys():
            return None
        return tuple(metadata[DATA_STATE].shape)

    def data_state(self, step: int) -> dict | None:
        """The input pipeline's state restored with the checkpoint at `step` (restore reads
        it), or None where that checkpoint holds none (the memory pipeline, older runs)."""
        return self._data_states.get(step)

    def unverified_reason(self, step: int) -> str | None:
        """Why the checkpoint at `step` cannot be checked against its checksum; None when it
        can (or when it is checked by Orbax alone by design: parameters split over hosts)."""
        sums, problem = self._checksums()
        if sums is None:
            return f"checkpoints/{problem}, so its checksum cannot be read"
        if str(step) not in sums:
            return f"checkpoints/{CHECKSUMS} holds no checksum for it"
        return None

    def restore(self, step: int, template):
        """The state saved at `step`, in the structure of `template`."""
        try:
            flat_layout = self._flat_layout(step)
            saved = to_flat(template) if flat_layout else to_nested(template)
            data_shape = None if flat_layout else self._data_state_shape(step)
            if data_shape is not None:
                saved[DATA_STATE] = np.zeros(data_shape, np.uint8)
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, saved)
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 - tensorstore raises plain Exceptions
            message = str(e).splitlines()[0][:300]
            raise CorruptCheckpoint(f"cannot read checkpoint at step {step}: {message}") from None
        named = restored if flat_layout else named_leaves(restored)
        expected = (self._checksums()[0] or {}).get(str(step))
        if expected is not None and digest(jax.device_get(named)) != expected:
            raise CorruptCheckpoint(
                f"checkpoint at step {step} does not match the checksum recorded when it was "
                "written: its files were changed or damaged since"
            )
        if data_shape is not None:
            self._data_states[step] = decode_data_state(restored.pop(DATA_STATE), step)
        state = from_flat(restored, template) if flat_layout else from_nested(restored, template)
        # The state's own step counter holds even where no checksum can be read: a checkpoint
        # folder replaced by another step's is never resumed from.
        saved = getattr(state, "step", None)
        saved = None if saved is None else int(jax.device_get(saved))
        if saved is not None and saved != step:
            raise CorruptCheckpoint(
                f"checkpoint at step {step} holds the state of step {saved}: its folder was "
                "replaced by another"
            )
        return state

    def restore_latest(self, template) -> tuple[object, int | None, list[dict]]:
        """The newest verified checkpoint as (state, step, skipped); step None: none readable.

        A corrupt or partial checkpoint is renamed corrupt-<step> (kept for inspection, out of
        Orbax's way) and reported in `skipped`; the one before it is tried next. A checkpoint
        without a readable checksum gives way to an older verified one (renamed
        unverified-<step>, reported in `skipped`); with none verified, the newest readable one
        is returned (`unverified_reason` names why it was not checked). With several processes
        every one tries the same steps (process 0's list), a step counts as readable only where
        all of them read it, and process 0 alone renames while the others wait, so all resume
        from the same step. Every process must call it (collectives).
        """
        skipped: list[dict] = []
        steps = distributed.broadcast_ints(sorted(self._manager.all_steps(), reverse=True))
        unverified = [step for step in steps if self.unverified_reason(step)]
        for step in [s for s in steps if s not in unverified]:
            state = self._restore_or_set_aside(step, template, skipped)
            if state is not None:
                for newer in (s for s in unverified if s > step):
                    reason = self.unverified_reason(newer)
                    moved = self._set_aside(newer, "unverified")
                    error = f"checkpoint at step {newer} is not verified ({reason})"
                    skipped.append({"step": newer, "error": error, "moved_to": moved})
                return state, step, skipped
        for step in unverified:  # none verified: the newest readable, reported as unverified
            state = self._restore_or_set_aside(step, template, skipped)
            if state is not None:
                return state, step, skipped
        return template, None, skipped

    def discard_from(self, step: int) -> list[int]:
        """Delete the checkpoints at `step` and after, returning their steps: a resumed run
        trains them again (to the same numbers) where their steps' metrics records were lost.
        Every process must call it with the same step."""
        steps = [s for s in distributed.broadcast_ints(self._manager.all_steps()) if s >= step]
        if steps:

            def delete() -> None:
                for s in steps:
                    shutil.rmtree(os.path.join(self._directory, str(s)))

            self._change_folders(f"discard_from:{step}", delete)
        return steps

    def _restore_or_set_aside(self, step: int, template, skipped: list[dict]):
        """The state at `step` where every process reads it; else None, the checkpoint set
        aside as corrupt-<step> and reported in `skipped`."""
        error, state = None, None
        try:
            state = self.restore(step, template)
        except CorruptCheckpoint as e:
            error = str(e)
        if distributed.all_agree(error is None):
            return state
        if error is None:
            error = f"checkpoint at step {step} could not be read by another process"
        skipped.append({"step": step, "error": error, "moved_to": self._set_aside(step)})
        return None

    def _set_aside(self, step: int, why: str = "corrupt") -> str:
        source = os.path.join(self._directory, str(step))
        target = os.path.join(self._directory, f"{why}-{step}")

        def move() -> None:
            shutil.rmtree(target, ignore_errors=True)
            os.replace(source, target)

        self._change_folders(f"set_aside:{step}", move)
        return target

    def _change_folders(self, label: str, change) -> None:
        """`change` the checkpoint folders on process 0 once every process is done reading
        them, and wait for it everywhere; then a fresh manager (a failed restore can leave the
        old one expecting another layout, and it lists the steps it saw)."""
        distributed.barrier(f"checkpoints:{label}:read")
        if distributed.is_writer():
            change()
        distributed.barrier(f"checkpoints:{label}:changed")
        self._manager.close()
        self._manager = self._new_manager()

    def close(self) -> None:
        """Release the manager's resources (quietly after a save the disk refused: the error
        that matters is raised already)."""
        try:
            with _orbax_quiet():
                self._manager.close()
        except Exception:  # noqa: BLE001 - the same failure again, from Orbax's threads
            if not self._failed:
                raise


def _os_error(error: BaseException) -> int | None:
    """The storage errno (full disk, quota, permissions, read-only) behind an Orbax or
    tensorstore error, or None when it is another failure."""
    while error is not None:
        if isinstance(error, OSError) and error.errno is not None:
            return error.errno
        match = _OS_ERROR_CODE.search(str(error))
        if match:
            return int(match.group(1))
        if "No space left on device" in str(error):
            return errno.ENOSPC
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def _orbax_quiet() -> Iterator[None]:
    """Orbax's threads log a failed write with its traceback before the error reaches us; the
    error is raised (and worded for the user) here instead."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl_logger.setLevel(level)
