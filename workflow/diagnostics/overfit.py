"""Overfit one batch: can the model memorize a small fixed batch, and if not, why?"""

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from workflow import engine
from workflow.diagnostics.budget import StepBudget
from workflow.diagnostics.findings import Finding
from workflow.engine.progress import Progress
from workflow.engine.state import copy_state

# A batch whose loss fell below this fraction of its initial value at the configured learning
# rate is being memorized, only not within the budget: normal for a short healthy run at a
# moderate rate (an LSTM at Adam 3e-4 gets to 10% in 1000 steps), so memorizing it at 10x the
# rate is then no evidence against the rate.
SLOW_BUT_LEARNING_FRACTION = 0.25


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
    loop: dict | None = None  # the form its steps ran in (Summary.loops["overfit"])
    outputs: np.ndarray | None = None  # the model's (eval-mode) outputs on the batch at the end
    budget_cut: bool = False  # stopped by its time budget before max_steps, not memorized
    seconds_per_step: float | None = None  # measured, compilation excluded (None: no step ran)


@engine.jit_for_few_runs(static_argnums=0)
def _eval_outputs(graphdef, params, model_state, x):
    """The model's outputs on `x` in the mode `graphdef` was split in."""
    return nnx.merge(graphdef, params, model_state)(x)


def overfit_one_batch(
    task: engine.Task,
    state: engine.TrainState,
    x: np.ndarray,
    y: np.ndarray,
    *,
    max_steps: int,
    loss_fraction: float,
    chunk: int = 50,
    loop: str = "auto",
    max_seconds: float | None = None,
    progress: bool = False,
) -> OverfitResult:
    """Train on one batch until it is memorized (100% accuracy, loss near zero) or max_steps;
    `loop`: the form of the training loop (config.loop, engine.loop_form). `max_seconds`: the
    time budget of its steps (compilation excluded, budget.StepBudget): no chunk starts that
    the measured step time says would end past it. `progress`: a bar."""
    multi_step = engine.make_train_loop(task, form=loop)
    xb, yb = jnp.asarray(x), jnp.asarray(y)
    indices = jnp.asarray(np.tile(np.arange(len(x)), (chunk, 1)))
    state = copy_state(state)
    losses, accuracies = [], []
    passed, steps, cut = False, 0, False
    clock = StepBudget(max_seconds)
    with Progress(max_steps, "overfit one batch", "step", enabled=progress) as bar:
        bar.phase("compiling")
        while steps < max_steps:
            if not clock.fits(chunk):
                cut = True
                break
            t0 = engine.now()
            state, metrics = multi_step(state, xb, yb, indices, watch=bar.watch)
            losses.append(np.asarray(metrics["loss"]))
            accuracies.append(np.asarray(metrics["accuracy"]))
            clock.charge(chunk, engine.now() - t0, multi_step.choice)
            bar.phase()
            bar.advance_to(min(steps + chunk, max_steps), loss=f"{float(losses[-1][-1]):.4f}")
            all_losses = np.concatenate(losses)
            target = loss_fraction * all_losses[0]
            # Memorized: every example right (the task says what that is) and the loss near zero.
            memorized = task.kind.memorized(np.concatenate(accuracies))
            done = np.flatnonzero(memorized & (all_losses <= target))
            if done.size:
                passed, steps = True, int(done[0]) + 1
                break
            if not np.all(np.isfinite(losses[-1])):
                steps = len(all_losses)
                break
            steps += chunk
    loss, acc = np.concatenate(losses), np.concatenate(accuracies)
    outputs = _eval_outputs(task.eval_graphdef, state.params, state.model_state, xb)
    last = min(steps, len(loss)) - 1
    return OverfitResult(
        passed=passed,
        steps=steps if passed else len(loss),
        initial_loss=float(loss[0]),
        final_loss=float(loss[last]),
        final_accuracy=float(acc[last]),
        losses=loss,
        accuracies=acc,
        loop=multi_step.choice.to_json(),
        outputs=np.asarray(outputs, np.float64),
        budget_cut=cut and not passed,
        seconds_per_step=clock.seconds_per_step,
    )


def with_learning_rate(state: engine.TrainState, learning_rate: float) -> engine.TrainState:
    """A copy of `state` whose optimizer uses `learning_rate` (it lives in the optimizer state)."""
    state = copy_state(state)
    hyperparams = dict(state.opt_state.hyperparams)
    hyperparams["learning_rate"] = jnp.asarray(learning_rate, jnp.float32)
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hyperparams))


def slow_overfit_finding(
    slow: OverfitResult, fast: OverfitResult, learning_rate: float, config
) -> Finding:
    """`lr_too_low`: one batch is memorized, but only at 10x the configured learning rate (a
    warning when the configured rate left the batch loss above SLOW_BUT_LEARNING_FRACTION of its
    start, else info: it was learning, only slower)."""
    learning = slow.final_loss < SLOW_BUT_LEARNING_FRACTION * slow.initial_loss
    return Finding(
        id="lr_too_low",
        severity="info" if learning else "warning",
        message=(
            f"one batch is memorized in {fast.steps} steps at lr {10 * learning_rate:g}, but not "
            f"in {slow.steps} steps at the configured {learning_rate:g} (loss "
            f"{slow.initial_loss:.3g} -> {slow.final_loss:.3g}, accuracy {slow.final_accuracy:.0%})"
            + (
                f": below {SLOW_BUT_LEARNING_FRACTION:.0%} of its start, it is learning, only "
                "slower than the budget (normal for a short run at a moderate rate)"
                if learning
                else ""
            )
        ),
        evidence={
            "learning_rate": learning_rate,
            "steps_at_learning_rate": slow.steps,
            "final_loss_at_learning_rate": slow.final_loss,
            "faster_learning_rate": 10 * learning_rate,
            "steps_at_faster_learning_rate": fast.steps,
            "learning_at_learning_rate": learning,
        },
        suggestions=[
            f"raise the learning rate towards {10 * learning_rate:g} "
            f"(--config.optimizer.learning_rate={10 * learning_rate:g}), or find it with "
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
