"""Loss-curve diagnosis: the workflow's error analysis (goes up, explodes, oscillates, plateaus).

`diagnose_curve` reads the per-step training loss of a run (`FitResult.step_losses`, step i+1 at
index i) and returns findings from the stable vocabulary in the one ranking (a cause before the
symptom it explains: findings.rank_findings); a healthy curve gives none. Per-step losses are noisy
(one mini-batch each: 10-30% relative noise at batch 32-128, far more once the loss nears zero), so
every test compares robust levels (medians of whole windows, noise scales from the IQR of
differences) and asks for both a practical effect size and statistical significance before it fires;
a trend too unclear to call gives no finding.

The plateau and lr_too_low verdicts compare the end of the curve with its start, so the curve
should begin at the first training step; a resumed run should pass its whole history (or
`initial_expected`, which lets a curve that starts far below it be recognized as already trained).
Steps in the findings count from the curve's first point (step 1). `val` is only evidence.
"""

import math
from typing import TYPE_CHECKING

import numpy as np

from workflow.diagnostics.findings import Finding, rank_findings

if TYPE_CHECKING:  # the engine imports jax; reading a curve needs numpy only
    from workflow.engine.loop import FitResult

# ----------------------------------------------------------------------------- thresholds
# Calibrated on 34 healthy real runs of this project (MNIST-1D mlp/tcn/lstm at Adam 3e-4 and 1e-2,
# 1000-3000 steps, batch 32/100/128, 4 seeds; digits mlp/lenet), 21 synthetic-data runs (healthy
# and broken: lr 1e-8..10, flipped sign, random labels, l2=1) and 3000 synthetic healthy curves
# with 10-30% multiplicative noise; the margins each leaves are given next to it.

# Fewer finite points than this give no shape finding: too few to tell a trend from noise.
MIN_POINTS = 10
# Start/end windows are the first/last 10% of the curve (at least MIN_WINDOW points), so their
# medians average out mini-batch noise while still describing the start and the end.
WINDOW_FRACTION = 0.1
MIN_WINDOW = 5
# The initial level is the median of the first 3 steps: the untrained model's loss, robust to one
# odd batch, before a fast optimizer has moved it far (Adam 1e-1 halves it within 3 steps here).
N_INIT = 3
# Trailing running median over 5% of the curve, 5-21 steps: long enough that a burst of a few bad
# batches never looks like a trend, short enough to follow a blow-up that ends in NaN within ~20
# steps (SGD at lr 10 here grows 1e35x in 45 steps).
SMOOTH_FRACTION = 0.05
SMOOTH_MIN, SMOOTH_MAX = 5, 21
# One-sided significance of a difference of window medians, in standard errors (Gaussian
# false-alarm rate 0.1% per test). The median's standard error is 1.2533 sigma / sqrt(n).
Z_SIG = 3.0
MEDIAN_SE = 1.2533
# "No meaningful decrease" must hold with confidence: the decrease plus 2 standard errors.
Z_FLAT = 2.0
IQR_TO_SIGMA = 1.349
# Exploding: the smoothed loss exceeds 10x its minimum so far and 3x the initial loss (orders of
# magnitude), and grew 10x within the latter half of the steps run so far, i.e. geometrically or
# abruptly. A steady climb (gradient ascent grows the loss ~linearly: at most 2x per doubling of
# the steps, 3.4x measured here over 300 steps) is `loss_increasing` instead. Healthy runs here
# never took their running median above 1.02x the step-1 loss, though near zero it rose up to 34x
# its running minimum (LSTM at 1e-2): the 3x-initial condition is what keeps them quiet.
EXPLODE_FACTOR = 10.0
EXPLODE_OVER_START = 3.0
# The step-1 loss is trusted as the initial loss when within 3x of `initial_expected`.
EXPECTED_TOLERANCE = 3.0
# The smoothed loss must also rise by 8 standard errors of its own log-noise: the spread between
# the lowest and highest of a few hundred noisy running medians is about 7 (so a 10x ratio is
# noise at e-fold swings with 5-point windows, while 10-30% noise leaves the 10x rule in charge).
EXPLODE_NOISE_SE = 8.0
# Increasing: the end window sits 20% above the start (healthy runs here all end 31-100% *below*
# it) and the difference is significant.
INCREASE_REL = 0.2
# A loss that falls below zero by 10x its initial magnitude is unbounded below: cross-entropy and
# squared error cannot, a loss with its sign flipped does (-2.4 -> -714 in 300 steps here).
UNBOUNDED_FACTOR = 10.0
# Plateau: the end window is less than 10% below the start. Healthy runs here fall by 31-100%
# (random labels still 27% in 300 steps); Adam 1e-5 and SGD 1e-4, which barely train, by 3-6%.
PLATEAU_MAX_DECREASE = 0.1
# Plateau and lr_too_low are judged on at least 30 points: window noise scales estimated from a
# handful of differences are too unsure for a "no decrease" verdict (a 10-point healthy curve at
# 30% noise was called flat once in 3000 tries with 10).
FLAT_MIN_POINTS = 30
# "Stuck from early on": no 10% progress after the first window while still above 75% of the
# initial loss. Lower levels are convergence, e.g. to a label-noise floor (73% of ln C at 50%
# label noise over 10 classes).
STUCK_MIN_FRACTION = 0.75
# A dip below 1% of the start is never counted as leaving the initial level, however significant
# (noise-free curves make every dip "significant").
NEVER_LEFT_FLOOR = 0.01
# Oscillating: swings whose robust scale is 50% of the loss level, with no net progress, on at
# least 50 points (the IQR scale of 50 differences is within ~17% of the truth). Mini-batch noise
# of 10-30% stays below (at most 0.50 in 300 flat 30%-noise curves of 50 steps); stuck real runs
# show 1-3%. Healthy runs swing 0.8-5.9x their level near zero loss: the progress test excludes
# them.
OSC_MIN_REL = 0.5
OSC_MIN_POINTS = 50
# lr_too_low from the shape: a significant decrease that is still going in the second half of the
# run (at least 25% of it after the midpoint; a linear decrease has 50%, a saturating one ~0%).
STEADY_LATE_SHARE = 0.25
N_SEGMENTS = 5
# lr_too_low from the value: below the bottom of the notes' coarse grid lr = 10**Uniform(-6, -3).
LR_GRID_LOW = 1e-6
# lr_too_high accompanies a bad shape that starts within the first 20% of the curve (a rise, from
# the lowest smoothed point before it; swings, in the first 20%): a loss that goes wrong from the
# first updates is the signature of too-large steps, a late blow-up that of numerics.
EARLY_FRACTION = 0.2
# With `initial_expected`, a curve starting below half of it comes from an already trained model:
# no plateau/oscillation verdict (flat then means converged).
TRAINED_START_FRACTION = 0.5
# Suggested change of a learning rate, in the notes' coarse-grid spirit (decades).
LR_FACTOR = 10.0
# Curves longer than this are smoothed in chunks so the sliding window view stays small.
_CHUNK = 65536


# ----------------------------------------------------------------------------- statistics


def _running_median(y: np.ndarray, k: int) -> np.ndarray:
    """Trailing running median: s[i] = median(y[i-k+1 : i+1]), shorter windows at the start."""
    m = len(y)
    s = np.empty(m)
    for i in range(min(k - 1, m)):
        s[i] = np.median(y[: i + 1])
    if m >= k:
        windows = np.lib.stride_tricks.sliding_window_view(y, k)
        for lo in range(0, len(windows), _CHUNK):
            s[k - 1 + lo : k - 1 + lo + _CHUNK] = np.median(windows[lo : lo + _CHUNK], axis=1)
    return s


def _noise_sigma(y: np.ndarray, lag: int = 1) -> float:
    """Robust noise scale from the IQR of lag differences (a smooth trend barely moves it)."""
    # The IQR, unlike the MAD, stays right when the differences take two values (alternation).
    if len(y) <= lag + 1:
        return 0.0
    q25, q75 = np.percentile(y[lag:] - y[:-lag], [25, 75])
    return float((q75 - q25) / IQR_TO_SIGMA / math.sqrt(2.0))


def _swing_sigma(y: np.ndarray) -> float:
    """Largest noise scale over lags 1, 2, 4, ...: catches slow swings as well as fast ones."""
    lags = [1]
    while lags[-1] * 2 <= max(1, len(y) // 8):
        lags.append(lags[-1] * 2)
    return max(_noise_sigma(y, lag) for lag in lags)


def _iqm(y: np.ndarray) -> float:
    """Interquartile mean: robust to spikes like the median, yet stable on two-level data."""
    lo, hi = np.percentile(y, [25, 75])
    inner = y[(y >= lo) & (y <= hi)]
    return float(np.mean(inner)) if inner.size else float(np.median(y))


def _median_se(*pairs: tuple[float, int]) -> float:
    """Standard error of a sum/difference of medians, each given as (sigma, n)."""
    return MEDIAN_SE * math.sqrt(sum(sigma**2 / max(n, 1) for sigma, n in pairs))


def _first(condition: np.ndarray) -> int | None:
    """Index of the first True, or None."""
    hits = np.flatnonzero(condition)
    return int(hits[0]) if hits.size else None


def _r(value: float) -> float | None:
    """A JSON-friendly float with 4 significant digits (None for NaN/inf)."""
    value = float(value)
    return float(f"{value:.4g}") if math.isfinite(value) else None


class _Curve:
    """The robust summary of a finite loss curve that every test reads."""

    def __init__(self, y: np.ndarray):
        m = len(y)
        self.y, self.m = y, m
        self.w = min(max(MIN_WINDOW, round(WINDOW_FRACTION * m)), m // 2)
        self.first = float(y[0])
        self.init = float(np.median(y[:N_INIT]))
        self.head = float(np.median(y[: self.w]))
        self.tail = float(np.median(y[-self.w :]))
        self.sigma_head = _noise_sigma(y[: self.w])
        self.sigma_tail = _noise_sigma(y[-self.w :])
        # The start is the first window, unless the first step or the first N_INIT steps sit
        # clearly above it: a fast optimizer halves the loss within 2-3 steps, and that drop is
        # progress. Always the largest such estimate, which is conservative for every test.
        # Their noise is that of the first window or, if larger, of the whole curve: a scale from
        # a few differences can be far too small, and then one odd first batch would count.
        sigma0 = max(self.sigma_head, _noise_sigma(y))
        candidates = [(self.head, self.w)]
        for value, n in ((self.first, 1), (self.init, N_INIT)):
            if value - self.head > Z_SIG * _median_se((sigma0, n), (sigma0, self.w)):
                candidates.append((value, n))
        self.start, n_start = max(candidates)
        self.start_from_first_steps = n_start != self.w
        # (noise scale, points) of the start estimate, for standard errors of differences.
        self.start_pair = (self.sigma_head if n_start == self.w else sigma0, n_start)
        first_half, second_half = np.array_split(y, 2)
        self.halves_iqm = (_iqm(first_half), _iqm(second_half))
        self.head_iqm, self.tail_iqm = _iqm(y[: self.w]), _iqm(y[-self.w :])
        self.swing = _swing_sigma(y)
        positive = y[y > 0]
        self.sigma_log = _noise_sigma(np.log(positive)) if positive.size > 2 else 0.0
        k = int(np.clip(round(SMOOTH_FRACTION * m), SMOOTH_MIN, SMOOTH_MAX))
        self.smooth_window = k
        self.smooth = _running_median(y, k)
        segments = np.array_split(y, N_SEGMENTS)
        self.seg_median = np.array([np.median(s) for s in segments])
        self.seg_sigma = np.array([_noise_sigma(s) for s in segments])
        self.seg_len = np.array([len(s) for s in segments])
        self.level = _iqm(y)

    def step(self, index: int) -> int:
        """The 1-based training step of a curve index."""
        return int(index) + 1


# ----------------------------------------------------------------------------- wording


def _lr_text(learning_rate: float | None) -> str:
    return f" (now {learning_rate:g})" if learning_rate is not None else ""


def _lr_target(learning_rate: float | None, factor: float) -> str:
    """', e.g. to 0.003 (--config.optimizer.learning_rate=0.003)', or ', e.g. by 10x'."""
    if not learning_rate:
        return f", e.g. by {max(factor, 1 / factor):g}x"
    target = f"{learning_rate * factor:g}"
    return f", e.g. to {target} (--config.optimizer.learning_rate={target})"


def _lower_lr(learning_rate: float | None) -> str:
    target = _lr_target(learning_rate, 1 / LR_FACTOR)
    return f"lower the learning rate{_lr_text(learning_rate)}{target}"


def _raise_lr(learning_rate: float | None) -> str:
    target = _lr_target(learning_rate, LR_FACTOR)
    return (
        f"raise the learning rate{_lr_text(learning_rate)}{target}, or run a learning-rate "
        "range test to pick it"
    )


_NUMERICS = (
    "check every exp, log and division in the model and loss for overflow, log(0) or division "
    "by zero (use log_softmax / log-sum-exp, add an epsilon)"
)
_SIGN = (
    "check the sign of the loss and of the update: the optimizer must minimize the loss "
    "(loss = +cross-entropy, params -= lr * grad)"
)
_SOFTMAX_AXIS = "check that softmax / log_softmax is taken over the class axis (-1), not the batch"
_DATA = (
    "check the data and labels: corrupted, zeroed, constant, or shuffled separately from the "
    "inputs (x and y must be permuted together)"
)
_GRADIENTS = (
    "check that gradients reach every layer (no stop_gradient or detached parameters, no dead "
    "ReLUs or saturated tanh/sigmoid)"
)
_REGULARIZATION = (
    "reduce the regularization (l2, weight decay, dropout; --config.l2=0.0 turns the L2 penalty "
    "off)"
)
_LOGITS = (
    "check the loss gets logits: a softmax before softmax_cross_entropy (probabilities into a "
    "logits loss) flattens the loss"
)


# ----------------------------------------------------------------------------- the diagnosis


def diagnose_curve(
    train_loss: np.ndarray,
    *,
    val: list[tuple[int, float]] | None = None,
    initial_expected: float | None = None,
    learning_rate: float | None = None,
) -> list[Finding]:
    """Findings for a per-step training-loss curve, ranked; [] for a healthy one."""
    x = np.asarray(train_loss, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"train_loss must be 1-D (one loss per step), got shape {x.shape}")
    context = {}
    if learning_rate is not None:
        context["learning_rate"] = float(learning_rate)
    if initial_expected is not None:
        context["initial_expected"] = _r(initial_expected)
    context.update(_val_evidence(val))

    bad = _first(~np.isfinite(x))
    y = x if bad is None else x[:bad]
    shape = (
        _shape_findings(y, initial_expected, learning_rate, context) if len(y) >= MIN_POINTS else []
    )
    if bad is None:
        return rank_findings(shape)
    exploded = any(f.id == "loss_exploding" for f in shape)
    # After an explosion the NaN's causes are ranked as the explosion's: lr first if it was early.
    lr_first = any(f.id == "lr_too_high" for f in shape) if exploded else None
    nan = _nan_finding(x, bad, lr_first, learning_rate, context)
    return rank_findings([nan, *shape])


def _val_evidence(val: list[tuple[int, float]] | None) -> dict:
    """The validation curve, as evidence only: first, last and best (step, loss)."""
    points = [(int(s), float(v)) for s, v in (val or []) if math.isfinite(float(v))]
    if not points:
        return {}
    best = min(points, key=lambda p: p[1])
    return {
        "val_loss": {
            "first": [points[0][0], _r(points[0][1])],
            "last": [points[-1][0], _r(points[-1][1])],
            "best": [best[0], _r(best[1])],
        }
    }


def _nan_finding(
    x: np.ndarray, bad: int, lr_first: bool | None, learning_rate: float | None, context: dict
) -> Finding:
    """The non-finite loss, with the causes ranked by what the loss did just before."""
    finite = x[:bad]
    last = float(finite[-1]) if finite.size else None
    # A loss already 10x above its start just before the NaN was blowing up.
    grew = bool(
        finite.size >= 2
        and finite[0] > 0
        and np.max(finite[-min(5, finite.size) :]) > EXPLODE_FACTOR * finite[0]
    )
    if lr_first is None:
        lr_first = grew
    lower = _lower_lr(learning_rate)
    suggestions = [lower, _NUMERICS] if lr_first else [_NUMERICS, lower]
    value = x[bad]
    return Finding(
        id="nan_or_inf",
        severity="error",
        message=f"the training loss became {value} at step {bad + 1}"
        + (" after growing rapidly" if grew else ""),
        evidence={
            "step": bad + 1,
            "value": str(value),
            "last_finite_loss": _r(last) if last is not None else None,
            "initial_loss": _r(finite[0]) if finite.size else None,
            "grew_before": grew,
            **context,
        },
        suggestions=suggestions,
    )


def _shape_findings(
    y: np.ndarray, initial_expected: float | None, learning_rate: float | None, context: dict
) -> list[Finding]:
    """Findings from the shape of a finite curve of at least MIN_POINTS steps."""
    c = _Curve(y)
    base = {
        "steps": c.m,
        "initial_loss": _r(c.init),
        "start_level": _r(c.start),
        "end_level": _r(c.tail),
        "window": c.w,
        **context,
    }
    unbounded = _unbounded_below(c, initial_expected, learning_rate, base)
    if unbounded is not None:
        return unbounded
    positive = c.init > 0 and c.start > 0  # else relative progress and swings mean nothing
    trained_start = (
        initial_expected is not None
        and initial_expected > 0
        and max(c.init, c.head_iqm, c.level) < TRAINED_START_FRACTION * initial_expected
    )
    # Oscillation first: a smoother flips between the levels of a loss that alternates, which
    # would fake an explosion or a rise; an explosion or a clear rise is never oscillation.
    if positive and not trained_start:
        oscillating = _oscillating(c, learning_rate, base)
        if oscillating is not None:
            return oscillating
    explode = _exploding(c, initial_expected, learning_rate, base)
    if explode is not None:
        return explode
    increasing = _increasing(c, learning_rate, base)
    if increasing is not None:
        return increasing
    if not positive or trained_start or c.m < FLAT_MIN_POINTS:
        return []  # from a trained model a flat curve is a converged one; too short to judge
    return _flat(c, initial_expected, learning_rate, base)


def _exploding(
    c: _Curve, initial_expected: float | None, learning_rate: float | None, base: dict
) -> list[Finding] | None:
    """loss_exploding (+ lr_too_high when it starts early), or None."""
    onset, running_min = _explosion_onset(c, initial_expected)
    if onset is None:
        return None
    s = c.smooth
    peak = int(np.argmax(s))
    rise = _rise_start(c, onset)
    early = rise < EARLY_FRACTION * c.m
    evidence = {
        **base,
        "onset_step": c.step(onset),
        "min_before": _r(running_min[onset]),
        "smoothed_at_onset": _r(s[onset]),
        "peak_step": c.step(peak),
        "peak_smoothed": _r(s[peak]),
        "growth": _r(s[peak] / running_min[peak]) if running_min[peak] > 0 else None,
        "smoothing_window": c.smooth_window,
    }
    causes = [_NUMERICS, _lower_lr(learning_rate)]
    findings = [
        Finding(
            id="loss_exploding",
            severity="error",
            message=(
                f"the loss explodes: its running median rose from {running_min[onset]:.4g} to "
                f"{s[peak]:.4g} (from step {c.step(onset)})"
            ),
            evidence=evidence,
            suggestions=causes[::-1] if early else causes,
        )
    ]
    if early:
        findings.append(_lr_too_high("exploding", rise, c, learning_rate, base))
    return findings


def _explosion_onset(
    c: _Curve, initial_expected: float | None
) -> tuple[int | None, np.ndarray | None]:
    """Where the loss starts to explode (None: it does not), and the running minimum of the
    smoothed loss it is measured against."""
    # The step-1 loss is the untrained model's: the reference, so that a blow-up at step 2 still
    # counts, unless it is far from the expected initial loss (then the first 3 steps' median).
    trusted = c.first > 0 and (
        initial_expected is None
        or (
            initial_expected > 0
            and abs(math.log(c.first / initial_expected)) < math.log(EXPECTED_TOLERANCE)
        )
    )
    ref = c.first if trusted else c.init
    if ref <= 0:
        return None, None
    s = c.smooth
    # The minimum so far of the smoothed loss, from full windows only (the first, partial ones
    # are as noisy as single steps), seeded with the initial loss.
    k = c.smooth_window
    running_min = np.minimum.accumulate(np.concatenate([[ref] * (k - 1), s[k - 1 :]])[: c.m])
    # On very noisy curves a running median wanders by more than 10x: ask for more than its
    # noise can explain (EXPLODE_NOISE_SE standard errors of a k-point median of log-loss).
    factor = max(
        EXPLODE_FACTOR, math.exp(EXPLODE_NOISE_SE * MEDIAN_SE * c.sigma_log / math.sqrt(k))
    )
    half = s[np.arange(c.m) // 2]
    hit = (s > factor * running_min) & (s > EXPLODE_OVER_START * ref)
    hit &= s > EXPLODE_FACTOR * half
    hit[: k - 1] = False  # partial windows: one odd batch could fake it
    onset = _first(hit)
    # A blow-up at the first update: the first window after step 1 sits 10x above it (and, when
    # no expected initial loss vouches for step 1, beyond Z_SIG of the single-step log-noise).
    jump = (
        EXPLODE_FACTOR if initial_expected else max(EXPLODE_FACTOR, math.exp(Z_SIG * c.sigma_log))
    )
    if trusted and np.median(c.y[1 : 1 + c.w]) > jump * ref:
        onset = 1
    return onset, running_min


def _unbounded_below(
    c: _Curve, initial_expected: float | None, learning_rate: float | None, base: dict
) -> list[Finding] | None:
    """loss_increasing for a loss that falls below zero without bound (its sign flipped)."""
    if c.tail >= 0:
        return None
    fall = c.init - c.tail
    scale = max(abs(c.init), abs(initial_expected or 0.0), 1e-12)
    unbounded = fall > UNBOUNDED_FACTOR * scale
    # Or it starts at about minus the expected initial loss and keeps falling, clearly.
    se = _median_se((c.sigma_head, N_INIT), (c.sigma_tail, c.w))
    mirrored = (
        initial_expected is not None
        and initial_expected > 0
        and c.init < -initial_expected / EXPECTED_TOLERANCE
        and fall > max(INCREASE_REL * abs(c.init), Z_SIG * se)
    )
    if not (unbounded or mirrored):
        return None
    what = (
        f"the loss starts below zero, at {c.init:.4g} where about +{initial_expected:.4g} is "
        f"expected, and keeps falling (to {c.tail:.4g})"
        if mirrored
        else f"the loss falls below zero without bound ({c.init:.4g} -> {c.tail:.4g})"
    )
    return [
        Finding(
            id="loss_increasing",
            severity="error",
            message=(
                f"{what}: a loss that is bounded below (cross-entropy, squared error) cannot, so "
                "its sign is probably flipped and the real error is going up"
            ),
            evidence={**base, "fall": _r(fall), "scale": _r(scale), "mirrored_start": mirrored},
            suggestions=[_SIGN, _lower_lr(learning_rate), _SOFTMAX_AXIS],
        )
    ]


def _increasing(c: _Curve, learning_rate: float | None, base: dict) -> list[Finding] | None:
    """loss_increasing (+ lr_too_high when it rises from the start), or None."""
    rise = c.tail - c.start
    se = _median_se(c.start_pair, (c.sigma_tail, c.w))
    if not (rise > INCREASE_REL * abs(c.start) and rise > Z_SIG * se):
        return None
    above = _first(c.smooth > c.start + INCREASE_REL * abs(c.start))
    onset = _rise_start(c, above if above is not None else c.m - 1)
    early = onset < EARLY_FRACTION * c.m
    findings = [
        Finding(
            id="loss_increasing",
            severity="error",
            message=(
                f"the loss goes up: from {c.start:.4g} at the start to {c.tail:.4g} over the "
                f"last {c.w} steps ({rise / abs(c.start):+.0%})"
            ),
            evidence={
                **base,
                "relative_change": _r(rise / abs(c.start)),
                "z": _r(rise / se) if se > 0 else None,
                "onset_step": c.step(onset),
            },
            suggestions=[_SIGN, _lower_lr(learning_rate), _SOFTMAX_AXIS],
        )
    ]
    if early:
        findings.append(_lr_too_high("increasing", onset, c, learning_rate, base))
    return findings


def _rise_start(c: _Curve, until: int) -> int:
    """Where a rise began: the lowest point of the smoothed loss up to index `until`."""
    return int(np.argmin(c.smooth[: until + 1]))


def _never_left(c: _Curve) -> bool:
    """Whether the loss never left its initial level: no segment is clearly below the start."""
    seg = int(np.argmin(c.seg_median))
    dip = c.start - float(c.seg_median[seg])
    se_dip = _median_se(c.start_pair, (float(c.seg_sigma[seg]), int(c.seg_len[seg])))
    return bool(dip <= max(Z_SIG * se_dip, NEVER_LEFT_FLOOR * c.start))


def _oscillating(c: _Curve, learning_rate: float | None, base: dict) -> list[Finding] | None:
    """loss_oscillating (+ lr_too_high when it swings from the start), or None.

    Swings this large make window medians jump between levels, so the levels here are
    interquartile means, and "no net progress" means no clear decrease (start to end, first half
    to second half) and no clear rise: each within 10% (20% up) or within Z_SIG standard errors.
    """
    level = abs(c.level)
    if c.m < OSC_MIN_POINTS or c.swing < OSC_MIN_REL * level:
        return None
    start = c.start if c.start_from_first_steps else c.head_iqm
    se = MEDIAN_SE * c.swing * math.sqrt(2.0 / c.w)
    se_half = MEDIAN_SE * c.swing * math.sqrt(4.0 / c.m)
    change = c.tail_iqm - start
    half_change = c.halves_iqm[1] - c.halves_iqm[0]
    clear_drop = -change > max(PLATEAU_MAX_DECREASE * start, Z_SIG * se) or -half_change > max(
        PLATEAU_MAX_DECREASE * start, Z_SIG * se_half
    )
    clear_rise = change > max(INCREASE_REL * start, Z_SIG * se)
    if clear_drop or clear_rise:
        return None
    never_left = _never_left(c)
    findings = [
        Finding(
            id="loss_oscillating",
            severity="error" if never_left else "warning",
            message=(
                f"the loss swings widely (robust scale {c.swing:.3g}, {c.swing / level:.0%} of its "
                f"level {c.level:.4g}) without net progress ({start:.4g} -> {c.tail_iqm:.4g})"
            ),
            evidence={
                **base,
                "swing_scale": _r(c.swing),
                "relative_swing": _r(c.swing / level),
                "start_iqm": _r(start),
                "end_iqm": _r(c.tail_iqm),
                "halves_iqm": [_r(v) for v in c.halves_iqm],
                "never_left_start": never_left,
            },
            suggestions=[_lower_lr(learning_rate), _DATA],
        )
    ]
    early = c.y[: max(OSC_MIN_POINTS, int(EARLY_FRACTION * c.m))]
    if _swing_sigma(early) >= OSC_MIN_REL * abs(_iqm(early)):
        findings.append(_lr_too_high("oscillating", 0, c, learning_rate, base))
    return findings


def _flat(
    c: _Curve, initial_expected: float | None, learning_rate: float | None, base: dict
) -> list[Finding]:
    """loss_plateau, with lr_too_low when the shape or the value says so, or []."""
    flat = _flat_since(c)
    if flat is None:
        return []
    no_progress, since = flat
    decrease = c.start - c.tail
    never_left = _never_left(c)
    severity = "error" if never_left else "warning"
    evidence = {
        **base,
        "relative_decrease": _r(decrease / c.start),
        "segment_medians": [_r(v) for v in c.seg_median],
        "never_left_start": never_left,
    }
    steady, steady_drop, late_drop = _steady_decrease(c)
    rel_noise = c.sigma_tail / c.tail if c.tail > 0 else 0.0
    # The loss sitting at ln C with almost no batch-to-batch variation: constant outputs.
    constant_outputs = bool(
        initial_expected
        and abs(c.tail - initial_expected) < 0.02 * initial_expected
        and rel_noise < 0.01
    )
    if constant_outputs:
        causes = [_REGULARIZATION, _GRADIENTS, _raise_lr(learning_rate), _LOGITS, _DATA]
    else:
        causes = [_raise_lr(learning_rate), _GRADIENTS, _REGULARIZATION, _LOGITS, _DATA]
    where = "from the start" if no_progress else f"since the first {c.w} steps"
    plateau = Finding(
        id="loss_plateau",
        severity=severity,
        message=(
            f"the loss plateaus {where}: {since:.4g} -> {c.tail:.4g} "
            f"({(c.tail - since) / since:+.1%}) over {c.m} steps"
            + (", never leaving its initial level" if never_left else "")
        ),
        evidence={
            **evidence,
            "relative_noise": _r(rel_noise),
            "constant_outputs": constant_outputs,
        },
        suggestions=causes,
    )
    tiny_lr = learning_rate is not None and 0 < learning_rate < LR_GRID_LOW
    if not (steady or tiny_lr):
        return [plateau]
    return [plateau, _lr_too_low(c, steady, steady_drop, late_drop, learning_rate, base)]


def _lr_too_low(
    c: _Curve,
    steady: bool,
    steady_drop: float,
    late_drop: float,
    learning_rate: float | None,
    base: dict,
) -> Finding:
    """lr_too_low beside a plateau: the loss still falls steadily, or the rate is tiny."""
    per_1000 = steady_drop / c.start / max(c.m * (N_SEGMENTS - 1) / N_SEGMENTS, 1) * 1000
    return Finding(
        id="lr_too_low",
        severity="warning",
        message=(
            f"the loss falls steadily but only by {steady_drop / c.start:.1%} over {c.m} steps: "
            "the learning rate looks too low"
            if steady
            else f"the learning rate {learning_rate:g} is below the usual range ({LR_GRID_LOW:g}+)"
        ),
        evidence={
            **base,
            "relative_decrease": _r(steady_drop / c.start),
            "relative_decrease_per_1000_steps": _r(per_1000),
            "still_falling_share": _r(late_drop / steady_drop) if steady_drop > 0 else None,
            "suggested_factor": LR_FACTOR,
        },
        suggestions=[_raise_lr(learning_rate)],
    )


def _flat_since(c: _Curve) -> tuple[bool, float] | None:
    """(from the start, level): whether the loss is flat from the start or only after its first
    window, and the level it stays at; None unless it is flat with confidence."""
    # No meaningful decrease, with confidence: even decrease + Z_FLAT standard errors stays below
    # PLATEAU_MAX_DECREASE, so a short or noisy curve whose trend is unclear is not called flat.
    decrease = c.start - c.tail
    se = _median_se(c.start_pair, (c.sigma_tail, c.w))
    no_progress = decrease + Z_FLAT * se < PLATEAU_MAX_DECREASE * c.start
    se_early = _median_se((c.sigma_head, c.w), (c.sigma_tail, c.w))
    stuck_early = (
        c.head - c.tail + Z_FLAT * se_early < PLATEAU_MAX_DECREASE * c.head
        and c.tail > STUCK_MIN_FRACTION * c.init
    )
    # From where it is flat; a rise too noisy to call increasing is no plateau: just unclear.
    since = c.start if no_progress else c.head
    if not (no_progress or stuck_early) or c.tail - since > INCREASE_REL * since:
        return None
    return no_progress, since


def _steady_decrease(c: _Curve) -> tuple[bool, float, float]:
    """(steady, drop, late drop): whether the loss falls significantly and is still falling at
    the end (lr_too_low from the shape), its drop from the first segment to the last, and the
    part of that drop after the middle segment."""
    first_seg, mid_seg, last_seg = c.seg_median[0], c.seg_median[N_SEGMENTS // 2], c.seg_median[-1]
    steady_drop = float(first_seg - last_seg)
    se_drop = _median_se(
        (float(c.seg_sigma[0]), int(c.seg_len[0])), (float(c.seg_sigma[-1]), int(c.seg_len[-1]))
    )
    steady = (
        steady_drop > Z_SIG * se_drop
        and steady_drop > NEVER_LEFT_FLOOR * c.start
        and (mid_seg - last_seg) >= STEADY_LATE_SHARE * steady_drop
    )
    return bool(steady), steady_drop, mid_seg - last_seg


def _lr_too_high(
    shape: str, onset: int, c: _Curve, learning_rate: float | None, base: dict
) -> Finding:
    """lr_too_high beside a curve that goes wrong from its first steps."""
    return Finding(
        id="lr_too_high",
        severity="warning",
        message=(
            f"the loss is {shape} from step {c.step(onset)} of {c.m}, right from the start of "
            "training: the signature of a learning rate that is too high"
        ),
        evidence={
            **base,
            "shape": shape,
            "onset_step": c.step(onset),
            "suggested_factor": LR_FACTOR,
        },
        suggestions=[
            _lower_lr(learning_rate),
            "or keep it and add warmup (--config.optimizer.schedule.warmup_steps) or gradient "
            "clipping (--config.optimizer.clip_norm=1.0)",
        ],
    )


def expected_initial_loss(y: np.ndarray, num_classes: int) -> float:
    """Cross-entropy of an untrained model: the entropy of the label distribution (ln C)."""
    freq = np.bincount(y, minlength=num_classes) / max(len(y), 1)
    freq = freq[freq > 0]
    return float(-(freq * np.log(freq)).sum()) if len(freq) > 1 else math.log(num_classes)


def curve_findings(
    result: "FitResult",
    num_classes: int,
    y,
    lr: float,
    initial_expected: float | None = None,
) -> list[Finding]:
    """Diagnose a short run's per-step loss (a NaN appended where the run stopped on one).

    `initial_expected`: the loss an untrained model starts near (tasks.initial_loss_reference);
    by default the class labels' entropy."""
    losses = result.step_losses
    if result.divergence:
        losses = np.append(losses, np.nan)
    val = [(r["step"], r["val_loss"]) for r in result.records if "val_loss" in r]
    return diagnose_curve(
        losses,
        val=val,
        initial_expected=(
            expected_initial_loss(y, num_classes) if initial_expected is None else initial_expected
        ),
        learning_rate=lr,
    )
