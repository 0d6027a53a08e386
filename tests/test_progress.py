"""Progress bars move at least once a second, counting steps as the device finishes them, with
one rate; a slow step runs in the step form so that its bar can count each step (from its
second call when the first ran under the scan, its step having no operation a scan may slow)."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from tests.conftest import small_config
from workflow import engine, experiment
from workflow.engine import loop_form
from workflow.engine.progress import REFRESH_SECONDS, Progress


class Output:
    """A step's output that the device finishes when the test says so."""

    def __init__(self):
        self.done = False

    def is_ready(self) -> bool:
        return self.done


def wait_for(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_the_bar_counts_finished_steps_while_the_call_runs_and_only_those():
    outputs = [Output() for _ in range(5)]
    with Progress(5, "train", "step", enabled=True) as bar:
        for output in outputs:
            bar.watch(output)
        for output in outputs[:3]:
            output.done = True
        assert wait_for(lambda: bar._bar.n == 3)  # without any call returning
        time.sleep(3 * REFRESH_SECONDS)
        assert bar._bar.n == 3  # the unfinished steps are not counted
        bar.advance_to(5)  # the call returned: the exact count
        assert bar._bar.n == 5


def test_a_disabled_bar_starts_no_thread_and_counts_nothing():
    bar = Progress(5, "train", "step", enabled=False)
    bar.watch(Output())
    assert bar._thread is None and not bar._pending
    bar.close()


def slow_step(carry, x):
    jax.debug.callback(lambda: time.sleep(0.06))  # a step as slow as a big model's on a CPU
    return carry + x, carry


def test_a_slow_step_with_convolutions_runs_in_the_step_form_and_each_step_reaches_the_bar(
    monkeypatch,
):
    monkeypatch.setattr(loop_form, "RISKY_OPS", ("stablehlo",))  # the step races the scan
    loop_form.clear_cache()
    loop = loop_form.StepLoop(slow_step, num_shared=0)
    watched = []
    carry, outputs = loop(jnp.zeros(()), jnp.ones((25,)), watch=watched.append)
    assert loop.choice.form == "step" and loop.choice.source == "slow_step"
    assert loop.choice.step_seconds_per_step >= loop_form.SLOW_STEP_SECONDS
    assert loop.choice.scan_seconds_per_step is None  # the scan was not compiled to time it
    assert len(watched) == 25
    assert float(carry) == 25.0 and np.array_equal(outputs, np.arange(25.0))
    assert "progress shows per step" in loop.choice.describe()


def test_a_slow_step_without_them_leaves_the_scan_after_its_first_call():
    loop_form.clear_cache()
    loop = loop_form.StepLoop(slow_step, num_shared=0)
    watched = []
    carry, outputs = loop(jnp.zeros(()), jnp.ones((25,)), watch=watched.append)
    assert loop.choice.form == "step" and loop.choice.source == "slow_step"
    assert loop.choice.scan_seconds_per_step >= loop_form.SLOW_STEP_SECONDS
    assert loop.choice.step_seconds_per_step is None  # timed under the scan only
    assert watched == []  # the first call ran its steps under the scan
    assert float(carry) == 25.0 and np.array_equal(outputs, np.arange(25.0))
    carry, outputs = loop(carry, jnp.ones((25,)), watch=watched.append)
    assert len(watched) == 25  # each later step reaches the bar
    assert float(carry) == 50.0 and np.array_equal(outputs, np.arange(25.0, 50.0))
    assert "under lax.scan at its first call" in loop.choice.describe()
    assert "progress shows per step" in loop.choice.describe()


def fast_step(carry, x):
    return carry + x, carry


def test_a_fast_step_with_convolutions_is_timed_in_both_forms(monkeypatch):
    monkeypatch.setattr(loop_form, "RISKY_OPS", ("stablehlo",))
    loop_form.clear_cache()
    loop = loop_form.StepLoop(fast_step, num_shared=0)
    loop(jnp.zeros(()), jnp.ones((25,)))
    assert loop.choice.source == "measured" and loop.choice.scan_seconds_per_step is not None
    assert loop.choice.step_seconds_per_step is not None


def test_a_fast_step_without_them_runs_under_the_scan_unraced():
    loop_form.clear_cache()
    loop = loop_form.StepLoop(fast_step, num_shared=0)
    carry, outputs = loop(jnp.zeros(()), jnp.ones((25,)))
    choice = loop.choice
    assert (choice.form, choice.source) == ("scan", "no_risky_ops")
    assert choice.scan_seconds_per_step > 0 and choice.step_seconds_per_step is None
    assert loop._last.step_compiled is None  # the step form was never compiled
    assert float(carry) == 25.0 and np.array_equal(outputs, np.arange(25.0))


def test_the_training_bar_shows_one_rate(capsys):
    config = small_config(progress=True)
    setup = experiment.prepare(config)
    engine.fit(setup.task, setup.state, setup.dataset, config, progress=True)
    shown = capsys.readouterr().err
    assert "step/s" in shown or "s/step" in shown
    assert "steps_per_s" not in shown  # no second rate beside tqdm's


def test_a_bar_advanced_by_calls_counts_their_units():
    with Progress(10, "round 1: 4 trials", "step", enabled=True) as bar:
        bar.advance(3)
        bar.advance(4)
        assert bar._bar.n == 7
