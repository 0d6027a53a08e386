"""Data parallelism over a device mesh, and mixed precision (config.dtype=bfloat16)."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import ROOT, run_stage, small_config
from workflow import engine, experiment
from workflow.errors import UsageError

WORKER = os.path.join(ROOT, "tests", "parallel_worker.py")


def run_worker(*cases: str) -> dict[str, dict]:
    """The JSON lines of tests/parallel_worker.py, by case (8 simulated CPU devices)."""
    out = subprocess.run(
        [sys.executable, WORKER, *cases],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {line["case"]: line for line in lines}


@pytest.fixture(scope="module")
def eight_devices():
    """One worker process for the default cases: the MLP curves, the indivisible batch and
    per-host data."""
    return run_worker("curves", "indivisible", "per_host")


def assert_same_curves(result: dict, strict_steps: int = 40, rtol_after: float = 1e-4) -> None:
    """8 devices (replicated and sharded) follow the one-device curve within float tolerance:
    rtol 1e-4 over the first `strict_steps` steps, `rtol_after` over the rest and val."""
    one = np.array(result["one"]["losses"])
    assert len(one) == 40 and one[-1] < one[0]
    for layout in ("replicated", "sharded"):
        losses = np.array(result[layout]["losses"])
        np.testing.assert_allclose(losses[:strict_steps], one[:strict_steps], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(losses, one, rtol=rtol_after, atol=1e-5)
        assert result[layout]["val_loss"] == pytest.approx(
            result["one"]["val_loss"], rel=rtol_after
        )
        assert result[layout]["devices"] == 8
    assert result["one"]["devices"] == 1


def test_eight_devices_give_the_one_device_loss_curve(eight_devices):
    result = eight_devices["curves"]
    assert_same_curves(result)
    assert result["replicated"]["param_specs"] == ["P()"]
    # "sharded" splits every array with an axis the mesh divides.
    assert any("'data'" in spec for spec in result["sharded"]["param_specs"])


@pytest.mark.slow
def test_batchnorm_model_on_eight_devices_matches_one_device():
    # BatchNorm's statistics are over the global batch under jit partitioning, as on one device.
    # Their sums run in another order on 8 devices; through BN's rsqrt the 1e-7 differences
    # compound from step ~25 on (4e-4 by step 31, measured), so later steps get 2e-3.
    assert_same_curves(run_worker("bn")["bn"], strict_steps=25, rtol_after=2e-3)


def test_per_host_data_on_eight_devices_trains_and_resumes_exactly(eight_devices):
    # The second run stopped at step 20, was checkpointed, restored and run on to 40: the same
    # losses (the first 20 steps: a second run; the last 20: a resumed one) and parameters.
    result = eight_devices["per_host"]
    losses = np.array(result["losses"])
    assert len(losses) == 40 and losses[-10:].mean() < 0.5 * losses[0]
    assert result["second_losses"] == result["losses"] and result["same_params"]
    # One process loads the 540 training examples as 8 device blocks of 67: the loader drops 4
    # and says so; each batch of 64 is 8 examples from each block.
    assert result["train_size"] == 536
    assert result["shard"]["dropped"] == 4 and result["shard"]["global_size"] == 536
    assert result["data"] == {
        "layout": "per_host",
        "examples": 536,
        "blocks": 8,
        "block_size": 67,
        "dropped": 0,
    }


def test_each_device_gathers_its_part_of_a_batch_from_its_own_block(eight_devices):
    gather = eight_devices["per_host"]["gather"]
    assert gather["x_spec"] == "P('data',)" and gather["block"] == 67
    assert gather["each_block_own_rows"] and gather["gathered_as_expected"]


def test_indivisible_batch_names_the_nearest_valid_sizes(eight_devices):
    message = eight_devices["indivisible"]["error"]
    assert "batch_size=100" in message and "multiple of 8" in message
    assert "96 or 104" in message and "parallel.data_devices" in message


def test_more_devices_than_visible_is_a_usage_error():
    config = small_config()
    config.parallel.data_devices = jax.device_count() + 1
    with pytest.raises(UsageError, match=r"parallel.data_devices=\d+: only \d+ device"):
        engine.data_mesh(config)


def test_one_device_needs_no_mesh():
    assert engine.data_mesh(small_config()) is None


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("dtype", "float16", "float32, bfloat16"),
        ("parallel.params", "fsdp", "replicated, sharded"),
        ("parallel.data", "sharded", "auto, replicated, per_host"),
    ],
)
def test_invalid_precision_or_layout_exits_2(tmp_path, key, value, valid):
    out = run_stage(
        "start_simple",
        "--config=configs/synthetic.py",
        f"--config.{key}={value}",
        f"--workdir={tmp_path / 'run'}",
    )
    assert out.returncode == 2
    assert f"{key}={value!r}" in out.stderr or f"{key}={value}" in out.stderr
    assert valid in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def bf16_run():
    """60 steps of the tabular MLP computed in bfloat16."""
    config = small_config(dtype="bfloat16")
    setup = experiment.prepare(config)
    return setup, engine.fit(setup.task, setup.state, setup.dataset, config, progress=False)


def test_bfloat16_trains_with_float32_parameters(bf16_run):
    setup, result = bf16_run
    assert result.status == "ok"
    losses = result.step_losses
    # The initial-loss check still holds: ln C at initialization, in bf16 too.
    assert losses[0] == pytest.approx(math.log(setup.dataset.num_classes), abs=0.3)
    assert losses[-10:].mean() < 0.7 * losses[0]
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(result.state.params)}
    assert dtypes == {jnp.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(result.state.opt_state)} <= {
        jnp.dtype("float32"),
        jnp.dtype("int32"),
    }


def test_bfloat16_matmuls_run_in_bfloat16(bf16_run):
    setup, result = bf16_run
    task, state = setup.task, result.state
    x = jnp.asarray(setup.dataset.x_train[:4])
    jaxpr = jax.make_jaxpr(
        lambda p: engine.forward(task.eval_graphdef, p, state.model_state, x, "bfloat16")[0]
    )(state.params)
    dots = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general"]
    assert dots and all(eqn.invars[0].aval.dtype == jnp.bfloat16 for eqn in dots)
    assert jaxpr.out_avals[0].dtype == jnp.float32  # the loss sees float32 outputs


def test_bfloat16_run_still_stops_on_nan(tmp_path):
    config = small_config(num_steps=200, loss="tests.broken:log_of_margin_loss", dtype="bfloat16")
    summary = experiment.train_and_report(experiment.prepare(config), str(tmp_path), "t", None)
    assert summary.status == "diverged"
    assert [f.id for f in summary.findings] == ["nan_or_inf"]
