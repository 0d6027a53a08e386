"""A model too small for its data (`model_too_small`): an underfit, not a bug.

Read after the overfit run: a model that could not memorize one batch, and has fewer trainable
parameters than that batch has output values to fit (examples x outputs), lacks the capacity to
fit it, whatever the code does right. The numbers (parameters, the narrowest layer) say how far
too small it is; the fix is a larger model, not a code change.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from workflow.diagnostics.checks.probes import named_leaves
from workflow.diagnostics.findings import Finding


def layer_widths(params: Any) -> dict[str, int]:
    """{kernel name: its output width} of the 2-D kernels, in order (convolutions: channels)."""
    return {
        name: int(np.shape(leaf)[-1])
        for name, leaf in named_leaves(params).items()
        if np.ndim(leaf) >= 2 and name.endswith("kernel")
    }


def model_too_small_finding(
    params: Any, batch_examples: int, num_outputs: int, overfit_passed: bool
) -> list[Finding]:
    """`model_too_small` when the batch was not memorized and the model has fewer parameters
    than the batch has output values; [] otherwise."""
    parameters = int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
    targets = int(batch_examples) * int(num_outputs)
    if overfit_passed or parameters >= targets:
        return []
    widths = layer_widths(params)
    hidden = dict(list(widths.items())[:-1])  # the last kernel is the output layer
    narrowest = min(hidden, key=hidden.get) if hidden else None
    where = f"; its narrowest layer, {narrowest}, is {hidden[narrowest]} wide" if narrowest else ""
    return [
        Finding(
            id="model_too_small",
            severity="warning",
            message=(
                f"the model has {parameters} parameters, fewer than the {targets} output values "
                f"of the one batch it could not memorize ({batch_examples} examples x "
                f"{num_outputs} outputs){where}: it is too small for the data, an underfit "
                "rather than a bug"
            ),
            evidence={
                "parameters": parameters,
                "batch_output_values": targets,
                "layer_widths": widths,
            },
            suggestions=[
                "make the model larger: wider layers (at least a few times the number of "
                "classes) or more of them, until it memorizes one batch",
                "then the workflow's tune and improve stages size it against the val error",
            ],
        )
    ]
