"""Random numbers drawn with the wrong keys: one key reused at every step, or one key shared by
two draws of the same pass (`prng_key_reused`, `prng_key_shared`).

JAX has no global random state: every draw is a function of its key, so a key that is not split
gives the same numbers again, silently. The check traces the model's train-mode pass, records
the key of every draw (checks/tracing.py) in two passes, the second from the state the first
left (the RNG counters a training step carries to the next), and compares: a key seen in both
passes is a dropout mask (or noise) frozen for the whole run; two draws of one pass with the
same key are two layers drawing the same numbers. nnx.Dropout and `nnx.Rngs` streams draw a
fresh key per call and stay quiet (tests/test_zoo_checks.py).
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from workflow import engine
from workflow.diagnostics.checks import tracing
from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, OUTPUTS_SHAPED, Check
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState

DRAW = "random_bits"


def two_steps_draws(task: Task, state: TrainState, x: np.ndarray) -> tuple[list, list]:
    """Every random draw of two consecutive train-mode passes (the second from the RNG state the
    first left, as the next training step starts from it): (first pass's, second pass's), each
    draw its key (bytes) and shape."""

    def two_passes(params, model_state, x):
        model = nnx.merge(task.train_graphdef, params, engine.fresh_variables(model_state))
        return model(x), model(x)

    def pick(eqn, values):
        return {"shape": eqn.params["shape"]}, (jax.random.key_data(values[0]),)

    args = (state.params, state.model_state, jax.numpy.asarray(x))
    draws = [
        {"key": np.asarray(key).tobytes(), **fact}
        for fact, (key,) in tracing.collect(two_passes, args, (DRAW,), pick)
    ]
    half = len(draws) // 2
    return draws[:half], draws[half:]


def check_randomness(task: Task, state: TrainState, x: np.ndarray) -> list[Finding]:
    """`prng_key_reused` and `prng_key_shared` from the keys of two consecutive train passes."""
    first, second = two_steps_draws(task, state, x)
    if not first:
        return []
    findings = []
    keys = {d["key"] for d in first}
    reused = [d for d in second if d["key"] in keys]
    if reused:
        findings.append(_reused_finding(reused, len(first)))
    if len(keys) < len(first):
        findings.append(_shared_finding(first))
    return findings


def _shapes(draws: list[dict]) -> list[list[int]]:
    return [list(d["shape"]) for d in draws]


def _reused_finding(reused: list[dict], draws: int) -> Finding:
    return Finding(
        id="prng_key_reused",
        severity="warning",
        message=(
            f"{len(reused)} of the {draws} random draws of the train-mode pass use the same key "
            "at the next step: the same dropout mask (or noise) every step of the run, as if "
            "a fixed sub-network were trained"
        ),
        evidence={"reused_draws": len(reused), "draws_per_pass": draws, "shapes": _shapes(reused)},
        suggestions=[
            "draw a new key at every call: keep the nnx.Rngs and call self.rngs.dropout() in "
            "__call__ (nnx.Dropout does), not a key made once in __init__ or from a constant seed",
            "in a hand-written loop, split the key every step: key, sub = jax.random.split(key)",
        ],
    )


def _shared_finding(draws: list[dict]) -> Finding:
    counts: dict[bytes, list[dict]] = {}
    for d in draws:
        counts.setdefault(d["key"], []).append(d)
    groups = [_shapes(group) for group in counts.values() if len(group) > 1]
    return Finding(
        id="prng_key_shared",
        severity="warning",
        message=(
            f"{sum(len(g) for g in groups)} of the {len(draws)} random draws of one train-mode "
            "pass share their key with another: those layers draw the same random numbers "
            "(correlated dropout masks)"
        ),
        evidence={"draws_per_pass": len(draws), "same_key_groups": groups},
        suggestions=[
            "split the key once per draw: k1, k2 = jax.random.split(key), or call "
            "self.rngs.dropout() for each layer",
            "give the layers one nnx.Rngs between them, not one nnx.Rngs(seed) each",
        ],
    )


CHECKS = (
    Check(
        "randomness",
        order=75,
        run=lambda setup, batch: check_randomness(setup.task, setup.state, batch["x"]),
        needs=(LABELS_IN_RANGE, OUTPUTS_SHAPED),
    ),
)
