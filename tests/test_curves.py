"""Loss-curve diagnosis: synthetic curves with realistic mini-batch noise, then a few real runs."""

import json
import math

import numpy as np
import pytest

from tests.conftest import small_config
from workflow.diagnostics.curves import diagnose_curve
from workflow.diagnostics.findings import SEVERITIES, Finding, kind

LN10 = math.log(10)
VOCABULARY = {
    "nan_or_inf",
    "loss_exploding",
    "loss_increasing",
    "loss_oscillating",
    "loss_plateau",
    "lr_too_high",
    "lr_too_low",
}


def noisy(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """Multiplicative (log-normal) mini-batch noise of relative size ~sigma, mean preserved."""
    rng = np.random.default_rng(seed)
    return clean * np.exp(sigma * rng.standard_normal(len(clean)) - sigma**2 / 2)


def ids(findings: list[Finding]) -> list[str]:
    """The finding ids, in order."""
    return [f.id for f in findings]


def leads(found: list[str], symptom: str) -> bool:
    """`symptom` is found, and only causes of it (ranked above it, see findings.KINDS) precede."""
    return symptom in found and all(
        symptom in kind(cause).explains for cause in found[: found.index(symptom)]
    )


def check_well_formed(findings: list[Finding]) -> None:
    """Every finding uses the vocabulary, has evidence and ranked suggestions, and is JSON."""
    for f in findings:
        assert f.id in VOCABULARY and f.severity in SEVERITIES
        assert f.message and f.evidence and f.suggestions
        json.dumps(f.to_json(), allow_nan=False)
    ranks = [SEVERITIES.index(f.severity) for f in findings]
    assert ranks == sorted(ranks)


# ----------------------------------------------------------------------------- healthy curves


@pytest.mark.parametrize("n", [50, 100, 300, 1000, 3000])
@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.3])
def test_healthy_decay_gives_no_finding(n, sigma):
    t = np.arange(n)
    shapes = {
        "exp to floor": (LN10 - 0.3) * np.exp(-t / (0.2 * n)) + 0.3,
        "exp to zero": LN10 * np.exp(-t / (0.1 * n)) + 1e-3,
        "power law": LN10 / (1 + t / (0.05 * n)) ** 0.7,
        "slow exp": LN10 * np.exp(-t / n),
    }
    for seed, (name, clean) in enumerate(shapes.items()):
        for expected in (None, LN10):
            y = noisy(clean, sigma, seed=1000 * n + seed)
            assert diagnose_curve(y, initial_expected=expected) == [], (name, expected)


@pytest.mark.parametrize("n", [200, 3000])
def test_fast_convergence_to_zero_then_flat_is_not_a_plateau(n):
    """Overfitting one batch: ~0 within 20 steps, then flat with heavy relative noise."""
    t = np.arange(n)
    clean = LN10 * np.exp(-t / 4) + 1e-4
    y = noisy(clean, 0.3, seed=1) * np.exp(0.7 * np.random.default_rng(2).standard_normal(n))
    for expected in (None, LN10):
        assert diagnose_curve(y, initial_expected=expected, learning_rate=3e-4) == []


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_slow_healthy_decay_is_not_flagged(sigma):
    """2.3 -> 1.2 over 3000 steps, linear or front-loaded: slow, but learning."""
    t = np.arange(3000) / 2999
    for seed, clean in enumerate([LN10 - 1.1 * t, LN10 - 1.1 * np.sqrt(t)]):
        y = noisy(clean, sigma, seed=seed)
        assert diagnose_curve(y, initial_expected=LN10, learning_rate=3e-4) == []


def test_short_curves_give_no_finding():
    """Fewer than 10 points: no shape verdict, whatever the shape."""
    t = np.arange(9)
    for clean in [1.0 + t, LN10 * np.exp(t), np.full(9, LN10), np.tile([0.5, 4.0], 5)[:9]]:
        assert diagnose_curve(noisy(clean, 0.1, seed=0), initial_expected=LN10) == []
    assert diagnose_curve(np.zeros(0)) == []


def test_a_nan_is_reported_even_in_a_short_curve():
    findings = diagnose_curve([2.3, 2.2, float("nan")])
    assert ids(findings) == ["nan_or_inf"]
    assert findings[0].evidence["step"] == 3


# ----------------------------------------------------------------------------- broken curves


def test_increasing():
    n = 500
    y = noisy(1.0 + 1.5 * np.arange(n) / n, 0.2, seed=3)
    findings = diagnose_curve(y, learning_rate=1e-3)
    check_well_formed(findings)
    # It rises from the first steps: lr_too_high, the cause, is promoted and read first.
    assert [(f.id, f.severity) for f in findings] == [
        ("lr_too_high", "error"),
        ("loss_increasing", "error"),
    ]
    rising = findings[1]
    assert "sign" in rising.suggestions[0]
    assert rising.evidence["relative_change"] > 0.5


def test_exploding():
    n = 400
    t = np.arange(n)
    y = noisy(LN10 * np.exp(-t / 50) + 0.2, 0.2, seed=4)
    y[300:] *= np.exp(0.4 * np.arange(100))
    findings = diagnose_curve(y, initial_expected=LN10)
    check_well_formed(findings)
    assert findings[0].id == "loss_exploding" and findings[0].severity == "error"
    assert 300 < findings[0].evidence["onset_step"] < 330
    # Late, after a healthy descent: numerics rank first and lr_too_high is not claimed.
    assert "exp" in findings[0].suggestions[0]
    assert "lr_too_high" not in ids(findings)


def test_exploding_then_nan():
    y = noisy(np.full(60, LN10), 0.05, seed=5) * np.exp(0.8 * np.arange(60))
    y = np.append(y, [np.inf, np.nan])
    findings = diagnose_curve(y, learning_rate=10.0)
    check_well_formed(findings)
    # The NaN ranks first (as in every stage), then lr_too_high: it explodes from the first steps.
    assert ids(findings) == ["nan_or_inf", "lr_too_high", "loss_exploding"]
    assert findings[0].evidence["step"] == 61
    # After an early explosion the learning rate is the first suggestion of both.
    assert "learning rate" in findings[0].suggestions[0]
    assert "learning rate" in findings[2].suggestions[0]


def test_sudden_nan_after_healthy_descent_ranks_numerics_first():
    y = noisy(LN10 * np.exp(-np.arange(200) / 40) + 0.1, 0.2, seed=6)
    y[150] = np.nan  # e.g. log(0) once the loss gets small
    findings = diagnose_curve(y)
    check_well_formed(findings)
    assert ids(findings) == ["nan_or_inf"]
    assert findings[0].evidence["step"] == 151 and not findings[0].evidence["grew_before"]
    assert "exp" in findings[0].suggestions[0]


def test_oscillating_between_two_levels():
    t = np.arange(300)
    y = np.where(t % 2 == 0, 0.5, 4.0) * noisy(np.ones(300), 0.1, seed=7)
    findings = diagnose_curve(y, initial_expected=LN10, learning_rate=0.5)
    check_well_formed(findings)
    assert ids(findings) == ["lr_too_high", "loss_oscillating"]  # the cause first
    assert findings[1].evidence["relative_swing"] > 1


@pytest.mark.parametrize("n", [300, 1000])
def test_oscillating_with_large_random_swings(n):
    """Swings of e-fold (log-normal sigma 1) around a flat mean: far beyond mini-batch noise."""
    findings = diagnose_curve(noisy(np.full(n, LN10), 1.0, seed=8), initial_expected=LN10)
    check_well_formed(findings)
    assert leads(ids(findings), "loss_oscillating")


@pytest.mark.parametrize("sigma", [0.03, 0.1])
def test_plateau_at_chance(sigma):
    findings = diagnose_curve(noisy(np.full(1000, LN10), sigma, seed=9), initial_expected=LN10)
    check_well_formed(findings)
    assert ids(findings) == ["loss_plateau"]
    assert findings[0].severity == "error"  # never left the initial level
    assert abs(findings[0].evidence["relative_decrease"]) < 0.1


def test_plateau_with_a_tiny_learning_rate_also_names_it():
    findings = diagnose_curve(noisy(np.full(300, LN10), 0.03, seed=10), learning_rate=1e-8)
    assert ids(findings) == ["lr_too_low", "loss_plateau"]  # the cause first
    assert "1e-07" in findings[0].suggestions[0]


def test_stuck_after_an_early_drop_is_a_plateau():
    t = np.arange(1000)
    clean = 1.9 + (LN10 - 1.9) * np.exp(-t / 10)  # 2.3 -> 1.9 in ~30 steps, then nothing
    findings = diagnose_curve(noisy(clean, 0.03, seed=11), initial_expected=LN10)
    assert findings[0].id == "loss_plateau" and findings[0].severity == "warning"


def test_collapse_to_chance_ranks_regularization_first():
    """Outputs driven to constants (loss exactly ln C, no batch noise): regularization/gradients."""
    t = np.arange(300)
    y = LN10 + 0.15 * np.exp(-t / 30) * noisy(np.ones(300), 0.3, seed=12)
    findings = diagnose_curve(y, initial_expected=LN10)
    assert findings[0].id == "loss_plateau" and findings[0].evidence["constant_outputs"]
    assert "regularization" in findings[0].suggestions[0]


def test_tiny_steady_decrease_is_lr_too_low():
    n = 1000
    y = noisy(LN10 - 0.1 * np.arange(n) / n, 0.03, seed=13)  # -4% over the whole run
    findings = diagnose_curve(y, initial_expected=LN10, learning_rate=1e-5)
    check_well_formed(findings)
    assert ids(findings) == ["lr_too_low", "loss_plateau"]
    low = findings[0]
    assert low.severity == "warning" and 0.01 < low.evidence["relative_decrease"] < 0.06
    assert low.evidence["suggested_factor"] == 10 and "0.0001" in low.suggestions[0]


def test_loss_with_flipped_sign_falls_without_bound():
    t = np.arange(300)
    y = -noisy(LN10 + 2.5 * t, 0.05, seed=14)
    for expected in (None, LN10):
        findings = diagnose_curve(y, initial_expected=expected)
        assert findings[0].id == "loss_increasing" and "sign" in findings[0].suggestions[0]


def test_trained_start_is_not_a_plateau():
    """A resumed run that starts converged: flat and noisy near zero is fine."""
    y = noisy(np.full(500, 0.05), 0.8, seed=15)
    assert diagnose_curve(y, initial_expected=LN10) == []


def test_val_is_evidence_only():
    y = noisy(np.full(500, LN10), 0.03, seed=16)
    val = [(100, 2.31), (200, float("nan")), (300, 2.29), (500, 2.30)]
    with_val, without = diagnose_curve(y, val=val), diagnose_curve(y)
    assert ids(with_val) == ids(without)
    assert with_val[0].evidence["val_loss"] == {
        "first": [100, 2.31],
        "last": [500, 2.3],
        "best": [300, 2.29],
    }


def test_rejects_a_2d_curve():
    with pytest.raises(ValueError, match="1-D"):
        diagnose_curve(np.ones((10, 2)))


# ----------------------------------------------------------------------------- real runs


def real_run(**overrides) -> np.ndarray:
    """Per-step training losses of a small synthetic-tabular run, trained in-process."""
    from workflow import engine, experiment

    config = small_config(num_steps=200, **overrides)
    if "dataset.name" in overrides:
        config.dataset.kwargs = {}  # the custom loader takes its own defaults
    setup = experiment.prepare(config)
    result = engine.fit(setup.task, setup.state, setup.dataset, setup.config, progress=False)
    losses = result.step_losses
    if result.divergence:  # fit stops at the first non-finite step and leaves it out
        losses = np.append(losses, np.nan)
    return losses


REAL_CASES = {
    "default": ({}, lambda found: found == []),
    "lr 1e-8": (
        {"optimizer.learning_rate": 1e-8},
        lambda found: found[0] in ("loss_plateau", "lr_too_low") and "lr_too_low" in found,
    ),
    "sgd lr 10": (
        {"optimizer.name": "sgd", "optimizer.learning_rate": 10.0},
        lambda found: found[0] in ("loss_exploding", "nan_or_inf"),
    ),
    "flipped loss": (
        {"loss": "tests.curve_bugs:negated_cross_entropy"},
        lambda found: found[:1] == ["loss_increasing"],
    ),
    "flipped gradient": (
        {"loss": "tests.curve_bugs:ascended_cross_entropy"},
        lambda found: leads(found, "loss_increasing"),
    ),
    "random labels": (
        {"dataset.name": "tests.curve_bugs:random_labels"},
        lambda found: "loss_exploding" not in found and "nan_or_inf" not in found,
    ),
}


@pytest.mark.parametrize("case", list(REAL_CASES))
def test_real_runs(case):
    overrides, expect = REAL_CASES[case]
    losses = real_run(**overrides)
    lr = overrides.get("optimizer.learning_rate", 3e-3)
    findings = diagnose_curve(losses, initial_expected=LN10, learning_rate=lr)
    check_well_formed(findings)
    assert expect(ids(findings)), (case, [f.message for f in findings])
