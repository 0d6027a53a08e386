"""--config.debug.disable_jit=True: every stage runs op by op, with the jitted run's numbers."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import MLP
from tests.conftest import run_stage, small_config
from workflow import cli, engine, experiment


class SpyMLP(MLP):
    """An MLP that records whether its input is a concrete array (what a breakpoint sees)."""

    concrete: list[bool] = []

    def __call__(self, x: jax.Array) -> jax.Array:
        SpyMLP.concrete.append(not isinstance(x, jax.core.Tracer))
        return super().__call__(x)


def tiny_config():
    config = small_config("tabular")
    config.model.name = "tests.test_disable_jit:SpyMLP"
    config.model.hidden_sizes = (8,)
    config.optimizer.name = "sgd"  # fewer distinct ops than Adam: cheaper to run eagerly
    config.optimizer.learning_rate = 0.1
    return config


def test_training_without_jit_gives_the_jitted_numbers():
    config = tiny_config()
    setup = experiment.prepare(config)
    x, y = jnp.asarray(setup.dataset.x_train), jnp.asarray(setup.dataset.y_train)
    indices = jnp.asarray(np.arange(3 * 16).reshape(3, 16))  # 3 steps of 16 examples

    def train():
        # The trainer's own multi-step: K steps under lax.scan, a Python loop without jit.
        state, metrics = engine.make_multi_step(setup.task)(
            engine.copy_state(setup.state), x, y, indices
        )
        return jax.device_get((state.params, metrics))

    SpyMLP.concrete.clear()
    params_jit, metrics_jit = train()
    assert SpyMLP.concrete == [False]  # traced once, under jit
    config.debug.disable_jit = True
    with cli.jit_mode(config):
        assert jax.config.jax_disable_jit
        params_eager, metrics_eager = train()
    assert not jax.config.jax_disable_jit
    assert SpyMLP.concrete[1:] == [True] * 3  # called each step with the batch's values
    np.testing.assert_allclose(metrics_eager["loss"], metrics_jit["loss"], rtol=1e-5)
    assert metrics_eager["loss"][-1] < metrics_eager["loss"][0]  # it did train
    for eager, jitted in zip(
        jax.tree.leaves(params_eager), jax.tree.leaves(params_jit), strict=True
    ):
        np.testing.assert_allclose(eager, jitted, rtol=1e-5, atol=1e-6)


def test_a_model_and_its_state_are_built_without_jit():
    # Set-up compiles its programs ahead of time; without jit they run op by op instead, with
    # the jitted values.
    config = tiny_config()
    jitted = experiment.prepare(config)
    config.debug.disable_jit = True
    with cli.jit_mode(config):
        eager = experiment.prepare(config)
    for a, b in zip(jax.tree.leaves(eager.state), jax.tree.leaves(jitted.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_jit_stays_on_by_default():
    with cli.jit_mode(small_config()):
        assert not jax.config.jax_disable_jit


@pytest.mark.slow
def test_a_stage_without_jit_reports_the_jitted_numbers(tmp_path):
    args = [
        "--config=configs/synthetic.py:tabular",
        "--config.dataset.kwargs.num_train=300",
        "--config.model.hidden_sizes=(8,)",
        "--config.num_steps=6",
        "--config.steps_per_call=3",
        "--config.log_every=3",
        "--config.eval_every=6",
        "--config.checkpoint_every=0",
        "--config.progress=False",
    ]
    summaries = {}
    for disable in (False, True):
        workdir = tmp_path / str(disable)
        result = run_stage(
            "start_simple", *args, f"--config.debug.disable_jit={disable}", f"--workdir={workdir}"
        )
        assert result.returncode == 0, result.stderr
        assert ("jit is disabled" in result.stderr) == disable
        summaries[disable] = json.loads((workdir / "summary.json").read_text())["metrics"]
    for key in ("train_loss", "val_loss", "test_loss"):
        assert summaries[True][key] == pytest.approx(summaries[False][key], rel=1e-5)
