"""Loss and the task's metrics over a whole split, in eval mode, in fixed-shape padded batches."""

from collections.abc import Iterator

import numpy as np
from jax.sharding import Mesh

from workflow.engine import distributed
from workflow.engine.sharding import batch_sharding
from workflow.engine.state import Task, TrainState
from workflow.engine.step import make_eval_batch


def add_sums(total: dict | None, sums: dict) -> dict:
    """Running totals of a task's batch sums (tasks.TaskKind.batch_sums)."""
    if total is None:
        return dict(sums)
    return {k: total[k] + v for k, v in sums.items()}


def padded_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    pad_to: int | None = None,
    num_batches: int | None = None,
) -> Iterator[tuple]:
    """Fixed-shape batches (one compile) with a mask over the padding of the last one.

    Batches are min(batch_size, len(x)) long, or `pad_to` long when given. `num_batches`
    (at least enough for x) adds wholly padded batches after the data, so that processes
    holding fewer rows run as many batches as the others.
    """
    n = len(x)
    batch_size = pad_to or min(batch_size, n)
    starts = range(0, n, batch_size)
    if num_batches is not None:
        starts = range(0, num_batches * batch_size, batch_size)
    for start in starts:
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        pad = batch_size - len(xb)
        mask = np.ones(batch_size, np.float32)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad, *yb.shape[1:]), yb.dtype)])
            mask[-pad:] = 0
        yield xb, yb, mask


class Evaluator:
    """Loss and the task's metrics of the model over a whole split, in eval mode."""

    def __init__(self, task: Task, batch_size: int, mesh: Mesh | None = None):
        self._eval_batch = make_eval_batch(task)
        self._kind = task.kind
        self._mesh = mesh
        # A data-parallel mesh splits each eval batch too: round it up to a multiple.
        self._batch_size = -(-batch_size // mesh.size) * mesh.size if mesh else batch_size

    def __call__(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """{'loss', 'error', 'accuracy' (1 - error), the task's metric_names} over all of (x, y).

        With several processes, arrays that differ between them (per-host data's training
        shards) are each host's own part of the split: the result is over all parts together.
        Every process must call it with its arrays at the same point (collectives).
        """
        if self._mesh is not None and not distributed.same_on_every_process(x, y):
            return self._over_every_host(state, x, y)
        total_loss, total = 0.0, None
        batch_size = self._batch_size
        if self._mesh is not None:  # padded to the full batch: the mesh must divide it
            batch_size = min(batch_size, -(-len(x) // self._mesh.size) * self._mesh.size)
        for xb, yb, mask in padded_batches(x, y, batch_size, pad_to=batch_size):
            if self._mesh is not None:
                xb, yb, mask = distributed.global_tree((xb, yb, mask), batch_sharding(self._mesh))
            loss, sums = self._eval_batch(state.params, state.model_state, xb, yb, mask)
            total_loss += loss
            total = add_sums(total, sums)
        return {"loss": float(total_loss) / len(x), **self._kind.summarize(total, len(x))}

    def _over_every_host(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> dict:
        """Each process's devices evaluate its own rows; the sums run over every host's."""
        mesh = self._mesh
        local = len(distributed.local_positions(mesh))
        counts = distributed.allgather(np.asarray(len(x), np.int64))
        total, most = int(counts.sum()), int(counts.max())
        per_device = max(1, min(self._batch_size // mesh.size, -(-most // local)))
        rows = per_device * local  # this host's rows of each global batch
        sharding = batch_sharding(mesh)
        total_loss, totals = 0.0, None
        # The same number of batches on every host: those with fewer rows pad whole batches.
        batches = padded_batches(x, y, rows, pad_to=rows, num_batches=-(-most // rows))
        for xb, yb, mask in batches:
            xb, yb, mask = (
                distributed.host_local_array(a, sharding, rows * mesh.size // local)
                for a in (xb, yb, mask)
            )
            loss, sums = self._eval_batch(state.params, state.model_state, xb, yb, mask)
            total_loss += loss
            totals = add_sums(totals, sums)
        return {"loss": float(total_loss) / max(total, 1), **self._kind.summarize(totals, total)}
