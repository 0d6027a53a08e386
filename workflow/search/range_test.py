"""The learning-rate range test: find the learning rates that make the loss go down.

The sweep (Smith, "Cyclical Learning Rates for Training Neural Networks", 2015; fastai and
PyTorch Lightning's `lr_find`) trains from the initial state with a learning rate that grows
exponentially, one step per rate, and reads the training loss against log(lr): flat where the
rate is too small to move the parameters, falling where it trains, lowest near the edge of
stability, then blowing up.

Reading that curve is the hard part, because each point is one noisy mini-batch loss. Lightning
suggests the steepest point of a debiased EMA (beta 0.98), which lags the curve by ~50 steps and
takes the argmin of a differentiated noisy signal, so one lucky batch wins: on curves with 5-20%
noise its pick falls outside the true descent in 30-70% of cases (more the more steps), mostly in
the flat start (tests/test_lr_range.py). Here instead:

* Smoothing (`_smooth`): log(loss), as mini-batch noise is multiplicative; a 7-point running
  median removes spikes (up to 3 bad batches in a row) and leaves monotone stretches where they
  are; a centered local-linear Gaussian smoother (sigma 0.1 decade) averages the rest. Centered
  means no lag; local-linear means no bias on slopes, so the blow-up is seen where it happens.
  The per-step noise is the MAD of step-to-step differences (so it assumes noise independent
  from step to step, as mini-batch sampling gives); how much of it survives smoothing is measured
  by putting fixed-seed Gaussian noise through the same smoother.
* Divergence: the first point whose smoothed loss exceeds `divergence_factor` x its running best
  (best + (factor - 1) |best| for a loss that reaches <= 0), or the first NaN/inf, whichever comes
  first; the sweep stops there.
* Band (where the loss goes down): levels, not derivatives. With z0 the starting level (median of
  the smoothed loss over the first quarter decade), zmin the smoothed minimum and drop = z0 - zmin
  (log loss), the band runs from just after the smoothed loss is *last* above z0 - d to where it
  *first* comes within d of zmin, d = max(10% of the drop, 3 noise sigmas). "Last above" ignores
  noise dips in the flat start; "first within d" ignores where in a flat or noisy valley the argmin
  lands, and keeps the band's top short of the minimum. A drop under 6 sigmas of its own noise
  (calibrated on flat noisy curves, where the largest of 10,000 was 5.9), or under 3%, is no
  descent. The band is flagged open at the bottom when the loss already fell measurably across
  the start window (it then starts at the first lr), and open at the top when there was no
  blow-up and the loss still fell measurably across the last window.
* Suggestion: max(band top / 10, geometric middle of the band). One decade below the end of the
  descent is fastai's "minimum / 10", taken from the band's top, which sits a little before the
  minimum, so it is slightly more conservative; a band narrower than two decades gets its
  geometric middle instead, so the suggestion is always at least half the band (in log lr) from
  either edge: away from the flat start, where training crawls, and from the minimum, which is
  already at the edge of instability.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from workflow import data, engine, files
from workflow.diagnostics.findings import Finding
from workflow.engine.progress import Progress
from workflow.errors import UsageError
from workflow.reporting import plots

# Spikes of up to 3 consecutive bad batches are removed by a 7-point median.
MEDIAN_WINDOW = 7
# Gaussian sigma of the local-linear smoother, in decades of lr; at least this many points, so a
# short sweep (100 steps over 8 decades = 12 points a decade) is still averaged.
SMOOTH_DECADES = 0.1
MIN_SMOOTH_POINTS = 1.5
# The starting level is the median smoothed loss over the first quarter decade (at least 9
# points); a minimum within the first 2 x 3 points leaves no start to measure a descent from.
START_DECADES = 0.25
START_POINTS = 9
MIN_START_POINTS = 3
# Band edges: 10% of the total drop from the start level and from the minimum...
BAND_FRACTION = 0.1
# ...and never closer than 3 noise sigmas to the level they are measured from.
NOISE_SIGMAS = 3.0
# A drop smaller than this many sigmas of its own noise (or MIN_DROP relative) is no descent.
MEASURABLE_SIGMAS = 6.0
MIN_DROP = 0.03
# Noise draws that measure the smoother's noise gain (its standard deviation to ~9%).
GAIN_DRAWS = 64
# The suggestion lies this many decades below the band's top when the band is wide enough.
SUGGEST_DECADES_BELOW_TOP = 1.0
# A configured lr this far below the band (a factor) is reported as too low; 10x as a warning.
LOW_FACTOR_INFO = 3.0
LOW_FACTOR_WARNING = 10.0


@dataclasses.dataclass
class RangeTest:
    """The result of a learning-rate range test (one sweep, or `repeats` averaged)."""

    learning_rates: np.ndarray  # one per step run
    losses: np.ndarray  # raw training loss per step, averaged over repeats
    smoothed: np.ndarray  # smoothed loss (NaN from the first non-finite loss on)
    stop_index: int  # where the sweep diverged, or len - 1
    best_index: int  # the smoothed minimum (before the stop)
    suggested_lr: float | None  # None when the loss never went down
    band: tuple[float, float] | None  # [lr where the loss starts falling, where it bottoms out]
    diverged: bool
    status: str = "ok"  # "ok" | "no_descent" (the loss never went down) | "too_few_points"
    suggested_index: int | None = None  # the step whose lr is nearest the suggestion
    band_indices: tuple[int, int] | None = None
    band_open_bottom: bool = False  # the loss was already falling at the smallest lr
    band_open_top: bool = False  # the loss was still falling at the largest lr run
    divergence_reason: str | None = None  # "loss" (factor x best) | "nonfinite" | None
    divergence_factor: float = 4.0
    start_loss: float = math.nan  # smoothed level at the start of the sweep
    min_loss: float = math.nan  # smoothed minimum
    noise: float = math.nan  # relative noise of the smoothed loss (1 sigma, log units)
    significance: float = math.nan  # the drop from start to minimum in noise sigmas
    num_steps: int = 0  # steps planned (len(learning_rates) when the sweep was not stopped)
    repeats: int = 1
    wall_seconds: float = 0.0
    compile_seconds: float = 0.0
    loop: dict | None = None  # the form the sweep's steps ran in (Summary.loops["range_test"])

    @property
    def found(self) -> bool:
        """Whether the loss went down measurably somewhere (a band and a suggestion exist)."""
        return self.suggested_lr is not None

    @property
    def stop_lr(self) -> float:
        """The learning rate at which the sweep stopped (or its last)."""
        return float(self.learning_rates[self.stop_index])

    @property
    def best_lr(self) -> float:
        """The learning rate at the smoothed minimum."""
        return float(self.learning_rates[self.best_index])

    def to_json(self, include_curve: bool = False) -> dict[str, Any]:
        """The summary.json form: scalars, and the curve itself only when asked."""
        out = {
            "status": self.status,
            "suggested_lr": self.suggested_lr,
            "band": list(self.band) if self.band else None,
            "band_open_bottom": self.band_open_bottom,
            "band_open_top": self.band_open_top,
            "diverged": self.diverged,
            "divergence_reason": self.divergence_reason,
            "divergence_factor": self.divergence_factor,
            "stop_index": self.stop_index,
            "stop_lr": self.stop_lr,
            "best_index": self.best_index,
            "best_lr": self.best_lr,
            "start_loss": files.finite_or_none(self.start_loss),
            "min_loss": files.finite_or_none(self.min_loss),
            "noise": files.finite_or_none(self.noise),
            "significance": files.finite_or_none(self.significance),
            "min_lr": float(self.learning_rates[0]),
            "max_lr_run": float(self.learning_rates[-1]),
            "steps_run": len(self.learning_rates),
            "num_steps": self.num_steps,
            "repeats": self.repeats,
            "wall_seconds": self.wall_seconds,
            "compile_seconds": self.compile_seconds,
        }
        if include_curve:
            out["learning_rates"] = [float(v) for v in self.learning_rates]
            out["losses"] = [files.finite_or_none(v) for v in self.losses]
            out["smoothed"] = [files.finite_or_none(v) for v in self.smoothed]
        return out


# ----------------------------------------------------------------------------- smoothing


def _running_median(z: np.ndarray, window: int) -> np.ndarray:
    """Running median over `window` points along the last axis.

    Centered in the interior. At the start the window is shifted inward (full size): the curve
    is flat there, and a cluster of bad batches must not set the starting level. At the end it
    shrinks symmetrically to no fewer than 3 points: the curve is often blowing up there, and a
    shifted window would lag the blow-up by window // 2 points.
    """
    n, k = z.shape[-1], window // 2
    if n < window:
        return np.broadcast_to(np.median(z, axis=-1, keepdims=True), z.shape).copy()
    medians = np.median(np.lib.stride_tricks.sliding_window_view(z, window, axis=-1), axis=-1)
    tail = [np.median(z[..., min(2 * i - n + 1, n - 3) :], -1) for i in range(n - k, n)]
    head = np.repeat(medians[..., :1], k, -1)
    return np.concatenate([head, medians, np.stack(tail, -1)], axis=-1)


def _local_linear_weights(x: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """(indices, weights), each (n, window): a Gaussian local-linear fit at every x is
    `(z[..., indices] * weights).sum(-1)`. Local-linear, not a plain kernel average, so that
    slopes (the descent, the blow-up) are followed without bias, also at the ends."""
    n = len(x)
    spacing = float(np.median(np.diff(x))) if n > 1 else 1.0
    k = min(max(1, int(math.ceil(3.0 * sigma / max(spacing, 1e-12)))), max(n - 1, 0))
    idx = np.arange(n)[:, None] + np.arange(-k, k + 1)[None, :]
    valid = (idx >= 0) & (idx < n)
    idx = np.clip(idx, 0, n - 1)
    d = np.where(valid, x[idx] - x[:, None], 0.0)
    w = np.where(valid & (np.abs(d) <= 3.0 * sigma), np.exp(-0.5 * (d / sigma) ** 2), 0.0)
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    det = s0 * s2 - s1 * s1
    # A window of one point (or all at one x) has no slope to fit: fall back to the weighted mean.
    ok = det > 1e-9 * np.maximum(s0 * s2, 1e-300)
    safe_det = np.where(ok, det, 1.0)[:, None]
    weights = np.where(ok[:, None], w * (s2[:, None] - s1[:, None] * d) / safe_det, w / s0[:, None])
    return idx, weights


def _smooth(
    learning_rates: np.ndarray, z: np.ndarray, smooth_decades: float
) -> tuple[np.ndarray, np.ndarray]:
    """Spike-free, lag-free smoothing of a (log-)loss against log10(lr).

    Returns (smoothed, draws): draws are fixed-seed unit Gaussian noise sequences put through the
    same smoother. The median makes it nonlinear, so the noise of anything computed from the
    smoothed curve is measured on the draws (as its standard deviation across them) rather
    than derived from the weights.
    """
    x = np.log10(np.asarray(learning_rates, np.float64))
    z = np.asarray(z, np.float64)
    n = len(z)
    if n == 0:
        return z.copy(), np.zeros((GAIN_DRAWS, 0))
    spacing = float(np.median(np.diff(x))) if n > 1 else 1.0
    sigma = max(smooth_decades, MIN_SMOOTH_POINTS * spacing)
    idx, weights = _local_linear_weights(x, sigma)

    def smooth(values: np.ndarray) -> np.ndarray:
        return (_running_median(values, MEDIAN_WINDOW)[..., idx] * weights).sum(-1)

    noise = np.random.default_rng(0).standard_normal((GAIN_DRAWS, n))
    return smooth(z), smooth(noise)


def _noise_sigma(z: np.ndarray) -> float:
    """Per-step noise of z from the MAD of its differences (trend-free, robust to spikes)."""
    if len(z) < 3:
        return 0.0
    diffs = np.diff(z)
    mad = np.median(np.abs(diffs - np.median(diffs)))
    return float(1.4826 * mad / math.sqrt(2.0))


# ----------------------------------------------------------------------------- analysis


def analyze_range_test(
    learning_rates,
    losses,
    *,
    divergence_factor: float = 4.0,
    smooth_decades: float = SMOOTH_DECADES,
    band_fraction: float = BAND_FRACTION,
    min_drop: float = MIN_DROP,
) -> RangeTest:
    """Smooth a range test's loss, find where it diverged, its descent band and a suggested lr."""
    lrs, raw = _checked_sweep(learning_rates, losses, divergence_factor)
    n = len(raw)
    bad = np.flatnonzero(~np.isfinite(raw))
    n_ok = int(bad[0]) if bad.size else n

    # Mini-batch noise is multiplicative, so positive losses are read in log space, where it is
    # additive and "factor x best" is a fixed offset; a loss that goes <= 0 is read as it is.
    positive = n_ok > 0 and bool(np.all(raw[:n_ok] > 0))
    z = np.log(raw[:n_ok]) if positive else raw[:n_ok].copy()
    z_s, draws = _smooth(lrs[:n_ok], z, smooth_decades)
    smoothed = np.full(n, np.nan)
    smoothed[:n_ok] = np.exp(z_s) if positive else z_s
    stop_index, reason = _stop(z_s, n, positive, divergence_factor)
    diverged = reason is not None
    region = stop_index if diverged else n  # points before the blow-up

    result = RangeTest(
        learning_rates=lrs,
        losses=raw,
        smoothed=smoothed,
        stop_index=stop_index,
        best_index=0,
        suggested_lr=None,
        band=None,
        diverged=diverged,
        status="too_few_points",
        divergence_reason=reason,
        divergence_factor=float(divergence_factor),
        num_steps=n,
    )
    if region < 3:
        return result

    levels = _levels(np.log10(lrs[:region]), z[:region], z_s[:region], draws)
    to_loss = math.exp if positive else float
    result.best_index = levels.best_index
    result.start_loss = to_loss(levels.start)
    result.min_loss = to_loss(levels.minimum)
    result.noise = levels.sigma_curve
    result.status = "no_descent"
    if levels.best_index < 2 * MIN_START_POINTS:
        return result  # a minimum within the first few points leaves no start level to measure
    drop = levels.drop
    result.significance = drop / levels.sigma_drop if levels.sigma_drop > 0 else math.inf
    floor = math.log1p(min_drop) if positive else min_drop * max(abs(levels.start), 1e-12)
    if not drop > max(MEASURABLE_SIGMAS * levels.sigma_drop, floor):
        return result

    lo, hi, open_bottom, open_top = _band(levels, draws, band_fraction, diverged)
    lr_lo, lr_hi = float(lrs[lo]), float(lrs[hi])
    log_s = max(math.log10(lr_hi) - SUGGEST_DECADES_BELOW_TOP, 0.5 * (levels.x[lo] + levels.x[hi]))
    suggested = float(10.0**log_s)
    suggested = min(max(suggested, lr_lo), lr_hi)  # rounding must not push it out of the band
    result.status = "ok"
    result.band = (lr_lo, lr_hi)
    result.band_indices = (lo, hi)
    result.suggested_lr = suggested
    result.suggested_index = int(np.argmin(np.abs(np.log10(lrs) - log_s)))
    result.band_open_bottom = open_bottom
    result.band_open_top = open_top
    return result


def _checked_sweep(
    learning_rates, losses, divergence_factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """The sweep's learning rates and losses as float64 vectors, checked (ValueError)."""
    lrs = np.asarray(learning_rates, np.float64).ravel()
    raw = np.asarray(losses, np.float64).ravel()
    if lrs.shape != raw.shape or len(lrs) == 0:
        raise ValueError(
            f"learning_rates and losses must be non-empty and of one length, got "
            f"{lrs.shape} and {raw.shape}"
        )
    if not (np.all(np.isfinite(lrs)) and np.all(lrs > 0) and np.all(np.diff(lrs) > 0)):
        raise ValueError("learning_rates must be positive, finite and strictly increasing")
    if not divergence_factor > 1.0:
        raise ValueError(f"divergence_factor={divergence_factor} must be > 1")
    return lrs, raw


def _stop(
    z_s: np.ndarray, n: int, positive: bool, divergence_factor: float
) -> tuple[int, str | None]:
    """(stop index, reason): the first smoothed point above `divergence_factor` x its running
    best ("loss"), else the first non-finite loss ("nonfinite"), else (n - 1, None).

    `z_s` is the smoothed curve up to the first non-finite loss (log loss when `positive`).
    """
    n_ok = len(z_s)
    if n_ok:
        best = np.minimum.accumulate(z_s)
        if positive:
            threshold = best + math.log(divergence_factor)
        else:
            threshold = best + (divergence_factor - 1.0) * np.maximum(np.abs(best), 1e-12)
        over = np.flatnonzero(z_s > threshold)
        if over.size:
            return int(over[0]), "loss"
    if n_ok < n:
        return n_ok, "nonfinite"
    return n - 1, None


@dataclasses.dataclass
class _Levels:
    """The robust anchors of a sweep's descent (log loss for positive losses), and the noise
    (1 sigma) of each, measured on the smoothed noise draws and scaled by the per-step noise."""

    x: np.ndarray  # log10(lr) of the points before the stop
    z: np.ndarray  # their smoothed loss
    noise: float  # per-step noise of the unsmoothed loss
    best_index: int  # the smoothed minimum
    minimum: float
    start_count: int  # points the start level is the median of
    start: float
    drop: float  # start - minimum
    sigma_drop: float
    sigma_start: float
    sigma_curve: float  # of one point of the smoothed curve


def _levels(x: np.ndarray, z: np.ndarray, z_s: np.ndarray, draws: np.ndarray) -> _Levels:
    """The start level, the minimum and the drop between them of the points before the stop
    (`x`: log10 lr, `z`: raw and `z_s`: smoothed loss), with their noise."""
    noise = _noise_sigma(z)
    best_index = int(np.argmin(z_s))
    z_min = float(z_s[best_index])
    # The starting level: the median smoothed loss over the first quarter decade (at least
    # START_POINTS points), but over no more than the first half of the way to the minimum.
    start_count = max(int(np.sum(x < x[0] + START_DECADES)), START_POINTS)
    start_count = max(min(start_count, best_index // 2), 1)
    z0 = float(np.median(z_s[:start_count]))
    z0_draws = np.median(draws[:, :start_count], axis=1)
    return _Levels(
        x=x,
        z=z_s,
        noise=noise,
        best_index=best_index,
        minimum=z_min,
        start_count=start_count,
        start=z0,
        drop=z0 - z_min,
        sigma_drop=noise * float(np.std(z0_draws - draws[:, best_index])),
        sigma_start=noise * float(np.std(z0_draws)),
        sigma_curve=noise * float(np.median(np.std(draws[:, : len(z_s)], axis=0))),
    )


def _band(
    levels: _Levels, draws: np.ndarray, band_fraction: float, diverged: bool
) -> tuple[int, int, bool, bool]:
    """(lo, hi, open at the bottom, open at the top): the indices of the descent band."""
    zr, drop, noise = levels.z, levels.drop, levels.noise
    z0, z_min, best_index = levels.start, levels.minimum, levels.best_index
    region = len(zr)
    # Both edges are levels measured from the curve's two robust anchors (start and minimum), so
    # no single noisy point or derivative decides them. Capping at 40% of the drop keeps them
    # ordered when the noise is large against the drop.
    level_noise = math.hypot(levels.sigma_start, levels.sigma_curve)
    margin = min(max(band_fraction * drop, NOISE_SIGMAS * level_noise), 0.4 * drop)
    hi = int(np.flatnonzero(zr[: best_index + 1] <= z_min + margin)[0])
    above = np.flatnonzero(zr[:hi] >= z0 - margin)
    lo = int(above[-1]) + 1 if above.size else 0
    # Open at the bottom: the loss was already falling measurably across the start window and
    # the band begins right after it, so the band reaches down to the first lr (and maybe below
    # the range tested). Both are asked, as a cluster of bad batches at the start fakes the first.
    edge = max(levels.start_count - 1, 1)
    sigma_edge = noise * float(np.std(draws[:, 0] - draws[:, edge]))
    falling = zr[0] - zr[edge] > max(band_fraction * drop, NOISE_SIGMAS * sigma_edge)
    open_bottom = bool(falling and lo < 2 * levels.start_count)
    if open_bottom:
        lo = 0
    # Open at the top: no blow-up, the minimum is in the last window (twice the start one: the
    # end of the curve is an extrapolation, noisier) and the loss still fell measurably across it.
    end = max(region - 1 - 2 * edge, 0)
    sigma_end = noise * float(np.std(draws[:, end] - draws[:, region - 1]))
    still_falling = zr[end] - zr[-1] > NOISE_SIGMAS * sigma_end
    open_top = bool(not diverged and best_index >= end and still_falling)
    return lo, hi, open_bottom, open_top


# ----------------------------------------------------------------------------- the sweep


def _make_sweep(task: engine.Task, form: str = "auto") -> engine.StepLoop:
    """The sweep's steps, `repeats` independent runs under vmap with the lr set per step:
    (states, x, y, indices (K, repeats, batch), lrs (K,)) -> (states, losses (K, repeats)), K
    steps per call under lax.scan or one compiled step per step (engine.loop_form)."""
    train_step = engine.make_train_step(task)

    def sweep_step(state, x, y, idx, lr):
        opt_state = state.opt_state
        hyperparams = dict(opt_state.hyperparams)
        hyperparams["learning_rate"] = lr.astype(hyperparams["learning_rate"].dtype)
        state = state.replace(opt_state=opt_state._replace(hyperparams=hyperparams))
        state, metrics = train_step(state, {"x": x[idx], "y": y[idx]})
        return state, metrics["loss"]

    # The batched state is this module's own copy, so the loop may donate it between chunks.
    return engine.StepLoop(
        jax.vmap(sweep_step, in_axes=(0, None, None, 0, None)), num_shared=2, form=form
    )


@functools.partial(jax.jit, static_argnums=1)
def _replicate(state, repeats: int):
    # Fresh buffers with a leading repeat axis: the caller's state is never donated or aliased.
    return jax.tree.map(lambda a: jnp.broadcast_to(a[None], (repeats, *a.shape)), state)


def run_range_test(
    task: engine.Task,
    state: engine.TrainState,
    dataset,
    *,
    min_lr: float = 1e-7,
    max_lr: float = 10.0,
    num_steps: int = 200,
    batch_size: int = 128,
    seed: int = 0,
    repeats: int = 3,
    divergence_factor: float = 4.0,
    steps_per_call: int = 50,
    loop: str = "auto",
    progress: bool = False,
) -> RangeTest:
    """Sweep the lr exponentially from min_lr to max_lr on the training split and analyze it.

    One step per learning rate, `repeats` sweeps over different data orders averaged, from
    `state` (left untouched); stops after the chunk in which the loss diverged. A batch_size
    above the number of training examples is cut to it. `loop`: the form of the sweep's steps
    (config.loop; the result's `loop` says which ran). `progress`: a bar of the sweep's steps.
    """
    _check_sweep_options(state, min_lr, max_lr, num_steps, repeats, steps_per_call, batch_size)
    x_train, y_train = dataset.x_train, dataset.y_train
    lrs = np.geomspace(min_lr, max_lr, num_steps)
    num_chunks, chunk, lrs_padded, indices = _sweep_plan(
        lrs, len(x_train), min(int(batch_size), len(x_train)), seed, repeats, steps_per_call
    )

    sweep = _make_sweep(task, loop)
    t_start = time.perf_counter()
    x, y = jnp.asarray(x_train), jnp.asarray(y_train)
    indices = np.swapaxes(indices, 0, 1)  # (steps, repeats, batch): one row per step
    states = _replicate(state, repeats)
    chunks, compile_seconds, steps_run = [], 0.0, 0
    result = None
    with Progress(num_steps, "lr range test", "step", enabled=progress) as bar:
        bar.phase("compiling")
        for c in range(num_chunks):
            sl = slice(c * chunk, (c + 1) * chunk)
            t0 = time.perf_counter()
            rows = (jnp.asarray(indices[sl]), jnp.asarray(lrs_padded[sl]))
            states, losses = sweep(states, x, y, *rows, watch=bar.watch)
            bar.phase()
            losses = np.asarray(jax.device_get(losses), np.float64).T  # (repeats, steps)
            if c == 0:
                compile_seconds = time.perf_counter() - t0  # the first call includes compilation
            take = min(chunk, num_steps - steps_run)
            # A NaN in any repeat makes the mean NaN: that learning rate is unstable for some order.
            with np.errstate(over="ignore", invalid="ignore"):
                chunks.append(losses[:, :take].mean(axis=0))
            steps_run += take
            bar.advance_to(steps_run)
            result = analyze_range_test(
                lrs[:steps_run], np.concatenate(chunks), divergence_factor=divergence_factor
            )
            if result.diverged:
                break  # everything beyond the blow-up is wasted time
    del states
    result.num_steps = num_steps
    result.repeats = repeats
    result.wall_seconds = time.perf_counter() - t_start
    result.compile_seconds = compile_seconds
    result.loop = sweep.choice.to_json() if sweep.choice else None
    return result


def _check_sweep_options(
    state: engine.TrainState,
    min_lr: float,
    max_lr: float,
    num_steps: int,
    repeats: int,
    steps_per_call: int,
    batch_size: int,
) -> None:
    """UsageError naming the first option of the sweep that is out of range, or the optimizer
    whose learning rate cannot be set per step."""
    if not (0 < min_lr < max_lr and math.isfinite(max_lr)):
        raise UsageError(f"min_lr={min_lr}, max_lr={max_lr}: need 0 < min_lr < max_lr")
    for name, value, low in (
        ("num_steps", num_steps, 2),
        ("repeats", repeats, 1),
        ("steps_per_call", steps_per_call, 1),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise UsageError(f"{name}={value!r} must be an integer >= {low}")
    hyperparams = getattr(state.opt_state, "hyperparams", None)
    if not isinstance(hyperparams, dict) or "learning_rate" not in hyperparams:
        raise UsageError(
            "the range test sets the learning rate per step, so the optimizer must be built with "
            "optax.inject_hyperparams(...)(learning_rate=...) (engine.build_optimizer does)"
        )


def _sweep_plan(
    lrs: np.ndarray, n: int, batch_size: int, seed: int, repeats: int, steps_per_call: int
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(chunks, chunk length, learning rates, batch indices (repeats, steps)) of the sweep.

    Equal chunks of at most steps_per_call (one compiled shape), padded by fewer than one step
    per chunk: padded steps run at lr 0 and are discarded. Each repeat sees its own data
    order; all start from the same parameters.
    """
    num_steps = len(lrs)
    num_chunks = -(-num_steps // min(int(steps_per_call), num_steps))
    chunk = -(-num_steps // num_chunks)
    indices = np.stack(
        [data.batch_indices(n, batch_size, seed + r, 0, num_steps) for r in range(repeats)]
    )
    pad = num_chunks * chunk - num_steps
    lrs_padded = np.concatenate([lrs, np.zeros(pad)]).astype(np.float32)
    if pad:
        indices = np.concatenate([indices, np.repeat(indices[:, -1:], pad, axis=1)], axis=1)
    return num_chunks, chunk, lrs_padded, indices


# ----------------------------------------------------------------------------- findings, plot


def range_test_findings(result: RangeTest, configured_lr: float) -> list[Finding]:
    """`lr_too_high` / `lr_too_low` when the configured lr lies outside the descent band."""
    configured_lr = float(configured_lr)
    evidence = {
        "configured_lr": configured_lr,
        "band": list(result.band) if result.band else None,
        "suggested_lr": result.suggested_lr,
        "best_lr": result.best_lr,
    }
    if result.diverged:
        evidence["diverged_at_lr"] = result.stop_lr
    if not result.found:
        # No band to compare with; only a configured rate at or past the blow-up is diagnosable.
        if result.diverged and configured_lr >= result.stop_lr:
            return [
                Finding(
                    id="lr_too_high",
                    severity="warning",
                    message=(
                        f"the learning rate {configured_lr:.3g} is at or above the rate where the "
                        f"range test diverged ({result.stop_lr:.3g}), and the loss never went "
                        "down below it"
                    ),
                    evidence=evidence,
                    suggestions=[
                        f"lower the learning rate below {result.stop_lr:.3g}, e.g. by 100x",
                        "check the loss and the data: the loss fell at no learning rate tested",
                    ],
                )
            ]
        return []
    lo, hi = result.band
    s = result.suggested_lr
    band_text = f"[{lo:.3g}, {hi:.3g}]"
    if configured_lr > hi and not result.band_open_top:
        where = (
            f"past the rate where it diverged ({result.stop_lr:.3g})"
            if result.diverged and configured_lr >= result.stop_lr
            else "where it was already at its minimum or rising"
        )
        return [
            Finding(
                id="lr_too_high",
                severity="warning",
                message=(
                    f"the learning rate {configured_lr:.3g} lies above the range test's band "
                    f"{band_text} where the loss goes down: {where}"
                ),
                evidence=evidence,
                suggestions=[
                    f"set the learning rate to {s:.3g} (the range test's suggestion)",
                    f"or any rate in the lower half of {band_text}",
                ],
            )
        ]
    if configured_lr * LOW_FACTOR_INFO < lo and not result.band_open_bottom:
        factor = lo / configured_lr
        return [
            Finding(
                id="lr_too_low",
                severity="warning" if configured_lr * LOW_FACTOR_WARNING <= lo else "info",
                message=(
                    f"the learning rate {configured_lr:.3g} lies {factor:.3g}x below the range "
                    f"test's band {band_text}: the loss did not go down measurably there"
                ),
                evidence=evidence,
                suggestions=[
                    f"set the learning rate to {s:.3g} (the range test's suggestion)",
                    f"or any rate in {band_text}",
                ],
            )
        ]
    return []


def plot_range_test(result: RangeTest, title: str = ""):
    """Raw (faint) and smoothed loss against log lr, the band shaded, suggestion and stop marked."""
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(7, 4))
    lrs = result.learning_rates
    ax.plot(lrs, result.losses, color="tab:blue", alpha=0.3, lw=0.8, label="loss (raw)")
    ax.plot(lrs, result.smoothed, color="tab:blue", lw=2, label="loss (smoothed)")
    if result.band:
        ax.axvspan(*result.band, color="tab:green", alpha=0.15, label="loss goes down")
    if result.suggested_lr is not None:
        ax.axvline(result.suggested_lr, color="tab:green", lw=1.5, ls="--")
        ax.plot([], [], color="tab:green", ls="--", label=f"suggested {result.suggested_lr:.3g}")
    if result.diverged:
        ax.axvline(result.stop_lr, color="tab:red", lw=1.5, ls=":")
        ax.plot([], [], color="tab:red", ls=":", label=f"diverged at {result.stop_lr:.3g}")
    ax.set_xscale("log")
    # The y range frames the descent (start level down to the minimum) and some of the rise
    # after it; a blow-up to many times the loss would otherwise flatten the descent to a line.
    smoothed = result.smoothed[: result.stop_index + 1]
    if np.any(np.isfinite(smoothed)):
        top = float(np.nanmax(smoothed[: result.best_index + 1]))
        low = float(np.nanmin(smoothed))
        span = top - low if top > low else max(abs(top), 1e-3) * 0.1
        ax.set_ylim(low - 0.15 * span, top + 0.6 * span)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(title or "learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig
