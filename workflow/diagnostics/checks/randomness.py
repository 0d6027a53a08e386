"""Random numbers drawn with the wrong keys: one key reused at every step, or one key shared by
two draws of the same pass (`prng_key_reused`, `prng_key_shared`).

JAX has no global random state: every draw is a function of its key, so a key that is not split
gives the same numbers again, silently. The check traces the model's train-mode pass, records
the key of every draw (checks/tracing.py), runs the pass again from the state the first pass
left (the RNG counters a training step carries to the next) and compares: a key seen in both
passes is a dropout mask (or noise) frozen for the whole run; two draws of one pass with the
same key are two layers drawing the same numbers. nnx.Dropout and `nnx.Rngs` streams draw a
fresh key per call and stay quiet (tests/test_zoo_checks.py).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from workflow import engine
from workflow.diagnostics.checks import tracing
from workflow.diagnostics.checks.plugins import LABELS_IN_RANGE, OUTPUTS_SHAPED, Check
from workflow.diagnostics.checks.probes import forward_in_mode
from workflow.diagnostics.findings import Finding
from workflow.engine import Task, TrainState

DRAW = "random_bits"


def train_pass_draws(task: Task, params: Any, model_state: Any, x: np.ndarray) -> list[dict]:
    """Every random draw of one train-mode pass, in order: its key (bytes) and shape."""
    draws: list[dict] = []

    def forward(params, model_state, x):
        model = nnx.merge(task.train_graphdef, params, engine.fresh_variables(model_state))
        return model(x)

    def visit(eqn, values):
        if eqn.primitive.name == DRAW:
            draws.append({"key": tracing.key_bytes(values[0]), "shape": eqn.params["shape"]})

    tracing.trace_and_visit(forward, (params, model_state, jax.numpy.asarray(x)), visit, (DRAW,))
    return draws


def check_randomness(task: Task, state: TrainState, x: np.ndarray) -> list[Finding]:
    """`prng_key_reused` and `prng_key_shared` from the keys of two consecutive train passes."""
    first = train_pass_draws(task, state.params, state.model_state, x)
    if not first:
        return []
    advanced = forward_in_mode(task.train_graphdef, state.params, state.model_state, x)[1]
    second = train_pass_draws(task, state.params, advanced, x)
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
