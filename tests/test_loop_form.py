"""The training loop's two forms (workflow/engine/loop_form.py): the same numbers whichever
runs, the choice between them made by measurement (for a step with an operation a scan may
slow, loop_form.RISKY_OPS; the scan, unraced, for any other), cached per program, and recorded.

"Bit for bit" holds where XLA compiles a step's operations to the same kernels in a loop body
and at the top of a program: the MLPs here (with augmentation, Dropout and BatchNorm) on one
device, and on 8 with replicated parameters or per-host data. Where it picks other kernels (a
2-D convolution as a loop nest under the scan, a library call alone; parameters sharded over
8 devices, partitioned differently in a loop body) the sums run in another order and the forms
agree to float rounding; those tests bound the difference.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import ROOT, read_summary, run_stage, small_config, train_run
from workflow import config_lib, debug, engine, experiment
from workflow.diagnostics.overfit import overfit_one_batch
from workflow.engine import loop_form, trials
from workflow.errors import UsageError
from workflow.search import range_test

FLAX_CNN = "benchmarks.user_models:FlaxCNN"
FLAX_MLP = "benchmarks.user_models:FlaxMLP"


@pytest.fixture(autouse=True)
def fresh_choices():
    """Each test measures afresh, and leaves no injected choice behind."""
    loop_form.clear_cache()
    yield
    loop_form.clear_cache()


def inject_timings(monkeypatch, step_seconds: float, scan_seconds: float) -> list:
    """Replace the measurement by fixed seconds per step, for every program (each counts as having
    an operation a scan may slow); returns the list of its calls."""
    calls = []
    monkeypatch.setattr(loop_form, "RISKY_OPS", ("stablehlo",))

    def decide(programs, lowered, carry, shared, rows, *, agree):
        calls.append(rows[0].shape)
        choice = loop_form.LoopChoice(
            form=loop_form.choose(step_seconds, scan_seconds),
            source="measured",
            scan_seconds_per_step=scan_seconds,
            step_seconds_per_step=step_seconds,
            measure_seconds=0.0,
        )
        return choice, None

    monkeypatch.setattr(loop_form, "decide", decide)
    return calls


def fit_in(form: str, config):
    """engine.fit of `config` with config.loop = form."""
    config = config.copy_and_resolve_references()
    config.loop = form
    setup = experiment.prepare(config)
    return engine.fit(setup.task, setup.state, setup.dataset, config, progress=False)


def records_without_rates(result) -> list[dict]:
    """The metrics.jsonl records, less the measured speed (which differs run to run)."""
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in result.records]


def state_leaves(result) -> list[np.ndarray]:
    """Every array of the final state (parameters, model state, optimizer state) on the host."""
    leaves = jax.tree.leaves(result.state)
    return [
        np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a)
        for a in leaves
    ]


def assert_same_run(scan, step) -> None:
    """Equal bit for bit: records, every step's loss, the final state."""
    assert (scan.loop["form"], step.loop["form"]) == ("scan", "step")
    assert records_without_rates(scan) == records_without_rates(step)
    np.testing.assert_array_equal(scan.step_losses, step.step_losses)
    for a, b in zip(state_leaves(scan), state_leaves(step), strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- equal numbers


@pytest.mark.parametrize(
    "kind, model, augment",
    [
        ("tabular", "mlp", False),
        ("image", "mlp", True),  # the augmentation keys of every step
        ("tabular", FLAX_MLP, False),  # Dropout's RNG state and BatchNorm's statistics
    ],
)
def test_both_forms_train_bit_for_bit(kind, model, augment):
    # Chunks of 20 and a last one of 10 (eval_every 25 cuts them): logging windows, evaluations
    # and chunk lengths of both kinds.
    config = small_config(kind, model, num_steps=50, eval_every=25, checkpoint_every=0)
    config.augment.enabled = augment
    scan, step = fit_in("scan", config), fit_in("step", config)
    assert_same_run(scan, step)
    assert scan.step_losses[-5:].mean() < scan.step_losses[:5].mean()  # it trained


def test_the_flax_cnn_trains_alike_in_both_forms_to_float_rounding():
    # The weight gradient of a 2-D convolution is a loop nest under the CPU scan and a library
    # call alone: another summation order, so ~1 ulp per step apart; over 30 steps the losses
    # stay within 1e-5 relative and the parameters within 1e-4 of their scale.
    config = small_config("image", num_steps=30, eval_every=30, checkpoint_every=0)
    config.model = config_lib.model_config(FLAX_CNN)
    config.batch_size = 16
    scan, step = fit_in("scan", config), fit_in("step", config)
    assert (scan.loop["form"], step.loop["form"]) == ("scan", "step")
    np.testing.assert_allclose(step.step_losses, scan.step_losses, rtol=1e-5)
    for a, b in zip(state_leaves(scan), state_leaves(step), strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * max(1.0, float(np.abs(a).max())))
    assert scan.records[-1]["val_loss"] == pytest.approx(step.records[-1]["val_loss"], rel=1e-5)
    assert step.step_losses[-5:].mean() < step.step_losses[:5].mean()


def test_trials_range_test_and_overfit_give_the_same_numbers_in_both_forms():
    config = small_config(num_steps=40)
    setup = experiment.prepare(config)
    ds = setup.dataset
    hparams = trials.TrialHparams(learning_rate=[1e-3, 3e-3], l2=[0.0, 1e-4], seed=[0, 1])
    by_form = {}
    for form in ("scan", "step"):
        config.loop = form
        runner = trials.TrialRunner(config, ds.input_shape, ds.num_classes)
        _, result = runner.run(hparams, ds, 40)
        sweep = range_test.run_range_test(
            setup.task, setup.state, ds, num_steps=60, repeats=2, steps_per_call=25, loop=form
        )
        x, y = ds.x_train[:32], ds.y_train[:32]
        overfit = overfit_one_batch(
            setup.task, setup.state, x, y, max_steps=100, loss_fraction=0.05, loop=form
        )
        assert runner.loop["form"] == sweep.loop["form"] == overfit.loop["form"] == form
        by_form[form] = (result, sweep, overfit)
    (trials_scan, sweep_scan, overfit_scan), (trials_step, sweep_step, overfit_step) = (
        by_form["scan"],
        by_form["step"],
    )
    for name in ("train_loss_curve", "val_loss", "val_accuracy", "diverged_at"):
        np.testing.assert_array_equal(getattr(trials_scan, name), getattr(trials_step, name))
    np.testing.assert_array_equal(sweep_scan.losses, sweep_step.losses)
    assert sweep_scan.suggested_lr == sweep_step.suggested_lr
    np.testing.assert_array_equal(overfit_scan.losses, overfit_step.losses)
    assert overfit_scan.steps == overfit_step.steps


@pytest.mark.slow
def test_both_forms_on_eight_devices():
    # Replicated parameters and per-host data: the same program partitioned alike, bit for
    # bit. Parameters sharded over the mesh are partitioned differently in a loop body: the
    # losses agree to 1e-5 relative (1.6e-7 measured over the 40 steps).
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "loop_form_worker.py")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    cases = {
        line["case"]: line
        for line in map(json.loads, (s for s in out.stdout.splitlines() if s.startswith("{")))
    }
    assert set(cases) == {"replicated", "sharded", "per_host"}
    for case in cases.values():
        assert case["forms"] == ["scan", "step"] and case["devices"] == 8
        assert case["one_at_a_time"]
    for name in ("replicated", "per_host"):
        assert cases[name]["same_records"] and cases[name]["same_losses"], name
        assert cases[name]["same_state"], name
    sharded = cases["sharded"]
    np.testing.assert_allclose(sharded["step_losses"], sharded["scan_losses"], rtol=1e-5)
    assert sharded["val_loss"][1] == pytest.approx(sharded["val_loss"][0], rel=1e-5)


def test_both_forms_donate_the_state_they_are_given():
    setup = experiment.prepare(small_config())
    x, y = jnp.asarray(setup.dataset.x_train), jnp.asarray(setup.dataset.y_train)
    indices = jnp.asarray(np.arange(3 * 32).reshape(3, 32))
    for form in ("scan", "step"):
        state = engine.copy_state(setup.state)
        new_state, metrics = engine.make_train_loop(setup.task, form=form)(state, x, y, indices)
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params)), form
        assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new_state.params))
        assert np.shape(metrics["loss"]) == (3,) and int(new_state.step) == 3
    assert not loop_form._over_cpu_devices(new_state)  # one device: steps dispatched ahead


# ----------------------------------------------------------------------------- the choice


def test_choose_keeps_the_scan_unless_the_step_form_is_clearly_faster():
    assert loop_form.choose(step_seconds=0.07, scan_seconds=1.4) == "step"
    assert loop_form.choose(step_seconds=1.0, scan_seconds=1.2) == "step"
    assert loop_form.choose(step_seconds=1.0, scan_seconds=1.05) == "scan"  # a near tie
    assert loop_form.choose(step_seconds=3e-4, scan_seconds=1e-4) == "scan"


@pytest.mark.parametrize(
    "step_seconds, scan_seconds, form", [(0.07, 1.4, "step"), (1, 0.2, "scan")]
)
def test_auto_runs_the_measured_faster_form_and_measures_each_program_once(
    monkeypatch, step_seconds, scan_seconds, form
):
    calls = inject_timings(monkeypatch, step_seconds, scan_seconds)
    config = small_config(num_steps=40, checkpoint_every=0)
    first, again = fit_in("auto", config), fit_in("auto", config)
    assert len(calls) == 1  # the second fit's program is the first's: no new measurement
    expected = {
        "form": form,
        "source": "measured",
        "scan_seconds_per_step": scan_seconds,
        "step_seconds_per_step": step_seconds,
        "measure_seconds": 0.0,
    }
    assert first.loop == expected
    assert again.loop == {**expected, "source": "cache"}
    assert_same_run(fit_in("scan", config), first if form == "step" else fit_in("step", config))
    # Another batch size is another program: measured on its own.
    fit_in("auto", small_config(num_steps=40, checkpoint_every=0, batch_size=16))
    assert len(calls) == 2


def test_the_measurement_times_both_forms_on_a_copy_of_the_state(monkeypatch):
    monkeypatch.setattr(loop_form, "RISKY_OPS", ("stablehlo",))  # the MLP's step races too
    setup = experiment.prepare(small_config())
    x, y = jnp.asarray(setup.dataset.x_train), jnp.asarray(setup.dataset.y_train)
    indices = jnp.asarray(np.arange(20 * 32).reshape(20, 32) % len(x))
    state = engine.copy_state(setup.state)
    loop = engine.make_train_loop(setup.task)
    new_state, metrics = loop(state, x, y, indices)
    choice = loop.choice
    assert choice.source == "measured"
    assert choice.step_seconds_per_step > 0 and choice.scan_seconds_per_step > 0
    assert choice.form == loop_form.choose(
        choice.step_seconds_per_step, choice.scan_seconds_per_step
    )
    assert choice.measure_seconds > 0
    # The timed steps ran on a copy: the call's own 20 steps start from the given state.
    assert int(new_state.step) == 20
    reference, expected = engine.make_multi_step(setup.task)(
        engine.copy_state(setup.state), x, y, indices
    )
    np.testing.assert_array_equal(np.asarray(metrics["loss"]), np.asarray(expected["loss"]))


@pytest.mark.parametrize("short_scan", [True, False, None])
def test_deciding_on_a_short_scan_or_on_the_calls_own_steps_keeps_the_numbers(
    monkeypatch, short_scan
):
    # The measurement's other paths, taken whatever the timings: a scan of a few steps compiled
    # for the measurement first (as for a model with convolutions whose K steps take long), and
    # then either it settles the choice, or the call's own steps run under the scan, for real.
    monkeypatch.setattr(loop_form, "MAX_SCAN_PROBE_SECONDS", 0.0)
    monkeypatch.setattr(loop_form, "UNSCANNED_STEP_SECONDS", math.inf)  # the scan is tried
    # None: no risky operation, so no race: the call's own steps run under the scan, the step
    # form neither compiled nor timed.
    monkeypatch.setattr(loop_form, "RISKY_OPS", ("stablehlo",) if short_scan is not None else ())
    asked = []
    monkeypatch.setattr(
        loop_form, "short_scan_decides", lambda step_s, scan_s: asked.append(scan_s) or short_scan
    )
    config = small_config(num_steps=40, eval_every=20, checkpoint_every=0)
    auto = fit_in("auto", config)
    assert len(asked) == (0 if short_scan is None else 1)
    if short_scan:  # the short scan's time is the one recorded
        assert auto.loop["scan_seconds_per_step"] == asked[0]
    if short_scan is None:
        assert auto.loop["source"] == "no_risky_ops" and auto.loop["form"] == "scan"
        assert auto.loop["step_seconds_per_step"] is None and auto.loop["measure_seconds"] == 0
        assert "the step form not timed" in loop_form.describe_loop(auto.loop)
    else:
        assert auto.loop["source"] == "measured" and auto.loop["form"] in ("scan", "step")
        assert auto.loop["step_seconds_per_step"] > 0
    assert auto.loop["scan_seconds_per_step"] > 0
    scan = fit_in("scan", config)
    assert records_without_rates(scan) == records_without_rates(auto)
    np.testing.assert_array_equal(scan.step_losses, auto.step_losses)
    for a, b in zip(state_leaves(scan), state_leaves(auto), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("slow", [True, False])
def test_a_slow_step_with_convolutions_on_the_cpu_is_not_tried_under_the_scan(monkeypatch, slow):
    # Every program counts as having convolutions, and every step as slow (or none): a slow one
    # takes the step form at once, nothing compiled or run under the scan.
    monkeypatch.setattr(loop_form, "MAX_SCAN_PROBE_SECONDS", 0.0)
    monkeypatch.setattr(loop_form, "RISKY_OPS", ("stablehlo",))
    monkeypatch.setattr(loop_form, "UNSCANNED_STEP_SECONDS", 0.0 if slow else math.inf)
    scans = []
    monkeypatch.setattr(
        loop_form, "short_scan_decides", lambda step_s, scan_s: scans.append(scan_s) or True
    )
    config = small_config(num_steps=40, eval_every=20, checkpoint_every=0)
    auto = fit_in("auto", config)
    assert auto.loop["source"] == "measured" and auto.loop["step_seconds_per_step"] > 0
    if slow:
        assert scans == [] and auto.loop["form"] == "step"
        assert auto.loop["scan_seconds_per_step"] is None
        assert "the scan not tried" in loop_form.describe_loop(auto.loop)
        step = fit_in("step", config)
        assert records_without_rates(step) == records_without_rates(auto)
        np.testing.assert_array_equal(step.step_losses, auto.step_losses)
    else:
        assert len(scans) == 1 and auto.loop["scan_seconds_per_step"] == scans[0]


def test_the_choice_is_in_summary_json_and_the_report(monkeypatch, tmp_path):
    inject_timings(monkeypatch, step_seconds=0.07, scan_seconds=1.4)
    summary = train_run(small_config(num_steps=40), tmp_path)
    loop = read_summary(tmp_path)["loops"]["train"]
    assert loop == summary.loops["train"]
    assert loop["form"] == "step"
    assert (loop["step_seconds_per_step"], loop["scan_seconds_per_step"]) == (0.07, 1.4)
    report = (tmp_path / "report.md").read_text()
    row = "| training loop | one compiled step per call (measured: 70 ms/step alone, "
    assert row + "1.4 s/step under lax.scan) |" in report


def test_the_debug_stage_records_both_of_its_loops(monkeypatch, tmp_path):
    inject_timings(monkeypatch, step_seconds=0.07, scan_seconds=1.4)
    config = small_config(num_steps=100)
    config.debug.overfit_steps = 100
    config.debug.train_steps = 40
    summary = debug.run_debug(experiment.prepare(config), str(tmp_path))
    loops = read_summary(tmp_path)["loops"]
    assert set(loops) == {"overfit", "train"} and loops == summary.loops
    assert loops["overfit"]["form"] == loops["train"]["form"] == "step"
    report = (tmp_path / "report.md").read_text()
    assert "## Training loops" in report and "| short run | one compiled step per call" in report


def test_a_configured_form_is_not_measured(monkeypatch):
    calls = inject_timings(monkeypatch, step_seconds=0.07, scan_seconds=1.4)
    result = fit_in("scan", small_config(num_steps=20, checkpoint_every=0))
    assert calls == [] and result.loop["form"] == "scan" and result.loop["source"] == "config"


def test_an_invalid_loop_is_a_one_line_usage_error(tmp_path):
    config = small_config()
    config.loop = "fast"
    with pytest.raises(UsageError, match=r"loop='fast': one of auto, scan, step"):
        config_lib.validate_config(config)
    out = run_stage(
        "start_simple",
        "--config=configs/synthetic.py:tabular",
        "--config.loop=fast",
        f"--workdir={tmp_path / 'run'}",
    )
    assert out.returncode == 2
    assert "loop='fast'" in out.stderr and len(out.stderr.strip().splitlines()) == 1
