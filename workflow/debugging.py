"""Implement & debug: overfit one batch, run the sanity checks, read a short run's loss curve."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from workflow import curves, training
from workflow.findings import Finding

# Within one severity, the most specific root cause first and the symptoms it explains last:
# a softmax before the loss explains an initial loss far off, which explains a plateau, which
# explains a batch that cannot be overfit.
ROOT_CAUSE_ORDER = (
    "shape_mismatch",
    "labels_out_of_range",
    "softmax_before_loss",
    "dtype_mismatch",
    "batch_dependence",
    "train_eval_mode",
    "nan_or_inf",
    "labels_corrupted",
    # Unscaled inputs are what make the gradients explode or vanish downstream.
    "inputs_not_normalized",
    "no_gradient",
    "dead_units",
    "exploding_gradients",
    "vanishing_gradients",
    "lr_too_high",
    "lr_too_low",
    "initial_loss_off",
    "loss_exploding",
    "loss_increasing",
    "loss_oscillating",
    "loss_plateau",
    "cannot_overfit_batch",
)


# Error-severity symptoms and the findings that explain them. A cause found beside its symptom
# is promoted to the symptom's severity, so that ranking puts the cause, not the symptom, first
# (a plateau warning explains the batch that cannot be overfit; lr_too_high explains a blow-up).
EXPLAINED_BY = {
    "cannot_overfit_batch": ROOT_CAUSE_ORDER[: ROOT_CAUSE_ORDER.index("cannot_overfit_batch")],
    "loss_exploding": (
        "lr_too_high",
        "exploding_gradients",
        "inputs_not_normalized",
        "initial_loss_off",
    ),
    "loss_increasing": ("lr_too_high",),
    "loss_oscillating": ("lr_too_high", "labels_corrupted"),
    "loss_plateau": (
        "lr_too_low",
        "no_gradient",
        "dead_units",
        "vanishing_gradients",
        "softmax_before_loss",
        "labels_corrupted",
    ),
}


@dataclasses.dataclass
class OverfitResult:
    """How far training on one fixed batch got."""

    passed: bool
    steps: int  # steps run; the steps to overfit when passed
    initial_loss: float
    final_loss: float
    final_accuracy: float
    losses: np.ndarray
    accuracies: np.ndarray


def copy_state(state: training.TrainState) -> training.TrainState:
    """A fresh copy: the multi-step donates its input state."""
    return jax.tree.map(jnp.copy, state)


def overfit_one_batch(
    task: training.Task,
    state: training.TrainState,
    x: np.ndarray,
    y: np.ndarray,
    *,
    max_steps: int,
    loss_fraction: float,
    chunk: int = 50,
) -> OverfitResult:
    """Train on one batch until it is memorized (100% accuracy, loss near zero) or max_steps."""
    multi_step = training.make_multi_step(task)
    xb, yb = jnp.asarray(x), jnp.asarray(y)
    indices = jnp.asarray(np.tile(np.arange(len(x)), (chunk, 1)))
    state = copy_state(state)
    losses, accuracies = [], []
    passed, steps = False, 0
    while steps < max_steps:
        state, metrics = multi_step(state, xb, yb, indices)
        losses.append(np.asarray(metrics["loss"]))
        accuracies.append(np.asarray(metrics["accuracy"]))
        all_losses = np.concatenate(losses)
        target = loss_fraction * all_losses[0]
        done = np.flatnonzero((np.concatenate(accuracies) >= 1.0) & (all_losses <= target))
        if done.size:
            passed, steps = True, int(done[0]) + 1
            break
        if not np.all(np.isfinite(losses[-1])):
            steps = len(all_losses)
            break
        steps += chunk
    loss, acc = np.concatenate(losses), np.concatenate(accuracies)
    last = min(steps, len(loss)) - 1
    return OverfitResult(
        passed=passed,
        steps=steps if passed else len(loss),
        initial_loss=float(loss[0]),
        final_loss=float(loss[last]),
        final_accuracy=float(acc[last]),
        losses=loss,
        accuracies=acc,
    )


def with_learning_rate(state: training.TrainState, learning_rate: float) -> training.TrainState:
    """A copy of `state` whose optimizer uses `learning_rate` (it lives in the optimizer state)."""
    state = copy_state(state)
    hyperparams = dict(state.opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def slow_overfit_finding(
    slow: OverfitResult, fast: OverfitResult, learning_rate: float, config
) -> Finding:
    """`lr_too_low`: one batch is memorized, but only at 10x the configured learning rate."""
    return Finding(
        id="lr_too_low",
        severity="warning",
        message=(
            f"one batch is memorized in {fast.steps} steps at lr {10 * learning_rate:g}, but not "
            f"in {slow.steps} steps at the configured {learning_rate:g} (loss "
            f"{slow.initial_loss:.3g} -> {slow.final_loss:.3g}, accuracy {slow.final_accuracy:.0%})"
        ),
        evidence={
            "learning_rate": learning_rate,
            "steps_at_learning_rate": slow.steps,
            "final_loss_at_learning_rate": slow.final_loss,
            "faster_learning_rate": 10 * learning_rate,
            "steps_at_faster_learning_rate": fast.steps,
        },
        suggestions=[
            f"raise the learning rate towards {10 * learning_rate:g}, or find it with "
            "workflow.tune's range test",
            f"or train longer than {config.debug.overfit_steps} steps",
        ],
    )


def cannot_overfit_finding(result: OverfitResult, causes: list[Finding], config) -> Finding:
    """`cannot_overfit_batch`, naming the likeliest cause the other checks found."""
    likely = [f.id for f in causes if f.id != "cannot_overfit_batch"]
    suggestions = [f"fix `{likely[0]}` first: {causes[0].message}"] if likely else []
    suggestions += [
        "check that gradients reach every layer (no stop_gradient, no dead ReLUs)",
        f"raise the learning rate (now {config.optimizer.learning_rate:g}) or train longer",
        "make sure the loss receives logits and labels of the expected shapes",
    ]
    return Finding(
        id="cannot_overfit_batch",
        severity="error",
        message=(
            f"the model could not memorize one batch of {config.debug.batch_size} examples in "
            f"{result.steps} steps (loss {result.initial_loss:.3g} -> {result.final_loss:.3g}, "
            f"accuracy {result.final_accuracy:.0%})"
        ),
        evidence={
            "steps": result.steps,
            "initial_loss": result.initial_loss,
            "final_loss": result.final_loss,
            "final_accuracy": result.final_accuracy,
            "likely_causes": likely[:3],
        },
        suggestions=suggestions,
    )


def promote_causes(findings: list[Finding]) -> list[Finding]:
    """Raise each warning that explains an error-severity symptom to an error."""
    symptoms = {f.id for f in findings if f.severity == "error" and f.id in EXPLAINED_BY}
    causes = {c for s in symptoms for c in EXPLAINED_BY[s]}
    return [
        dataclasses.replace(f, severity="error")
        if f.severity == "warning" and f.id in causes
        else f
        for f in findings
    ]


def rank_findings(findings: list[Finding]) -> list[Finding]:
    """Causes promoted to their symptoms' severity, then by severity, root cause first."""
    findings = promote_causes(findings)
    severity = {"error": 0, "warning": 1, "info": 2}
    order = {fid: i for i, fid in enumerate(ROOT_CAUSE_ORDER)}
    ranked = sorted(findings, key=lambda f: (severity[f.severity], order.get(f.id, len(order))))
    seen, unique = set(), []
    for f in ranked:
        if f.id not in seen:
            seen.add(f.id)
            unique.append(f)
    return unique


def expected_initial_loss(y: np.ndarray, num_classes: int) -> float:
    """Cross-entropy of an untrained model: the entropy of the label distribution (ln C)."""
    freq = np.bincount(y, minlength=num_classes) / max(len(y), 1)
    freq = freq[freq > 0]
    return float(-(freq * np.log(freq)).sum()) if len(freq) > 1 else math.log(num_classes)


def curve_findings(result: training.FitResult, num_classes: int, y, lr: float) -> list[Finding]:
    """Diagnose a short run's per-step loss (a NaN appended where the run stopped on one)."""
    losses = result.step_losses
    if result.divergence:
        losses = np.append(losses, np.nan)
    val = [(r["step"], r["val_loss"]) for r in result.records if "val_loss" in r]
    return curves.diagnose_curve(
        losses, val=val, initial_expected=expected_initial_loss(y, num_classes), learning_rate=lr
    )
