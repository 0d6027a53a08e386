"""Detectors added for the zoo's user-written faults: each fires on its fault, stays quiet on a
correct setup and on the look-alikes that are not the fault."""

import math

import numpy as np
import pytest

from workflow.diagnostics.checks.outputs import bounded_loss_floor, bounded_outputs_finding

CE = "softmax_cross_entropy"


def saturated(low: float, high: float, n: int = 32, c: int = 10) -> np.ndarray:
    """Outputs after memorizing a batch through a bounded head: the true class at the top."""
    out = np.full((n, c), low + 1e-4)
    out[np.arange(n), np.arange(n) % c] = high - 1e-4
    return out


def test_the_loss_floor_of_bounded_outputs():
    assert bounded_loss_floor(0.0, 1.0, 10) == pytest.approx(math.log(math.e + 9) - 1)
    assert bounded_loss_floor(0.0, 1.0, 10) == pytest.approx(1.4612, abs=1e-4)
    assert bounded_loss_floor(-1.0, 1.0, 10) == pytest.approx(math.log(math.e + 9 / math.e) - 1)


@pytest.mark.parametrize("head,low,high", [("sigmoid", 0.0, 1.0), ("tanh", -1.0, 1.0)])
def test_a_sigmoid_or_tanh_head_is_probabilities_into_a_logits_loss(head, low, high):
    floor = bounded_loss_floor(low, high, 10)
    finding = bounded_outputs_finding(saturated(low, high), floor * 1.001, 10, CE, True)
    assert finding.id == "softmax_before_loss" and finding.severity == "error"
    assert f"a {head} head" in finding.message
    assert finding.evidence["loss_floor"] == pytest.approx(floor)
    # Under a loss of the user's own: a warning, as for a softmax head.
    assert bounded_outputs_finding(saturated(low, high), floor, 10, "mine", False).severity == (
        "warning"
    )


def test_logits_and_unmoved_outputs_are_not_a_bounded_head():
    rng = np.random.default_rng(0)
    # Unbounded logits after memorizing: far outside [-1, 1].
    logits = saturated(-8.0, 8.0)
    assert bounded_outputs_finding(logits, 0.01, 10, CE, True) is None
    # Small logits of a model that barely moved (a tiny learning rate): inside [-1, 1] but not
    # saturated, and the loss near ln C, above the floor.
    small = rng.normal(0.0, 0.3, (32, 10)).clip(-0.99, 0.99)
    assert bounded_outputs_finding(small, 2.3, 10, CE, True) is None
    # Saturated but the loss far above the floor: not what a bounded head gives.
    assert bounded_outputs_finding(saturated(0.0, 1.0), 3.0, 10, CE, True) is None
    assert bounded_outputs_finding(None, 1.46, 10, CE, True) is None
