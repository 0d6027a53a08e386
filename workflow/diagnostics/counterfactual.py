"""Counterfactual confirmation: a finding that blames a knob is tried with the knob changed.

A warning that blames a knob names a change that should help. Before it stands, the change is
tried: a few short trials on the real training data, the configured setup and the changed ones,
trained side by side as one vmapped program (workflow/engine/trials.py) from the same
initialization on the same batches, as many steps as the short run. The knobs and their trials:

* the learning rate (`lr_too_low`, `lr_too_high`): x10 and x100 up (a rate below the usual range
  also at the default 3e-4), or /10 and /100 down;
* the L2 penalty (`loss_plateau` with `config.l2` > 0, whose causes include too much
  regularization): l2 /10, /100 and 0; with AdamW's `optimizer.weight_decay` > 0 (also with
  l2 = 0) the decoupled weight decay /10, /100 and 0 beside them (each trial its own: a runner
  with `weight_decay_per_trial`);
* the initialization scale (`initial_loss_off`, and `exploding_gradients` on finite gradients,
  which blame weights that start too large): every weight of two or more dimensions (kernels,
  embeddings; not biases or norm scales) x0.1 and x0.01 at step 0, which works for any model;
* gradient clipping (`exploding_gradients` on finite gradients, beside the init scale): the
  global gradient norm clipped at the measured step-0 norm /10, /100 and /1000 (each trial its
  own norm: a runner with `clip_per_trial`), what `--config.optimizer.clip_norm` does;
* input normalization (`inputs_not_normalized`): the inputs standardized with the training
  split's per-channel mean and std (what `--config.dataset.normalize=True` does), trained by
  the same compiled program on the standardized copy;
* the dropout rate (`dropout_too_high`): every nnx.Dropout rate above MAX_DROPOUT_RATE lowered
  to 0.5 and to 0.1, in the same program (the layers become engine.trials.TrialDropout, each
  trial with its own keep probability), judged on the eval-mode val loss, measured VAL_POINTS
  times over the run: less dropout lowers the train-mode training loss of any model, so that
  loss would confirm the finding on a model that learns fine;
* the batch size under BatchNorm (`batchnorm_small_batch`): the suggested batch size
  (4 x MIN_BATCHNORM_BATCH) against the configured one, each its own program (another batch
  shape) trained on the same number of examples (at least MIN_TRIAL_STEPS steps of the bigger
  batch), judged on the eval-mode val loss (the running averages): at equal steps a bigger batch
  sees more data and would win on any model.

A change helps when it reaches the configured setup's final training loss (val loss for the
dropout rate) at least `MIN_SPEEDUP` times sooner and ends clearly below it (or the configured
setup diverges and the change does not); a bigger batch helps when its final val loss ends
BATCHNORM_MIN_GAIN below the best the configured batch reached on the way. The finding is then
confirmed and states the measured result ("with lr 0.003 (x10) the loss reaches 1.52 (lr
0.0003's level after 300 steps) in 40 steps, 7.5x sooner, and ends at 0.4"); unconfirmed, it is
lowered to `info` and says what the trials measured instead. A `loss_plateau` is a measured
symptom with several possible causes: the trials judge only its regularization cause, so it
keeps its severity, and the L2 suggestion goes first (confirmed, at the trials' best value) or
last (refuted, with what was measured); an `exploding_gradients` finding's first suggestion is
the change that helped most (the init scale or a clip norm). Either way the trials are recorded
in the finding's evidence under "counterfactual". Findings that are certain by construction (a
NaN, labels out of range, a shape mismatch, a layer dead for every input) blame no knob and run
no trials.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workflow.data.normalization import apply_normalization, compute_normalization
from workflow.diagnostics.checks.layers import MAX_DROPOUT_RATE, MIN_BATCHNORM_BATCH
from workflow.diagnostics.findings import Finding
from workflow.engine.trials import TrialHparams, TrialRunner

# The findings whose learning-rate trials move it which way.
LR_FINDINGS = {"lr_too_low": "raise", "lr_too_high": "lower"}
# A blamed knob's name in the evidence, where it differs (the direction is in the trials).
LR_KNOBS = {"raise_lr": "lr", "lower_lr": "lr"}
# The changed rates tried, as factors of the configured one (decades, the notes' coarse grid).
RAISE_FACTORS = (10.0, 100.0)
LOWER_FACTORS = (0.1, 0.01)
# A rate below this is also tried at the workflow's default Adam rate: ten or a hundred times a
# rate far below the usual range is still far below it, and would refute nothing.
DEFAULT_LEARNING_RATE = 3e-4
# The L2 weights tried, as factors of the configured one (0: the penalty off).
L2_FACTORS = (0.1, 0.01, 0.0)
# AdamW's decoupled weight decays tried, as factors of the configured one (0: off).
WEIGHT_DECAY_FACTORS = (0.1, 0.01, 0.0)
# The initial weights' scales tried: a x10 or x100 init (the zoo's exploding init) comes back to
# the default's scale at one of them.
INIT_SCALES = (0.1, 0.01)
# The clipping norms tried, as factors of the measured step-0 global gradient norm: decades
# below it, down to where every step is clipped to a small fraction of the exploding norm.
CLIP_FACTORS = (0.1, 0.01, 0.001)
# Confirmed: the change reaches the configured setup's final loss 4x sooner (a difference a
# tuned run would not give up), and ends at least 10% below it (not within mini-batch noise).
MIN_SPEEDUP = 4.0
MIN_FINAL_GAIN = 0.1
# The trial curves are cut into this many windows: each window's mean loss averages out
# mini-batch noise while the step at which a level is reached stays within 1/30 of the run.
CURVE_WINDOWS = 30

# The trials share the short run's time budget (debug.train_seconds): all their lanes' steps,
# charged at the short run's measured time per step (an over-estimate: a vmapped lane costs less
# than a run of its own), fit in it, but never fewer than this many steps each (a slow model's
# trials then take longer rather than compare noise).
MIN_TRIAL_STEPS = 60

# The dropout rates tried in place of every rate above MAX_DROPOUT_RATE: the limit itself and
# the common rate (the finding suggests 0.1-0.5).
DROPOUT_RATES = (0.5, 0.1)
# The batch size a BatchNorm finding is tried at: the one it suggests.
BATCHNORM_TRIAL_BATCH = 4 * MIN_BATCHNORM_BATCH
# The val loss is evaluated this many times over a trial: the step at which a lowered dropout
# rate reaches the configured rate's final val loss is known within a tenth of the run, fine
# enough to tell MIN_SPEEDUP.
VAL_POINTS = 10
# Confirmed for BatchNorm: at the same examples seen, the bigger batch's final val loss is at least
# 25% below the best the configured batch reached in its run. The small batch's eval-mode val loss
# jumps by up to +-15% between evaluations of one run (the Flax NNX basics' MLP at batch 2), and
# its best evaluation is its most favourable reading: a gain that large is not that noise.
BATCHNORM_MIN_GAIN = 0.25

SERIOUS = ("error", "warning")
# What each knob's findings are lowered to when the trials refute them (None: kept, the knob's
# suggestion moved last).
LOWERED_TO = {
    "lr": "info",
    "inputs": "info",
    "init": "info",
    "gradients": "info",
    "l2": None,
    "dropout": "info",
    "batch_size": "info",
}
# The knobs whose changes are programs of their own (a static attribute of the model, the batch
# shape), judged on the eval-mode val loss: less dropout or a bigger batch always lowers the
# train-mode training loss the other knobs are judged on, on any model.
VAL_KNOBS = ("dropout", "batch_size")


@dataclasses.dataclass(frozen=True)
class Change:
    """One trial's setup: the knob changed and how (the configured setup: knob "base")."""

    knob: str  # "base", "lr", "l2", "weight_decay", "init", "clip", "inputs"
    label: str  # what the message calls it, e.g. "lr 0.003 (x10)", "the inputs standardized"
    learning_rate: float
    l2: float
    init_scale: float = 1.0
    standardized: bool = False
    clip_norm: float | None = None  # the global-norm clip (0: off; None: as configured)
    weight_decay: float | None = None  # AdamW's decoupled decay (None: as configured)
    dropout_rate: float | None = None  # every rate above MAX_DROPOUT_RATE (None: as built)
    batch_size: int | None = None  # None: as configured
    # The config values that apply it ({}: a code change, e.g. the init scale).
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def flags(self) -> str:
        """The command-line flags that apply it ('' when none does)."""
        return " ".join(f"--config.{k}={v}" for k, v in self.overrides.items())


@dataclasses.dataclass(frozen=True)
class Trial:
    """One change's short trial: its final loss and verdict against the configured setup."""

    change: Change
    # Mean training loss of the last window (inf when it diverged); for VAL_KNOBS the final
    # eval-mode val loss.
    final_loss: float
    diverged: bool
    steps_to_base_final: int | None  # first window end at or below the configured final loss
    # VAL_KNOBS: the lowest val loss of the trial's evaluations, and the examples it trained on.
    best_loss: float | None = None
    examples: int | None = None
    # The same trial judged on the eval-mode val loss (run_trials with dropout changes).
    on_val: "Trial | None" = None

    def to_json(self) -> dict:
        """The evidence form."""
        c = self.change
        return {
            "change": c.label,
            "knob": c.knob,
            "learning_rate": _r(c.learning_rate),
            "l2": _r(c.l2),
            "init_scale": _r(c.init_scale),
            "clip_norm": None if c.clip_norm is None else _r(c.clip_norm),
            "weight_decay": None if c.weight_decay is None else _r(c.weight_decay),
            "standardized_inputs": c.standardized,
            "dropout_rate": None if c.dropout_rate is None else _r(c.dropout_rate),
            "batch_size": c.batch_size,
            "final_loss": _r(self.final_loss),
            "diverged": self.diverged,
            "steps_to_base_final": self.steps_to_base_final,
            "best_loss": None if self.best_loss is None else _r(self.best_loss),
            "examples": self.examples,
        }


def _r(value: float) -> float | None:
    """A JSON-friendly float with 4 significant digits (None for NaN/inf)."""
    value = float(value)
    return float(f"{value:.4g}") if math.isfinite(value) else None


def candidate_rates(learning_rate: float, direction: str) -> list[float]:
    """The learning rates a `direction` ("raise" or "lower") finding is tried at."""
    factors = RAISE_FACTORS if direction == "raise" else LOWER_FACTORS
    rates = [learning_rate * f for f in factors]
    if direction == "raise" and rates[-1] < DEFAULT_LEARNING_RATE:
        rates.append(DEFAULT_LEARNING_RATE)
    return rates


def base_change(config) -> Change:
    """The configured setup, as the trial every change is compared with."""
    lr, l2 = float(config.optimizer.learning_rate), float(config.l2)
    return Change("base", f"lr {lr:g}", lr, l2)


def blamed_knob(finding: Finding, config) -> str | None:
    """The knob a warning or error blames ("raise_lr", "lower_lr", "l2", "init", "gradients":
    the init scale and clipping, "inputs", "dropout", "batch_size"), or None: an info, a
    finding certain by construction, or a knob the config does not set."""
    if finding.severity not in SERIOUS:
        return None
    if finding.id in LR_FINDINGS:
        return f"{LR_FINDINGS[finding.id]}_lr"
    if finding.id == "inputs_not_normalized":
        return "inputs"
    if finding.id == "loss_plateau" and (float(config.l2) > 0 or adamw_decay(config) > 0):
        return "l2"
    if finding.id == "initial_loss_off":
        return "init"
    if finding.id == "dropout_too_high":
        return "dropout"
    if finding.id == "batchnorm_small_batch":
        return "batch_size"
    if finding.id == "exploding_gradients" and not finding.evidence.get("nonfinite_params"):
        return "gradients"  # non-finite gradients are a NaN: certain, whatever the init
    return None


def adamw_decay(config) -> float:
    """The configured AdamW decoupled weight decay (0 for any other optimizer)."""
    opt = config.optimizer
    return float(opt.get("weight_decay", 0.0)) if opt.name == "adamw" else 0.0


def clip_norms(grad_norm: float) -> list[float]:
    """The clipping norms a step-0 global gradient norm of `grad_norm` is tried with."""
    return [float(f"{grad_norm * f:.2g}") for f in CLIP_FACTORS]


def knob_changes(knob: str, config, grad_norm: float | None = None) -> list[Change]:
    """The changed setups a finding that blames `knob` is tried with (`grad_norm`: the
    finding's measured step-0 gradient norm, which sets the clipping norms tried)."""
    base = base_change(config)
    lr, l2 = base.learning_rate, base.l2
    if knob in ("raise_lr", "lower_lr"):
        return [
            Change(
                "lr",
                f"lr {rate:g} (x{rate / lr:g})",
                rate,
                l2,
                overrides={"optimizer.learning_rate": float(f"{rate:.4g}")},
            )
            for rate in candidate_rates(lr, knob.removesuffix("_lr"))
        ]
    if knob == "l2":
        decay = adamw_decay(config)
        decays = [
            Change(
                "weight_decay",
                f"weight_decay {decay * f:g} (/{1 / f:g})" if f else "weight_decay 0 (off)",
                lr,
                l2,
                weight_decay=decay * f,
                overrides={"optimizer.weight_decay": float(f"{decay * f:.4g}")},
            )
            for f in WEIGHT_DECAY_FACTORS
            if decay > 0
        ]
        if l2 <= 0:
            return decays
        return [
            Change(
                "l2",
                f"l2 {l2 * f:g} (/{1 / f:g})" if f else "l2 0 (the penalty off)",
                lr,
                l2 * f,
                overrides={"l2": float(f"{l2 * f:.4g}")},
            )
            for f in L2_FACTORS
        ] + decays
    if knob == "init":
        return [
            Change("init", f"the initial weights x{s:g}", lr, l2, init_scale=s) for s in INIT_SCALES
        ]
    if knob == "gradients":
        if not grad_norm or not math.isfinite(grad_norm):
            return knob_changes("init", config)
        clipped = [
            Change(
                "clip",
                f"the gradients clipped at norm {c:g}",
                lr,
                l2,
                clip_norm=c,
                overrides={"optimizer.clip_norm": c},
            )
            for c in clip_norms(grad_norm)
        ]
        return [*knob_changes("init", config), *clipped]
    if knob == "inputs":
        return [
            Change(
                "inputs",
                "the inputs standardized (the training split's per-channel mean and std)",
                lr,
                l2,
                standardized=True,
                overrides={"dataset.normalize": True},
            )
        ]
    if knob == "dropout":
        # A model with a dropout_rate option (models/) takes it as a flag; a user's own
        # nnx.Dropout(rate) is a code change.
        option = "dropout_rate" in config.model
        return [
            Change(
                "dropout",
                f"dropout {rate:g}",
                lr,
                l2,
                dropout_rate=rate,
                overrides={"model.dropout_rate": rate} if option else {},
            )
            for rate in DROPOUT_RATES
        ]
    if knob == "batch_size":
        return [
            Change(
                "batch_size",
                f"batch size {BATCHNORM_TRIAL_BATCH}",
                lr,
                l2,
                batch_size=BATCHNORM_TRIAL_BATCH,
                overrides={"batch_size": BATCHNORM_TRIAL_BATCH},
            )
        ]
    raise ValueError(f"unknown knob {knob!r}")


def standardized(dataset):
    """A copy of `dataset` with every split standardized by the training split's statistics."""
    stats = compute_normalization(np.asarray(dataset.x_train))
    return dataclasses.replace(
        dataset,
        x_train=apply_normalization(dataset.x_train, stats),
        x_val=apply_normalization(dataset.x_val, stats),
        x_test=apply_normalization(dataset.x_test, stats),
        normalization=stats,
    )


def scaled_weights(states, scales: np.ndarray):
    """The stacked trial states with each trial's weights (parameters of 2+ dimensions beyond
    the trial axis) times its entry of `scales`; biases and norm scales as they are."""

    def scale(leaf):
        if leaf.ndim < 3:
            return leaf
        return leaf * jnp.asarray(scales, leaf.dtype).reshape((-1,) + (1,) * (leaf.ndim - 1))

    return dataclasses.replace(states, params=jax.tree.map(scale, states.params))


def _train(
    runner: TrialRunner, changes: list[Change], dataset, steps: int, seed: int, val_every: int = 0
):
    """One program's trials of `changes` on `dataset`: (window curves, diverged, curve steps,
    steps, seconds, val curves (trials, points) and their steps: measured every `val_every`
    steps, 0: none)."""
    hparams = TrialHparams(
        learning_rate=[c.learning_rate for c in changes],
        l2=[c.l2 for c in changes],
        seed=[seed] * len(changes),
        clip_norm=(
            [
                float(runner.config.optimizer.clip_norm) if c.clip_norm is None else c.clip_norm
                for c in changes
            ]
            if runner.clip_per_trial
            else None
        ),
        weight_decay=(
            [
                adamw_decay(runner.config) if c.weight_decay is None else c.weight_decay
                for c in changes
            ]
            if runner.weight_decay_per_trial
            else None
        ),
        dropout_rate=(
            [1.0 if c.dropout_rate is None else c.dropout_rate for c in changes]
            if runner.dropout_above is not None
            else None
        ),
    )
    initial = None
    if any(c.init_scale != 1.0 for c in changes):
        states = runner.init(hparams)
        lanes = jax.tree.leaves(states.step)[0].shape[0]
        scales = np.ones(lanes, np.float32)
        scales[: len(changes)] = [c.init_scale for c in changes]
        scales[len(changes) :] = changes[-1].init_scale  # padding lanes copy the last trial
        initial = scaled_weights(states, scales)
    _, result = runner.run(hparams, dataset, steps, initial_states=initial, val_every=val_every)
    curves = np.where(np.isfinite(result.train_loss_curve), result.train_loss_curve, np.inf)
    diverged = result.diverged_at >= 0
    val = np.where(np.isfinite(result.val_loss_curve), result.val_loss_curve, np.inf)
    if val.size:
        val[diverged] = np.inf
    return (
        curves,
        diverged,
        result.curve_steps,
        int(result.steps),
        result.seconds,
        val,
        result.val_curve_steps,
    )


def _judged_curves(
    changes: list[Change],
    curves: np.ndarray,
    diverged: np.ndarray,
    curve_steps: np.ndarray,
    examples: list[int] | None = None,
) -> list[Trial]:
    """The trials of `changes` (the configured setup's first) from their loss curves (trials,
    points), each judged against the configured setup's final loss."""
    base_final = math.inf if diverged[0] else float(curves[0, -1])
    trials = []
    for i, change in enumerate(changes):
        reached = np.flatnonzero(curves[i] <= base_final)
        trials.append(
            Trial(
                change=change,
                final_loss=math.inf if diverged[i] else float(curves[i, -1]),
                diverged=bool(diverged[i]),
                steps_to_base_final=int(curve_steps[reached[0]]) if reached.size else None,
                best_loss=None if examples is None else float(np.min(curves[i])),
                examples=None if examples is None else examples[i],
            )
        )
    return trials


def run_trials(
    setup, changes: list[Change], steps: int, loop: str | None = None
) -> tuple[list[Trial], int, float]:
    """Train the configured setup and every change for `steps` steps side by side: (trials, the
    first being the configured setup's, steps, seconds). The changes with standardized inputs
    run in a second call of the same runner on the standardized copy of the data. `loop`: the
    loop form to run in (the short run's measured one: not measured again), else config.loop.
    With dropout changes, the dropout layers above MAX_DROPOUT_RATE drop at each trial's own
    rate, and each trial's `on_val` is it judged on the eval-mode val loss, measured VAL_POINTS
    times."""
    config = setup.config.copy_and_resolve_references()
    config.log_every = max(1, steps // CURVE_WINDOWS)
    if loop is not None:
        config.loop = loop
    base = base_change(config)
    everything = [base, *changes]
    on_val = any(c.dropout_rate is not None for c in everything)
    val_every = -(-steps // VAL_POINTS) if on_val else 0
    if on_val:
        config.steps_per_call = val_every  # one chunk length: one compiled program of steps
    runner = TrialRunner(
        config,
        setup.dataset.input_shape,
        setup.dataset.num_classes,
        task_kind=setup.dataset.task,
        # Clipping trials each clip at their own norm (an injected hyperparameter), in the one
        # program with the others; so do dropout trials at their own rate.
        clip_per_trial=any(c.clip_norm is not None for c in everything),
        weight_decay_per_trial=any(c.weight_decay is not None for c in everything),
        dropout_above=MAX_DROPOUT_RATE if on_val else None,
    )
    raw = [i for i, c in enumerate(everything) if not c.standardized]
    on_standardized = [i for i, c in enumerate(everything) if c.standardized]
    seed = int(config.seed)
    curves, diverged, curve_steps, run_steps, seconds, val, val_steps = _train(
        runner, [everything[i] for i in raw], setup.dataset, steps, seed, val_every
    )
    if on_standardized:
        more = _train(
            runner,
            [everything[i] for i in on_standardized],
            standardized(setup.dataset),
            steps,
            seed,
            val_every,
        )
        curves = np.concatenate([curves, more[0]])
        diverged = np.concatenate([diverged, more[1]])
        val = np.concatenate([val, more[5]]) if on_val else val
        seconds += more[4]
    order = raw + on_standardized
    ordered = [everything[i] for i in order]
    trials = _judged_curves(ordered, curves, diverged, curve_steps)
    if on_val:
        examples = [run_steps * int(config.batch_size)] * len(ordered)
        val_trials = _judged_curves(ordered, val, diverged, val_steps, examples)
        trials = [dataclasses.replace(t, on_val=v) for t, v in zip(trials, val_trials, strict=True)]
    by_change = dict(zip(order, trials, strict=True))
    return [by_change[i] for i in range(len(everything))], run_steps, seconds


def _val_run(setup, change: Change, steps: int, loop: str | None):
    """One trial of `change` (at its batch size) as a program of its own, `steps` steps
    with the eval-mode val loss measured VAL_POINTS times: (val curve, its steps, diverged,
    seconds)."""
    config = setup.config.copy_and_resolve_references()
    config.log_every = max(1, steps // CURVE_WINDOWS)
    val_every = -(-steps // VAL_POINTS)
    config.steps_per_call = val_every  # one chunk length: one compiled program of steps
    if loop is not None:
        config.loop = loop
    if change.batch_size is not None:
        config.batch_size = change.batch_size
    runner = TrialRunner(
        config, setup.dataset.input_shape, setup.dataset.num_classes, task_kind=setup.dataset.task
    )
    _, diverged, _, _, seconds, val, val_steps = _train(
        runner, [change], setup.dataset, steps, int(config.seed), val_every
    )
    return val[0], val_steps, bool(diverged[0]), seconds


def dropout_label(finding: Finding) -> str:
    """What a `dropout_too_high` message calls the configured setup: "dropout 0.9"."""
    return f"dropout {max(layer['rate'] for layer in finding.evidence['layers']):g}"


def run_batch_trials(
    setup, changes: list[Change], steps: int, loop: str | None = None
) -> tuple[list[Trial], int, float]:
    """The configured batch size and every bigger one of `changes`, each a program of its own,
    on the same number of examples (at least MIN_TRIAL_STEPS steps of a bigger batch; a bigger
    batch sees more of the data per step, which lowers the loss of any model), judged on the
    eval-mode val loss: (trials, the configured batch's first; its steps; seconds)."""
    batch = int(setup.config.batch_size)
    change_steps = {c: max(MIN_TRIAL_STEPS, steps * batch // c.batch_size) for c in changes}
    steps = max(-(-n * c.batch_size // batch) for c, n in change_steps.items())
    base = dataclasses.replace(base_change(setup.config), label=f"batch size {batch}")
    runs = [(base, steps, batch)] + [(c, change_steps[c], c.batch_size) for c in changes]
    trials, seconds = [], 0.0
    for change, run_steps, run_batch in runs:
        curve, _, diverged, more = _val_run(setup, change, run_steps, loop)
        seconds += more
        final = math.inf if diverged else float(curve[-1])
        trials.append(
            Trial(
                change,
                final,
                diverged,
                steps_to_base_final=None,  # judged at the end, on equal examples
                best_loss=math.inf if diverged else float(np.min(curve)),
                examples=run_steps * run_batch,
            )
        )
    return trials, steps, seconds


def best_change(trials: list[Trial], steps: int) -> tuple[Trial | None, float]:
    """The change that helps most (lowest final loss) and its speedup (0: it does not)."""
    base, changed = trials[0], [t for t in trials[1:] if not t.diverged]
    if not changed:
        return None, 0.0
    best = min(changed, key=lambda t: t.final_loss)
    if best.steps_to_base_final is None:
        return best, 0.0
    return best, steps / best.steps_to_base_final if math.isfinite(base.final_loss) else math.inf


def confirmed(trials: list[Trial], steps: int) -> bool:
    """Whether a change reaches the configured setup's final loss MIN_SPEEDUP times sooner and
    ends MIN_FINAL_GAIN below it (or the configured setup diverged and the change did not); a
    bigger batch: ends BATCHNORM_MIN_GAIN below the configured batch's best val loss."""
    base = trials[0]
    best, speedup = best_change(trials, steps)
    if best is None:
        return False
    if not math.isfinite(base.final_loss):
        return True
    if best.change.knob == "batch_size":
        return best.final_loss <= (1 - BATCHNORM_MIN_GAIN) * base.best_loss
    return speedup >= MIN_SPEEDUP and best.final_loss <= (1 - MIN_FINAL_GAIN) * base.final_loss


# What the message calls the configured setup, by the knob its trials change.
BASE_LABELS = {
    "l2": "l2 {l2:g}",
    "weight_decay": "the configured weight decay",
    "init": "the weights as built",
    "inputs": "the raw inputs",
}


def _base_label(trials: list[Trial]) -> str:
    """The configured setup's name in a message about `trials`' knob."""
    base = trials[0].change
    knobs = {t.change.knob for t in trials[1:]}
    if len(knobs) > 1:  # e.g. the init scale and clipping, both from the configured setup
        return "the configured setup"
    label = BASE_LABELS.get(trials[1].change.knob) if len(trials) > 1 else None
    return label.format(l2=base.l2) if label else base.label


def _possessive(label: str) -> str:
    """ "lr 0.003's", "the raw inputs'"."""
    return f"{label}'" if label.endswith("s") else f"{label}'s"


def _outcome(trials: list[Trial], steps: int) -> str:
    """What the trials measured, as one clause for the finding's message."""
    base = dataclasses.replace(
        trials[0], change=dataclasses.replace(trials[0].change, label=_base_label(trials))
    )
    best, speedup = best_change(trials, steps)
    loss = "the val loss (eval mode)" if trials[-1].change.knob in VAL_KNOBS else "the loss"
    if best is None:
        changes = ", ".join(t.change.label for t in trials[1:])
        return f"with {changes} {loss} diverges within {steps} steps"
    at = f"with {best.change.label}"
    if not math.isfinite(base.final_loss):
        return (
            f"{at} {loss} stays finite and ends at {best.final_loss:.3g} in {steps} steps, "
            f"where {base.change.label} diverges"
        )
    if best.change.knob == "batch_size":
        gain = 1 - best.final_loss / base.best_loss
        against = (
            f"{gain:.0%} below the best, {base.best_loss:.3g}"
            if gain > 0
            else f"no lower than the best, {base.best_loss:.3g}"
        )
        return (
            f"{at} {loss} after {best.examples} examples is {best.final_loss:.3g}, {against}, "
            f"that {base.change.label} reached on the way (it ended at {base.final_loss:.3g})"
        )
    if best.steps_to_base_final is None:
        return (
            f"{at} {loss} ends at {best.final_loss:.3g} in {steps} steps, no lower than "
            f"{base.final_loss:.3g} at {base.change.label}"
        )
    return (
        f"{at} {loss} reaches {base.final_loss:.3g} ({_possessive(base.change.label)} "
        f"level after {steps} steps) in {best.steps_to_base_final} steps, {speedup:.1f}x "
        f"sooner, and ends at {best.final_loss:.3g}"
    )


def _measured_suggestion(best: Trial, speedup: float) -> str | None:
    """The confirmed change as the finding's first suggestion (None: its own first says it)."""
    c = best.change
    if c.knob == "lr":
        return f"use lr {c.learning_rate:g}, the trials' best ({c.flags()})"
    if c.knob == "l2":
        return f"use l2 {c.l2:g}, the trials' best ({c.flags()})"
    if c.knob == "weight_decay":
        return f"use weight_decay {c.weight_decay:g}, the trials' best ({c.flags()})"
    if c.knob == "init":
        return (
            f"the weights start too large: x{c.init_scale:g} at step 0 trained {speedup:.1f}x "
            "faster in the trials; use the default (LeCun/He) init (or scale the init down by "
            f"{c.init_scale:g} in the model)"
        )
    if c.knob == "clip":
        return (
            f"clip gradients at norm {c.clip_norm:g}, the trials' best: {speedup:.1f}x faster "
            f"({c.flags()})"
        )
    if c.knob == "dropout":
        where = f"({c.flags()})" if c.flags() else f"in the model (nnx.Dropout({c.dropout_rate:g}))"
        return (
            f"lower every dropout rate above {MAX_DROPOUT_RATE:g} to {c.dropout_rate:g}, the "
            f"trials' best {where}"
        )
    if c.knob == "batch_size":
        return f"use batch size {c.batch_size}, as tried ({c.flags()})"
    return None


def judged(finding: Finding, trials: list[Trial], steps: int, knob: str | None = None) -> Finding:
    """`finding` with the trials' verdict on `knob` (None: the first change's): kept and stated
    when confirmed, the change that helped most its first suggestion; else lowered to info (a
    plateau: kept, its L2 suggestion moved last)."""
    ok = confirmed(trials, steps)
    outcome = _outcome(trials, steps)
    best, speedup = best_change(trials, steps)
    kind = LR_KNOBS.get(knob, knob) if knob else trials[1].change.knob
    measured = {
        "knob": kind,
        "confirmed": ok,
        "steps": steps,
        # What the trials' losses are: the train-mode training loss, or the eval-mode val loss.
        "loss": "val" if kind in VAL_KNOBS else "train",
        "min_speedup": MIN_SPEEDUP,
        "speedup": _r(speedup),
        "trials": [t.to_json() for t in trials],
    }
    if kind == "batch_size":
        measured.update(min_speedup=None, speedup=None, min_gain=BATCHNORM_MIN_GAIN)
    evidence = {**finding.evidence, "counterfactual": measured}
    if ok:
        first = _measured_suggestion(best, speedup)
        return dataclasses.replace(
            finding,
            message=f"{finding.message}; confirmed: {outcome}",
            evidence=evidence,
            suggestions=[first, *finding.suggestions] if first else list(finding.suggestions),
        )
    lowered = LOWERED_TO[kind]
    if lowered is None:
        flags = ("--config.l2=", "--config.optimizer.weight_decay=")
        knob_flag = [s for s in finding.suggestions if any(f in s for f in flags)]
        kept = [s for s in finding.suggestions if s not in knob_flag]
        moved = [f"{s} (not confirmed: {outcome})" for s in knob_flag]
        decays = any(t.change.knob == "weight_decay" for t in trials)
        cause = "the regularization (L2, weight decay)" if decays else "the L2 penalty"
        return dataclasses.replace(
            finding,
            message=f"{finding.message}; not {cause}: {outcome}",
            evidence=evidence,
            suggestions=kept + moved,
        )
    return dataclasses.replace(
        finding,
        severity=lowered,
        message=f"{finding.message}; not confirmed: {outcome}",
        evidence=evidence,
    )


def trial_steps(
    steps: int, lanes: int, seconds_per_step: float | None, budget_seconds: float | None
) -> int:
    """The steps each of `lanes` trials runs: `steps`, or as many as fit in `budget_seconds` at
    `seconds_per_step` a lane (at least MIN_TRIAL_STEPS; no estimate or budget: `steps`)."""
    if not seconds_per_step or budget_seconds is None:
        return steps
    fit = int(budget_seconds / (lanes * seconds_per_step))
    return min(steps, max(fit, MIN_TRIAL_STEPS))


def confirm_findings(
    setup,
    findings: list[Finding],
    steps: int,
    loop: str | None = None,
    seconds_per_step: float | None = None,
) -> list[Finding]:
    """`findings` with every warning/error that blames a knob tried by counterfactual trials
    (one program for all of them, a second call of it for standardized inputs) of `steps` steps
    in the loop form `loop` (None: config.loop); the others unchanged. With the short run's
    `seconds_per_step`, the trials' steps fit in debug.train_seconds (trial_steps). Each tried
    finding's evidence records the trials and their seconds."""
    blamed = {
        i: knob
        for i, f in enumerate(findings)
        if (knob := blamed_knob(f, setup.config)) is not None
    }
    if not blamed or steps <= 0:
        return findings
    out = list(findings)
    for i, knob in blamed.items():
        if knob == "batch_size":  # another batch shape: programs of their own
            out[i] = confirm_batch_size(setup, findings[i], steps, loop, seconds_per_step)
    blamed = {i: knob for i, knob in blamed.items() if knob != "batch_size"}
    if not blamed:
        return out
    knobs = sorted(set(blamed.values()))
    grad_norms = {knob: findings[i].evidence.get("global_grad_norm") for i, knob in blamed.items()}
    changes = {knob: knob_changes(knob, setup.config, grad_norms[knob]) for knob in knobs}
    # A change two knobs share (the init scales of initial_loss_off and exploding_gradients)
    # trains once.
    unique = list(dict.fromkeys(c for k in knobs for c in changes[k]))
    steps = trial_steps(steps, 1 + len(unique), seconds_per_step, setup.config.debug.train_seconds)
    trials, run_steps, seconds = run_trials(setup, unique, steps, loop)
    by_knob = {
        knob: [trials[0], *(trials[1 + unique.index(c)] for c in changes[knob])] for knob in knobs
    }
    for i, knob in blamed.items():
        judged_on = by_knob[knob]
        if knob == "dropout":
            base = judged_on[0].on_val
            label = dropout_label(findings[i])
            base = dataclasses.replace(base, change=dataclasses.replace(base.change, label=label))
            judged_on = [base, *(t.on_val for t in judged_on[1:])]
        out[i] = judged(findings[i], judged_on, run_steps, knob)
        out[i].evidence["counterfactual"]["seconds"] = _r(seconds)
    return out


def confirm_batch_size(
    setup,
    finding: Finding,
    steps: int,
    loop: str | None = None,
    seconds_per_step: float | None = None,
) -> Finding:
    """`finding` (`batchnorm_small_batch`) judged by its trials (run_batch_trials) on the
    examples of `steps` steps, or of as many as fit in debug.train_seconds (trial_steps)."""
    changes = knob_changes("batch_size", setup.config)
    steps = trial_steps(steps, 1 + len(changes), seconds_per_step, setup.config.debug.train_seconds)
    trials, run_steps, seconds = run_batch_trials(setup, changes, steps, loop)
    judged_finding = judged(finding, trials, run_steps, "batch_size")
    judged_finding.evidence["counterfactual"]["seconds"] = _r(seconds)
    return judged_finding
