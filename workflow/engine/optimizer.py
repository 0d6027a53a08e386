"""The configured optax optimizer: L2 as a gradient term, clipping, base rule (built in or the
user's), lr schedule (built in or the user's), and gradient accumulation."""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from workflow.errors import UsageError, import_user_object, user_code


def clip_by_global_norm_or_off(max_norm: jax.Array) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` with the norm a traced value, `max_norm` <= 0 meaning no
    clipping: batched trials (workflow/engine/trials.py) each clip at their own norm. Clips as
    optax does, so a trial's numbers are those of a single run at its norm."""

    def update_fn(updates, state, params=None):
        del params
        g_norm = optax.global_norm(updates)
        keep = (g_norm < max_norm) | (max_norm <= 0)
        clipped = jax.tree.map(
            lambda t: jax.lax.select(keep, t, (t / g_norm.astype(t.dtype)) * max_norm), updates
        )
        return clipped, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def build_optimizer(
    opt: ml_collections.ConfigDict,
    l2: float = 0.0,
    num_steps: int = 1,
    clip_per_trial: bool = False,
    weight_decay_per_trial: bool = False,
) -> optax.GradientTransformation:
    """The configured optimizer, with the L2 penalty applied as its gradient.

    The learning rate and the L2 weight live in the optimizer state (`inject_hyperparams`), so
    trials batched under `vmap` each carry their own. `l2 * sum(w**2)` added to the loss has the
    gradient `2 * l2 * w`, which `add_decayed_weights` adds before the optimizer sees it.
    `opt.clip_norm` > 0 scales that whole gradient down to at most this global norm
    (`optax.clip_by_global_norm`). `opt.accumulate_steps` = k > 1 averages the gradients of k
    consecutive batches and updates the parameters once per k steps (`optax.MultiSteps`, inside
    the injected hyperparameters so they stay at the top of the state); the schedule still
    counts steps (batches). With `clip_per_trial` the clipping norm is injected too
    (`clip_norm`, 0: off), so that batched trials each clip at their own; with
    `weight_decay_per_trial` (adamw) AdamW's decoupled `weight_decay` is injected too.
    """
    builtin = {
        "adam": lambda lr: optax.adam(lr),
        "adamw": lambda lr: optax.adamw(lr, weight_decay=opt.weight_decay),
        "sgd": lambda lr: optax.sgd(lr),
        "momentum": lambda lr: optax.sgd(lr, momentum=opt.momentum),
    }
    base = builtin.get(opt.name) or user_optimizer(opt.name)

    multiplier = lr_multiplier(opt, num_steps)
    configured_clip = float(opt.get("clip_norm", 0.0))
    every = int(opt.get("accumulate_steps", 1))
    if multiplier is not None and every > 1:  # the inner count counts updates, not batches
        per_batch = multiplier
        multiplier = lambda update: per_batch(update * every)  # noqa: E731

    def make(learning_rate, l2, clip_norm=None, weight_decay=None):
        parts = [optax.add_decayed_weights(2.0 * l2)]
        if clip_norm is not None:
            parts.append(clip_by_global_norm_or_off(jnp.asarray(clip_norm)))
        elif configured_clip > 0:
            parts.append(optax.clip_by_global_norm(configured_clip))
        if weight_decay is not None:  # the trial's own decoupled decay (adamw only)
            parts.append(optax.adamw(learning_rate, weight_decay=weight_decay))
        else:
            parts.append(base(learning_rate))
        if multiplier is not None:  # constant schedules keep the state (and checkpoints) lean
            parts.append(optax.scale_by_schedule(multiplier))
        if every > 1:
            return optax.MultiSteps(optax.chain(*parts), every).gradient_transformation()
        return optax.chain(*parts)

    per_trial = {}
    if clip_per_trial:
        per_trial["clip_norm"] = configured_clip
    if weight_decay_per_trial:
        if opt.name != "adamw":
            raise ValueError(f"weight_decay_per_trial needs adamw, not {opt.name!r}")
        per_trial["weight_decay"] = float(opt.weight_decay)
    return optax.inject_hyperparams(make)(learning_rate=opt.learning_rate, l2=l2, **per_trial)


USER_OPTIMIZER = "an import path 'module:function' (learning_rate -> optax.GradientTransformation)"
USER_SCHEDULE = "an import path 'module:function' (num_steps -> schedule: step -> lr factor)"


def user_optimizer(name: str) -> Callable[[Any], optax.GradientTransformation]:
    """The user's optimizer `name` ("module:function"): called with the (injected) learning
    rate, it returns an optax GradientTransformation; the L2 penalty, clipping, accumulation
    and the schedule wrap it as they wrap the built-in ones."""
    valid = f"adam, adamw, sgd, momentum or {USER_OPTIMIZER}"
    make = import_user_object(name, "optimizer", valid)

    def build(learning_rate: Any) -> optax.GradientTransformation:
        with user_code(f"optimizer {name!r}", make):
            tx = make(learning_rate)
        if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            raise UsageError(
                f"optimizer {name!r} returned {type(tx).__name__}; expected an optax "
                "GradientTransformation (init, update), e.g. optax.adam(learning_rate)"
            )
        return tx

    return build


def user_schedule(name: str, num_steps: int) -> optax.Schedule:
    """The user's schedule `name` ("module:function") for a run of `num_steps`: a function of
    the step giving the factor on optimizer.learning_rate (1.0: the configured rate)."""
    valid = f"constant, piecewise, cosine or {USER_SCHEDULE}"
    make = import_user_object(name, "schedule", valid)
    with user_code(f"schedule {name!r}", make):
        schedule = make(num_steps)
        factor = float(schedule(0)) if callable(schedule) else None
    if factor is None or not math.isfinite(factor):
        raise UsageError(
            f"schedule {name!r} returned {type(schedule).__name__} (at step 0: {factor}); "
            "expected a function of the step giving a finite factor on the learning rate, "
            "e.g. optax.cosine_decay_schedule(1.0, num_steps)"
        )
    return schedule


def lr_multiplier(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule | None:
    """config.optimizer.schedule as a factor on the learning rate; None for "constant".

    A factor rather than a schedule of the rate itself: the rate stays one injected scalar, so
    batched trials (each with its own rate) share the schedule's shape.
    """
    schedule = opt.get("schedule") or {"name": "constant"}
    name = schedule["name"]
    if name == "constant":
        return None
    if ":" in name:
        return user_schedule(name, num_steps)
    if name == "piecewise":
        boundaries = {int(b): float(schedule["scale"]) for b in schedule["boundaries"]}
        return optax.piecewise_constant_schedule(1.0, boundaries)
    warmup = int(schedule.get("warmup_steps", 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else 1.0,
        peak_value=1.0,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
    )


def learning_rates_at(
    opt: ml_collections.ConfigDict, num_steps: int, steps: list[int]
) -> list[float]:
    """The learning rate the optimizer applies at each of `steps` (1-based, as metrics.jsonl
    counts): the configured rate times its schedule's factor, the schedule built once."""
    multiplier = lr_multiplier(opt, num_steps)
    rate = float(opt.learning_rate)
    return [rate * (1.0 if multiplier is None else float(multiplier(s - 1))) for s in steps]


def same_rates_when_shorter(opt: ml_collections.ConfigDict, num_steps: int, steps: int) -> bool:
    """Whether a run of `steps` steps applies the learning rates of the first `steps` steps of
    a run of `num_steps` (a schedule that does not depend on the run's length, or not before
    `steps`): a trial stopped at `steps` is then the run its config at that length trains."""
    if steps == num_steps:
        return True
    whole, short = lr_multiplier(opt, num_steps), lr_multiplier(opt, steps)
    if whole is None or short is None:
        return whole is short
    return bool(np.allclose(_factors(whole, steps), _factors(short, steps), rtol=1e-6))


def _factors(schedule: optax.Schedule, steps: int) -> np.ndarray:
    """The schedule's factors at steps 0..steps-1: traced once where it can be (optax's), else
    one call per step (a user's schedule with Python control flow on the step)."""
    try:
        return np.asarray(jax.vmap(schedule)(jnp.arange(steps)), np.float64)
    except Exception:  # noqa: BLE001 - not traceable: evaluate it step by step instead
        return np.array([float(schedule(step)) for step in range(steps)])


def learning_rate_at(opt: ml_collections.ConfigDict, num_steps: int, step: int) -> float:
    """The learning rate the optimizer applies at `step` (learning_rates_at of one step)."""
    return learning_rates_at(opt, num_steps, [step])[0]
