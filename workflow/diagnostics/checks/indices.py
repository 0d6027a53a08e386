"""Integer indices past the table they index (`index_out_of_range`).

NumPy raises on an out-of-range index; JAX cannot (the index is a traced value), so a gather
clamps it to the last row (`table[ids]`) or fills NaN (`jnp.take`, nnx.Embed) and training goes
on: token ids past an embedding table read one row (or NaN) for every unknown word, labels past
the outputs of a hand-written loss pick the last class. The check traces the train-mode loss on
the check batch (checks/tracing.py) and compares every gather's indices with the size of the
dimension it indexes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from workflow.diagnostics.checks import tracing
from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, LOSS_RUNS, OUTPUTS_SHAPED, Check
from workflow.diagnostics.checks.probes import data_loss
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState

GATHER = "gather"


def out_of_range_gathers(task: Task, state: TrainState, batch: dict) -> list[dict]:
    """Every gather of the train-mode loss on `batch` with indices outside its table."""

    def loss(params, model_state, x, y):
        return data_loss(task.train_graphdef, task.loss_fn, params, model_state, x, y)[0]

    def pick(eqn, values):
        fact = {
            "table_shape": tuple(np.shape(values[0])),
            "dims": eqn.params["dimension_numbers"].start_index_map,
            "sizes": eqn.params["slice_sizes"],
            "fills": "FILL" in str(eqn.params.get("mode")),
        }
        return fact, (values[1],)

    args = (state.params, state.model_state, jnp.asarray(batch["x"]), jnp.asarray(batch["y"]))
    found: list[dict] = []
    for fact, (indices,) in tracing.collect(loss, args, (GATHER,), pick):
        found += _outside(fact, np.asarray(indices))
    return found


def _outside(fact: dict, indices: np.ndarray) -> list[dict]:
    """The gathered dimensions whose indices fall outside the table (empty: all inside)."""
    dims, sizes, table = fact["dims"], fact["sizes"], fact["table_shape"]
    if not np.issubdtype(indices.dtype, np.integer) or not indices.size or not dims:
        return []
    if indices.shape[-1] != len(dims):  # lax.gather keeps the index vector on the last axis
        return []
    columns = indices.reshape(-1, len(dims))
    found = []
    for column, dim in enumerate(dims):
        ids = columns[:, column]
        rows = table[dim] - sizes[dim] + 1  # the valid start indices: [0, rows)
        outside = (ids < 0) | (ids >= rows)
        if outside.any():
            found.append(
                {
                    "table_shape": list(table),
                    "axis": int(dim),
                    "rows": int(rows),
                    "indices": int(ids.size),
                    "outside": int(outside.sum()),
                    "largest": int(ids.max()),
                    "smallest": int(ids.min()),
                    "out_of_range_reads": (
                        "NaN (filled)" if fact["fills"] else "the last row (clamped)"
                    ),
                }
            )
    return found


def check_indices(task: Task, state: TrainState, batch: dict) -> list[Finding]:
    """`index_out_of_range` when a gather of the loss indexes past its table."""
    found = out_of_range_gathers(task, state, batch)
    if not found:
        return []
    worst = max(found, key=lambda g: g["outside"] / g["indices"])
    return [
        Finding(
            id="index_out_of_range",
            severity="error",
            message=(
                f"{worst['outside']} of {worst['indices']} integer indices into a table of "
                f"{worst['rows']} rows (shape {tuple(worst['table_shape'])}) lie outside it "
                f"(largest {worst['largest']}): JAX reads {worst['out_of_range_reads']} for "
                "them instead of raising"
            ),
            evidence={"gathers": found},
            suggestions=[
                "size embedding tables to the vocabulary: num_embeddings = the data's "
                "vocabulary size (padding and unknown ids included)",
                "check the ids the loader makes (1-based ids, special tokens added on top) and "
                "the labels a hand-written loss indexes with (labels in [0, C))",
            ],
        )
    ]


CHECKS = (
    Check(
        "indices",
        order=45,
        run=lambda setup, batch: check_indices(setup.task, setup.state, batch),
        needs=(LABELS_IN_RANGE, OUTPUTS_SHAPED, LOSS_RUNS),
    ),
)
