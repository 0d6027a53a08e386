"""Any model: a user's class gets only the options the user gave, whatever config it joins; the
zoo's contract `Class(input_shape, num_outputs, *, rngs)` keeps working; any other constructor
(the Flax docs' `Model(din, dmid, dout, *, rngs)`) is called with the user's options and rngs."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import models
from tests.conftest import load_config, run_stage, small_config
from tests.user_setups import Model, breast_cancer_csv
from workflow import config_lib, engine, experiment
from workflow.errors import UsageError

DOCS_MODEL = "tests.user_setups:Model"


class Contract(nnx.Module):
    """The zoo's contract, with an option of its own."""

    def __init__(self, input_shape, num_outputs, *, rngs: nnx.Rngs, width: int = 8):
        self.hidden = nnx.Linear(int(np.prod(input_shape)), width, rngs=rngs)
        self.out = nnx.Linear(width, num_outputs, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x.reshape(x.shape[0], -1))))


def test_a_free_constructor_is_called_with_the_options_and_rngs():
    model = models.build_model(Model, (30,), 2, rngs=nnx.Rngs(0), din=30, dmid=16, dout=2)
    assert isinstance(model, Model)
    assert model.linear.kernel.value.shape == (30, 16)
    assert model.linear_out.kernel.value.shape == (16, 2)
    assert not models.takes_input_shape(Model) and models.takes_input_shape(Contract)


def test_a_constructor_mismatch_names_its_parameters():
    with pytest.raises(models.ModelOptionError) as e:
        models.build_model(Model, (30,), 2, rngs=nnx.Rngs(0), din=30)
    assert str(e.value).startswith(
        "model 'Model' takes (din, dmid, dout, *, rngs), which the options given (din) do not "
        "fit (missing a required argument: 'dmid')"
    )
    with pytest.raises(models.ModelOptionError, match=r"unexpected keyword argument 'depth'"):
        models.build_model(Model, (30,), 2, rngs=nnx.Rngs(0), din=3, dmid=4, dout=2, depth=2)


def test_the_contract_still_gets_the_input_shape_and_the_outputs():
    model = models.build_model(Contract, (4, 5), 3, rngs=nnx.Rngs(0), width=6)
    assert model.hidden.kernel.value.shape == (20, 6) and model.out.kernel.value.shape == (6, 3)
    with pytest.raises(models.ModelOptionError, match="unknown option.*accepted: width"):
        models.build_model(Contract, (4, 5), 3, rngs=nnx.Rngs(0), depth=2)


def test_swapping_in_a_user_model_drops_the_built_in_model_s_options():
    config = load_config("configs/mnist1d.py")  # the LSTM with its options
    assert "hidden_size" in config.model
    config_lib.apply_overrides(
        config,
        {
            "model.name": DOCS_MODEL,
            "model.kwargs.din": 40,
            "model.kwargs.dmid": 8,
            "model.kwargs.dout": 10,
        },
    )
    assert config.model.to_dict() == {"name": DOCS_MODEL, "din": 40, "dmid": 8, "dout": 10}
    assert engine.model_kwargs(config) == {"din": 40, "dmid": 8, "dout": 10}
    # A contract class at its own defaults; a registered model at its own.
    config_lib.apply_overrides(config, {"model.name": "tests.test_user_model:Contract"})
    assert config.model.to_dict() == {"name": "tests.test_user_model:Contract", "width": 8}
    config_lib.apply_overrides(config, {"model.name": "mlp", "model.hidden_sizes": 64})
    assert config.model.hidden_sizes == (64,) and config.model.norm == "none"


def test_overrides_of_unknown_keys_list_the_keys_of_their_block():
    config = small_config()
    with pytest.raises(UsageError, match=r"unknown config key 'optimizer.lr'; optimizer has: "):
        config_lib.apply_overrides(config, {"optimizer.lr": 1.0})
    with pytest.raises(UsageError, match=r"invalid value batch_size='x'"):
        config_lib.apply_overrides(config, {"batch_size": "x"})
    config_lib.apply_overrides(config, {"dataset.kwargs.dims": 7, "dataset.kwargs.new": 1})
    assert config.dataset.kwargs.dims == 7 and config.dataset.kwargs.new == 1
    config_lib.apply_overrides(config, {"dataset.name": "my_pkg.data:load"})
    assert config.dataset.kwargs.to_dict() == {}  # the generator's options are not the loader's


def test_a_config_file_s_model_kwargs_block_is_merged_once():
    config = small_config()
    config.model = ml_collections.ConfigDict({"name": DOCS_MODEL, "kwargs": {"din": 1}})
    assert engine.model_kwargs(config) == {"din": 1}
    config.model = ml_collections.ConfigDict({"name": DOCS_MODEL, "din": 2, "kwargs": {"din": 1}})
    with pytest.raises(UsageError, match="model option 'din' is set twice"):
        engine.model_kwargs(config)


def test_dropout_and_batchnorm_switch_modes_in_a_user_model():
    """Training uses dropout and batch statistics; evaluation neither (nnx modes), for a
    model that knows nothing of the workflow."""
    config = small_config()
    config_lib.apply_overrides(
        config,
        {
            "model.name": DOCS_MODEL,
            "model.kwargs.din": 20,
            "model.kwargs.dmid": 32,
            "model.kwargs.dout": 10,
        },
    )
    setup = experiment.prepare(config)
    task, state = setup.task, setup.state
    x = jnp.asarray(setup.dataset.x_val[:16])
    evals = [
        engine.forward(task.eval_graphdef, state.params, state.model_state, x)[0] for _ in range(2)
    ]
    np.testing.assert_array_equal(evals[0], evals[1])
    train_out, merged = engine.forward(task.train_graphdef, state.params, state.model_state, x)
    assert merged.dropout.deterministic is False and merged.bn.use_running_average is False
    assert not np.allclose(train_out, evals[0])
    eval_model = nnx.merge(task.eval_graphdef, state.params, state.model_state)
    assert eval_model.dropout.deterministic and eval_model.bn.use_running_average
    assert jax.tree.leaves(state.params)


@pytest.mark.slow
def test_the_docs_model_runs_the_debug_stage_on_a_csv(tmp_path):
    """The issue's case: a config built for the LSTM, a model written as the Flax docs write
    one, a CSV table: the stage trains it with exactly the options given."""
    data = breast_cancer_csv(tmp_path)
    workdir = tmp_path / "run"
    result = run_stage(
        "debug",
        "--config=configs/mnist1d.py",
        f"--config.model.name={DOCS_MODEL}",
        "--config.model.kwargs.din=30",
        "--config.model.kwargs.dmid=32",
        "--config.model.kwargs.dout=2",
        f"--config.dataset.name={data}",
        "--config.debug.overfit_steps=200",
        "--config.debug.train_steps=100",
        f"--workdir={workdir}",
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"] == {"name": DOCS_MODEL, "din": 30, "dmid": 32, "dout": 2}
    missing = run_stage(
        "debug",
        "--config=configs/mnist1d.py",
        f"--config.model.name={DOCS_MODEL}",
        "--config.model.kwargs.din=30",
        f"--config.dataset.name={data}",
        f"--workdir={tmp_path / 'missing'}",
    )
    assert missing.returncode == 2
    assert "error: model 'tests.user_setups:Model' takes (din, dmid, dout, *, rngs)" in (
        missing.stderr
    )


def test_an_unknown_model_option_on_the_command_line_points_to_model_kwargs(tmp_path):
    result = run_stage(
        "debug", "--config=configs/mnist1d.py", "--config.model.width=3", f"--workdir={tmp_path}"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown config key 'width' in --config.model.width=3; model has: dropout_rate, "
        "embed_size, hidden_size, name, norm, readout, vocab_size (your own model's options: "
        "--config.model.kwargs.<name>=value)"
    )


class ReadsOnes(Contract):
    """A user's slip: `x` replaced by a constant of its shape, so the input is never read."""

    def __call__(self, x):
        return super().__call__(jnp.ones_like(x))


def test_ignored_input_fires_on_identical_rows_and_stays_quiet_on_distinct_ones():
    from workflow.diagnostics.checks.outputs import ignored_input_finding

    x = np.random.default_rng(0).normal(size=(8, 5))
    constant = np.tile([[0.3, -1.2, 2.0]], (8, 1))
    found = ignored_input_finding(x, constant)
    assert found is not None and found.id == "output_ignores_input"
    assert found.evidence["relative_spread"] == 0 and "agree exactly" in found.message
    varied = constant + 0.01 * np.arange(8)[:, None]
    assert ignored_input_finding(x, varied) is None
    # Alike inputs may give alike outputs; nothing to tell apart, nothing said.
    assert ignored_input_finding(np.ones((8, 5)), constant) is None

    # Units dead on this data (a bias of -100) that inputs far from it wake: the input reaches
    # the output, so dead_units, not this, says what is wrong.
    def dead_on_data(inputs):
        return np.maximum(inputs.sum(-1, keepdims=True) - 100.0, 0.0) + constant[: len(inputs)]

    assert ignored_input_finding(x.astype(np.float32), dead_on_data(x), dead_on_data) is None
    assert ignored_input_finding(x, constant, lambda inputs: constant) is not None

    # A signal that fades on its way (a deep sigmoid stack) still has a gradient, however tiny.
    def same(inputs):
        return constant

    assert ignored_input_finding(x, constant, same, lambda inputs: inputs * 1e-20) is None
    assert ignored_input_finding(x, constant, same, np.zeros_like) is not None


def test_debug_names_a_model_that_never_reads_its_input(tmp_path):
    """The output is the same for every input: the verdict says so first (the plateau and the
    failed overfit are its symptoms), not a learning rate or the data."""
    from workflow import api

    budgets = {"debug.overfit_steps": 200, "debug.train_steps": 60, "progress": False}
    result = api.debug(ReadsOnes, config=small_config(), workdir=str(tmp_path), **budgets)
    ids = [f.id for f in result.findings]
    assert result.status == "failed" and ids[0] == "output_ignores_input", ids
