"""The learning-rate range test: noisy curves of known shape, edge cases, findings, a real sweep."""

import json
import math

import jax
import numpy as np
import optax
import pytest

from tests.conftest import small_config
from workflow import experiment
from workflow.errors import UsageError
from workflow.reporting import rundir
from workflow.search import range_test
from workflow.search.range_test import analyze_range_test, range_test_findings

NUM_STEPS = 200  # run_range_test's default: 25 points a decade from 1e-7 to 10
NUM_CURVES = 300  # noise seeds, each with its own curve shape


# ----------------------------------------------------------------------------- synthetic curves


def make_curve(rng: np.random.Generator, num_steps: int = NUM_STEPS) -> dict:
    """A range-test loss of known shape in log10(lr): flat, a descent, a minimum, a blow-up.

    Flat at L0 until `a`, a cosine descent over 1-3 decades to a floor 3-20x lower, then an
    exponential blow-up starting 0.2-1 decade after the descent ends. The true descent band is
    (a, x_min): the loss falls at every lr in it, and nowhere else.
    """
    x = np.linspace(-7.0, 1.0, num_steps)
    l0 = rng.uniform(1.5, 2.5)
    a, width = rng.uniform(-5.5, -3.0), rng.uniform(1.0, 3.0)
    floor = l0 * rng.uniform(0.05, 0.35)
    c, scale = a + width + rng.uniform(0.2, 1.0), rng.uniform(0.1, 0.3)

    def loss(x):
        t = np.clip((x - a) / width, 0.0, 1.0)
        descent = floor + (l0 - floor) * 0.5 * (1.0 + np.cos(np.pi * t))
        return descent + floor * np.exp((x - c) / scale)

    fine = np.linspace(-7.0, 1.0, 40_001)
    values = loss(fine)
    x_min = fine[np.argmin(values)]
    blown = fine[(fine > x_min) & (values > 4.0 * values.min())]
    return {
        "x": x,
        "lrs": 10.0**x,
        "clean": loss(x),
        "loss": loss,
        "a": a,
        "x_min": x_min,
        "min_loss": values.min(),
        "x_div": blown[0] if blown.size else math.inf,
    }


def add_noise(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    """Mini-batch noise: 5-20% multiplicative (lognormal), and 3% of steps a 1.5-4x spike."""
    sigma = rng.uniform(0.05, 0.2)
    noisy = clean * np.exp(sigma * rng.standard_normal(len(clean)))
    spikes = rng.random(len(clean)) < 0.03
    noisy[spikes] *= rng.uniform(1.5, 4.0, spikes.sum())
    return noisy


def lightning_suggestion(lrs, losses, beta=0.98, factor=4.0, skip_begin=10, skip_end=1) -> float:
    """PyTorch Lightning's lr_find rule: steepest gradient of the debiased EMA of the loss.

    As in lightning.pytorch.tuner.lr_finder: the EMA (beta 0.98, bias-corrected) is recorded per
    step, the sweep stops once it exceeds 4x its best, and the suggestion is the argmin of its
    gradient after skipping the first 10 and the last point.
    """
    avg, best, smoothed = 0.0, math.inf, []
    for step, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        value = avg / (1 - beta ** (step + 1))
        smoothed.append(value)
        if step > 1 and value > factor * best:
            break
        best = min(best, value)
    segment = np.asarray(smoothed[skip_begin:-skip_end])
    return float(lrs[int(np.argmin(np.gradient(segment))) + skip_begin])


@pytest.fixture(scope="module")
def noisy_curves():
    """NUM_CURVES curves, each with its own shape and noise, and our analysis of each."""
    curves = []
    for seed in range(NUM_CURVES):
        rng = np.random.default_rng(seed)
        curve = make_curve(rng)
        curve["noisy"] = add_noise(rng, curve["clean"])
        curve["result"] = analyze_range_test(curve["lrs"], curve["noisy"])
        curves.append(curve)
    return curves


def inside_true_band(curve: dict, lr: float | None) -> bool:
    return lr is not None and curve["a"] < math.log10(lr) < curve["x_min"]


# ----------------------------------------------------------------------------- analysis


def test_suggestion_inside_true_band_on_every_noisy_curve(noisy_curves):
    misses = [
        (seed, c["a"], c["x_min"], c["result"].suggested_lr, c["result"].status)
        for seed, c in enumerate(noisy_curves)
        if not inside_true_band(c, c["result"].suggested_lr)
    ]
    assert not misses, misses
    for c in noisy_curves:
        r = c["result"]
        lo, hi = r.band
        assert lo <= r.suggested_lr <= hi
        assert lo < hi and r.status == "ok" and r.found
        # Well inside: at least a fifth of a decade from the true edges on these curves.
        assert c["a"] + 0.2 < math.log10(r.suggested_lr) < c["x_min"] - 0.2


def test_steepest_gradient_rule_fails_on_the_same_noisy_curves(noisy_curves):
    lightning_hits = [
        inside_true_band(c, lightning_suggestion(c["lrs"], c["noisy"])) for c in noisy_curves
    ]
    clean_hits = [
        inside_true_band(c, lightning_suggestion(c["lrs"], c["clean"])) for c in noisy_curves
    ]
    # Noise, not the curve shapes, is what breaks it: on the clean curves it is always right.
    assert all(clean_hits)
    miss_rate = 1.0 - np.mean(lightning_hits)
    assert miss_rate > 0.25, miss_rate  # measured: 0.54 (162 of 300; ours: 0)


def test_stop_lands_in_the_blow_up(noisy_curves):
    checked = 0
    for c in noisy_curves:
        r = c["result"]
        if c["x_div"] > c["x"][-1] - 0.2:
            continue  # no clear blow-up inside the range swept
        checked += 1
        x_stop = c["x"][r.stop_index]
        assert r.diverged and r.divergence_reason == "loss"
        # After the minimum, where the true loss has at least doubled, and within a fifth of a
        # decade of where it reached divergence_factor x its minimum.
        assert x_stop > c["x_min"]
        assert c["loss"](x_stop) > 2.0 * c["min_loss"]
        assert abs(x_stop - c["x_div"]) < 0.2, (x_stop, c["x_div"])
        assert r.best_index < r.stop_index
    assert checked > NUM_CURVES // 2


def test_smoothing_does_not_lag():
    c = make_curve(np.random.default_rng(7))
    r = analyze_range_test(c["lrs"], c["clean"])
    assert abs(c["x"][r.best_index] - c["x_min"]) < 0.1  # an EMA with beta 0.98 lags ~2 decades
    inner = slice(5, r.stop_index - 5)
    np.testing.assert_allclose(r.smoothed[inner], c["clean"][inner], rtol=0.05)


def test_flat_noisy_loss_has_no_band():
    lrs = np.geomspace(1e-7, 10, NUM_STEPS)
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        r = analyze_range_test(lrs, add_noise(rng, np.full(NUM_STEPS, 2.3)))
        assert r.status == "no_descent" and not r.found, (seed, r.significance)
        assert r.band is None and r.suggested_lr is None and not r.diverged
        assert r.stop_index == NUM_STEPS - 1
    assert json.dumps(r.to_json())  # None, not NaN, in summary.json


def test_rising_loss_has_no_band_and_diverges():
    lrs = np.geomspace(1e-7, 10, NUM_STEPS)
    rising = 2.3 * np.exp(np.linspace(0, 3, NUM_STEPS))
    r = analyze_range_test(lrs, add_noise(np.random.default_rng(0), rising))
    assert not r.found and r.diverged and r.divergence_reason == "loss"


def test_loss_falling_up_to_max_lr_leaves_band_open_at_top():
    x = np.linspace(-7, 1, NUM_STEPS)
    clean = 0.3 + 2.0 / (1 + np.exp(2 * (x - 0.5)))  # still falling at lr = 10
    r = analyze_range_test(10**x, add_noise(np.random.default_rng(0), clean))
    assert r.found and r.band_open_top and not r.band_open_bottom and not r.diverged
    assert r.band[0] <= r.suggested_lr <= r.band[1]
    assert r.band[1] > 3.0


def test_loss_falling_from_min_lr_leaves_band_open_at_bottom():
    x = np.linspace(-7, 1, NUM_STEPS)
    clean = 0.3 + 2.0 / (1 + np.exp(2 * (x + 7.5)))  # already falling at lr = 1e-7
    r = analyze_range_test(10**x, add_noise(np.random.default_rng(0), clean))
    assert r.found and r.band_open_bottom and not r.band_open_top
    assert r.band[0] == pytest.approx(1e-7)
    assert r.band[0] <= r.suggested_lr <= r.band[1]


def test_nonfinite_loss_is_divergence():
    c = make_curve(np.random.default_rng(3))
    noisy = add_noise(np.random.default_rng(4), c["clean"])
    first_bad = int(np.searchsorted(c["x"], c["x_min"])) + 10
    noisy[first_bad] = np.inf
    noisy[first_bad + 1 :] = np.nan
    r = analyze_range_test(c["lrs"], noisy)
    assert r.diverged and r.stop_index <= first_bad
    assert np.all(np.isnan(r.smoothed[first_bad:]))
    assert inside_true_band(c, r.suggested_lr)

    nan_first = analyze_range_test(c["lrs"], np.full(NUM_STEPS, np.nan))
    assert nan_first.diverged and nan_first.stop_index == 0 and not nan_first.found
    assert nan_first.divergence_reason == "nonfinite"
    assert json.dumps(nan_first.to_json())


def test_invalid_inputs():
    with pytest.raises(ValueError, match="one length"):
        analyze_range_test([1e-3, 1e-2], [1.0])
    with pytest.raises(ValueError, match="increasing"):
        analyze_range_test([1e-2, 1e-3], [1.0, 0.9])
    with pytest.raises(ValueError, match="divergence_factor"):
        analyze_range_test([1e-3, 1e-2], [1.0, 0.9], divergence_factor=1.0)
    assert analyze_range_test([1e-3, 1e-2], [1.0, 0.5]).status == "too_few_points"


# ----------------------------------------------------------------------------- findings


def test_findings_fire_outside_the_band_and_stay_quiet_inside(noisy_curves):
    r = noisy_curves[0]["result"]
    lo, hi = r.band
    assert range_test_findings(r, r.suggested_lr) == []
    assert range_test_findings(r, math.sqrt(lo * hi)) == []

    (high,) = range_test_findings(r, hi * 10)
    assert high.id == "lr_too_high" and high.severity == "warning"
    assert high.evidence["configured_lr"] == hi * 10
    assert high.evidence["band"] == [lo, hi]
    assert high.evidence["suggested_lr"] == r.suggested_lr
    assert f"{r.suggested_lr:.3g}" in high.suggestions[0]

    (low,) = range_test_findings(r, lo / 100)
    assert low.id == "lr_too_low" and low.severity == "warning"
    assert f"{r.suggested_lr:.3g}" in low.suggestions[0]
    (slightly_low,) = range_test_findings(r, lo / 5)
    assert slightly_low.id == "lr_too_low" and slightly_low.severity == "info"
    assert range_test_findings(r, lo / 2) == []  # not *well* below the band
    assert json.dumps([f.to_json() for f in (high, low)])


def test_findings_without_a_band():
    lrs = np.geomspace(1e-7, 10, NUM_STEPS)
    flat = analyze_range_test(lrs, add_noise(np.random.default_rng(0), np.full(NUM_STEPS, 2.3)))
    assert range_test_findings(flat, 1e-3) == []
    blown = analyze_range_test(lrs, np.where(lrs < 1e-2, 2.3, np.nan))
    assert not blown.found and blown.diverged
    (high,) = range_test_findings(blown, 0.1)
    assert high.id == "lr_too_high"
    assert range_test_findings(blown, 1e-3) == []


def test_open_top_band_is_never_too_high():
    x = np.linspace(-7, 1, NUM_STEPS)
    r = analyze_range_test(10**x, 0.3 + 2.0 / (1 + np.exp(2 * (x - 0.5))))
    assert r.band_open_top
    assert range_test_findings(r, 5.0) == []


# ----------------------------------------------------------------------------- the real sweep


@pytest.fixture(scope="module")
def real_sweep():
    """One sweep of the tiny tabular MLP (Adam), from 1e-6 to 100 in 100 steps, 2 repeats."""
    setup = experiment.prepare(small_config())
    before = jax.tree.map(np.array, setup.state)
    result = range_test.run_range_test(
        setup.task,
        setup.state,
        setup.dataset,
        min_lr=1e-6,
        max_lr=100.0,
        num_steps=100,
        batch_size=32,
        repeats=2,
        steps_per_call=20,
    )
    return setup, before, result


def test_real_sweep_suggests_a_sensible_lr(real_sweep):
    _, _, r = real_sweep
    assert r.status == "ok" and r.diverged
    assert 1e-4 < r.suggested_lr < 1.0
    assert r.band[0] <= r.suggested_lr <= r.band[1]
    assert r.start_loss > 2 * r.min_loss
    # Exponential schedule from min_lr, one step per lr.
    np.testing.assert_allclose(r.learning_rates, np.geomspace(1e-6, 100.0, 100)[: len(r.losses)])
    assert r.repeats == 2 and r.num_steps == 100
    # Adam blows up well before lr = 100: the sweep stopped after the chunk that saw it.
    assert r.stop_index < len(r.losses) < 100
    assert len(r.losses) % 20 == 0
    summary = json.loads(json.dumps(r.to_json()))
    assert summary["steps_run"] == len(r.losses) and summary["suggested_lr"] == r.suggested_lr


def test_real_sweep_leaves_the_input_state_unchanged(real_sweep):
    setup, before, _ = real_sweep
    after = jax.tree.map(np.array, setup.state)  # raises if a buffer had been donated
    assert jax.tree.structure(before) == jax.tree.structure(after)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(setup.state.opt_state.hyperparams["learning_rate"]) == pytest.approx(3e-3)
    assert int(setup.state.step) == 0


def test_plot_is_written(real_sweep, tmp_path):
    _, _, r = real_sweep
    run = rundir.RunDir(str(tmp_path))
    path = run.save_figure(rundir.PLOT_LR_RANGE_TEST, lambda: range_test.plot_range_test(r))
    with open(tmp_path / path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    flat = analyze_range_test(np.geomspace(1e-7, 10, 50), np.full(50, 2.3))
    run = rundir.RunDir(str(tmp_path / "flat"))
    run.save_figure(rundir.PLOT_LR_RANGE_TEST, lambda: range_test.plot_range_test(flat))
    assert (tmp_path / "flat" / "plots" / "lr_range_test.png").stat().st_size > 1000


def test_uneven_chunks_run_every_step_once(real_sweep):
    setup, _, _ = real_sweep
    r = range_test.run_range_test(
        setup.task,
        setup.state,
        setup.dataset,
        min_lr=1e-6,
        max_lr=1e-3,
        num_steps=30,
        batch_size=32,
        repeats=1,
        steps_per_call=20,
    )
    assert len(r.losses) == 30 and np.all(np.isfinite(r.losses)) and not r.diverged
    np.testing.assert_allclose(r.learning_rates, np.geomspace(1e-6, 1e-3, 30))


def test_run_range_test_rejects_bad_input(real_sweep):
    setup, _, _ = real_sweep
    with pytest.raises(UsageError, match="min_lr"):
        range_test.run_range_test(setup.task, setup.state, setup.dataset, min_lr=1.0, max_lr=0.1)
    with pytest.raises(UsageError, match="repeats"):
        range_test.run_range_test(setup.task, setup.state, setup.dataset, repeats=0)
    plain = setup.state.replace(opt_state=optax.sgd(0.1).init(setup.state.params))
    with pytest.raises(UsageError, match="inject_hyperparams"):
        range_test.run_range_test(setup.task, plain, setup.dataset)
