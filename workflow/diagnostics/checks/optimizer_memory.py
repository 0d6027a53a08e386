"""An optimizer that never forgets a gradient (`gradients_never_reset`): JAX's forgotten
`zero_grad`.

PyTorch accumulates gradients until `zero_grad`; in JAX a user who accumulates by hand (a running
sum added into every step's update, a MultiSteps-like wrapper whose buffer is never cleared)
makes the same bug. The check probes the configured optimizer (`task.tx`) on the model's
parameter tree: one step's gradient, then zero gradients, and the size of every update after. A
sound optimizer forgets the first gradient: plain SGD at once, momentum and Adam geometrically,
a MultiSteps that resets after its emission. One that keeps adding it in applies it at full
size at every later step.
Sign-based rules (Lion, signSGD) keep the sign of the last nonzero gradient under zero gradients
and would read as never forgetting; the workflow's optimizers (Adam, AdamW, SGD, momentum) are
not sign-based. A schedule that decays to zero within the probe hides the memory (no false
alarm, only a miss).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workflow import engine
from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, LOSS_RUNS, OUTPUTS_SHAPED, Check
from workflow.diagnostics.findings import Finding

# Steps of the probe, and the last share of them in which a sound optimizer has forgotten the
# first gradient: momentum 0.9 keeps 0.9^30 = 4% of it there, Adam 3%, an accumulator 100%.
PROBE_STEPS = 40
LATE_SHARE = 0.25
# The largest late effect of the first gradient, relative to its largest effect, that a sound
# optimizer leaves: momentum up to 0.996 stays below it (0.99 keeps 74%).
MAX_PERSISTENCE = 0.9
# Entries of each parameter the probe keeps: the optimizers treat entries alike, so a slice of
# each (the tree's structure unchanged) measures the same memory at a fraction of the cost.
PROBE_ENTRIES = 64


@engine.jit_for_few_runs(static_argnums=(0, 2))
def _first_gradient_effect(tx: optax.GradientTransformation, params: Any, steps: int) -> jax.Array:
    """The norm of each step's update after a gradient of ones at the first step and zeros after,
    at zero parameters (so that weight decay adds nothing)."""
    ones = jax.tree.map(jnp.ones_like, params)

    def step(opt_state, t):
        g = jax.tree.map(lambda one: jnp.where(t == 0, one, 0.0), ones)
        updates, opt_state = tx.update(g, opt_state, params)
        return opt_state, optax.global_norm(updates)

    return jax.lax.scan(step, tx.init(params), jnp.arange(steps))[1]


def probe_parameters(params: Any) -> Any:
    """`params` with each leaf cut to its first PROBE_ENTRIES entries, as zeros (float32)."""
    return jax.tree.map(
        lambda leaf: jnp.zeros((min(int(np.size(leaf)), PROBE_ENTRIES),), jnp.float32), params
    )


def gradient_persistence(
    tx: optax.GradientTransformation, params: Any, steps: int = PROBE_STEPS
) -> dict[str, float] | None:
    """How much of one step's gradient the optimizer still applies in the last LATE_SHARE of
    `steps` later steps, relative to the most it applied (None: no effect to measure)."""
    effect = np.asarray(_first_gradient_effect(tx, probe_parameters(params), steps), np.float64)
    peak = float(effect.max()) if effect.size else 0.0
    if not np.all(np.isfinite(effect)) or peak <= 0.0:
        return None
    late = float(effect[int((1.0 - LATE_SHARE) * steps) :].max())
    return {"persistence": late / peak, "steps": steps}


def check_optimizer_memory(task: Any, state: Any) -> list[Finding]:
    """`gradients_never_reset` when one step's gradient is still applied in full much later."""
    probe = gradient_persistence(task.tx, state.params)
    if probe is None or probe["persistence"] <= MAX_PERSISTENCE:
        return []
    return [
        Finding(
            id="gradients_never_reset",
            severity="warning",
            message=(
                f"the optimizer still applies {probe['persistence']:.0%} of one step's gradient "
                f"{int((1 - LATE_SHARE) * probe['steps'])}+ steps later: gradients are "
                "accumulated and never reset, so every update adds all the gradients so far "
                "(the JAX form of a forgotten zero_grad)"
            ),
            evidence={**probe, "max_persistence": MAX_PERSISTENCE},
            suggestions=[
                "reset the accumulator after each update (or use optax.MultiSteps, which does), "
                "or drop the running sum and pass each step's gradient to the optimizer",
                "accumulating over k batches: --config.optimizer.accumulate_steps=k",
            ],
        )
    ]


# Findings by what builds the optimizer (the config's optimizer, L2 and steps, engine.state) and
# the parameter tree it is probed on: the same config builds an optimizer of the same behaviour,
# so reruns of one setup (debug.fix, the tests) probe it once.
_BY_CONFIG: dict[tuple, list[Finding]] = {}
MAX_REMEMBERED = 64


def _config_key(setup: Any) -> tuple:
    config = setup.config
    tree = jax.tree.structure(setup.state.params)
    sizes = tuple(int(np.size(leaf)) for leaf in jax.tree.leaves(setup.state.params))
    return (config.optimizer.to_json_best_effort(), config.l2, config.num_steps, tree, sizes)


def check_configured_optimizer(setup: Any, batch: dict) -> list[Finding]:
    """check_optimizer_memory of the setup's optimizer, once per optimizer config and tree."""
    key = _config_key(setup)
    if key not in _BY_CONFIG:
        if len(_BY_CONFIG) >= MAX_REMEMBERED:
            _BY_CONFIG.clear()
        _BY_CONFIG[key] = check_optimizer_memory(setup.task, setup.state)
    return list(_BY_CONFIG[key])


CHECKS = (
    Check(
        "optimizer_memory",
        order=85,
        run=check_configured_optimizer,
        needs=(LABELS_IN_RANGE, OUTPUTS_SHAPED, LOSS_RUNS),
    ),
)
