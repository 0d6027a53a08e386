"""A user's own optimizer and learning-rate schedule by import path (`optimizer.name`,
`optimizer.schedule.name` = "module:function"), their bad-input lines, and the detectors that
read them: `lr_schedule_zero` and `gradients_never_reset` on a user's optimizer."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import small_config
from workflow import config_lib, engine, experiment
from workflow.diagnostics.checks.optimizer_memory import check_configured_optimizer
from workflow.diagnostics.checks.schedule import check_schedule
from workflow.engine.optimizer import learning_rate_at
from workflow.errors import UsageError, UserCodeError

PIECES = "tests.bugzoo.pieces"


def optimizer_config(name: str = "adam", schedule: str = "constant", **fields):
    config = small_config()
    config.optimizer.name = name
    config.optimizer.schedule.name = schedule
    config.update_from_flattened_dict(fields)
    return config


def test_a_users_optimizer_trains_as_the_optax_rule_it_returns():
    """`optimizer.name=module:function` gets the injected rate and is wrapped like Adam is:
    its updates are optax.adam(lr, eps=1e-7)'s, the rate still a per-trial hyperparameter."""
    config = optimizer_config(f"{PIECES}:adam_by_hand")
    config_lib.validate_config(config)
    tx = engine.build_optimizer(config.optimizer)
    params = {"w": jnp.arange(4.0), "b": jnp.ones(2)}
    grads = {"w": jnp.asarray([0.5, -1.0, 2.0, 0.0]), "b": jnp.asarray([1.0, -1.0])}
    reference = optax.adam(config.optimizer.learning_rate, eps=1e-7)
    ours, ref_state, state = grads, reference.init(params), tx.init(params)
    for _ in range(3):
        ours, state = tx.update(grads, state, params)
        theirs, ref_state = reference.update(grads, ref_state, params)
        for key in params:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(3e-3)


def test_a_users_schedule_scales_the_learning_rate():
    """`optimizer.schedule.name=module:function` is built for the run's num_steps and read as
    the factor on optimizer.learning_rate (what TensorBoard's lr and the optimizer apply)."""
    config = optimizer_config(schedule=f"{PIECES}:warmup_then_cosine_over_the_run")
    config_lib.validate_config(config)
    lr = config.optimizer.learning_rate
    at = [learning_rate_at(config.optimizer, 60, step) for step in (1, 7, 60)]
    assert at[0] == 0.0 and at[1] == pytest.approx(lr) and at[2] < 1e-3 * lr


@pytest.mark.parametrize(
    "field,value,line",
    [
        ("optimizer.name", "adamx", "one of adam, adamw, sgd, momentum or an import path"),
        ("optimizer.schedule.name", "linear", "one of constant, piecewise, cosine or an import"),
    ],
)
def test_an_unknown_name_says_an_import_path_is_valid_too(field, value, line):
    with pytest.raises(UsageError, match=line):
        config_lib.validate_config(optimizer_config(**{field: value}))


def test_a_users_optimizer_or_schedule_that_is_wrong_is_one_line_naming_it(tmp_path, monkeypatch):
    """Not importable, not an optax transformation, raising inside: a UsageError or a
    UserCodeError naming the import path."""
    (tmp_path / "mine.py").write_text(
        "import optax\n"
        "def not_a_rule(learning_rate):\n    return 0.1\n"
        "def raises(num_steps):\n    raise KeyError('warmup')\n"
        "def not_a_schedule(num_steps):\n    return 'cosine'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError, match=r"cannot load optimizer 'mine:nope'.*valid: adam"):
        engine.build_optimizer(optimizer_config("mine:nope").optimizer)
    with pytest.raises(UsageError, match=r"optimizer 'mine:not_a_rule' returned float"):
        engine.build_optimizer(optimizer_config("mine:not_a_rule").optimizer).init({})
    with pytest.raises(UserCodeError, match=r"schedule 'mine:raises' raised KeyError"):
        engine.build_optimizer(optimizer_config(schedule="mine:raises").optimizer, num_steps=60)
    with pytest.raises(UsageError, match=r"schedule 'mine:not_a_schedule' returned str"):
        engine.build_optimizer(optimizer_config(schedule="mine:not_a_schedule").optimizer)


def test_a_schedule_stuck_at_zero_for_most_of_the_run_is_found():
    """A warm-up joined to a decay sized to the warm-up: the rate is 0 from a fifth of the run
    on, an error naming the step; the same schedule sized to the run is quiet."""
    config = optimizer_config(schedule=f"{PIECES}:warmup_decay_sized_to_the_warmup", num_steps=1000)
    [finding] = check_schedule(config)
    assert finding.id == "lr_schedule_zero" and finding.severity == "error"
    assert 190 <= finding.evidence["first_stalled_step"] <= 201  # the decay ends at step 200
    assert finding.evidence["stalled_share"] == pytest.approx(0.8, abs=0.01)
    assert "--config.optimizer.schedule.name=constant" in finding.suggestions[1]


@pytest.mark.parametrize(
    "schedule",
    [f"{PIECES}:warmup_then_cosine_over_the_run", "cosine", "constant", "piecewise"],
)
def test_schedules_that_train_over_the_whole_run_are_quiet(schedule):
    config = optimizer_config(schedule=schedule, num_steps=1000)
    config.optimizer.schedule.warmup_steps = 100
    config.optimizer.schedule.boundaries = (500, 800)
    assert check_schedule(config) == []


def test_a_users_optimizer_that_never_resets_its_gradients_is_found():
    """gradients_never_reset probes the configured optimizer, the user's own included."""
    broken = experiment.prepare(optimizer_config(f"{PIECES}:adam_accumulating_never_reset"))
    [finding] = check_configured_optimizer(broken, {})
    assert finding.id == "gradients_never_reset"
    sound = experiment.prepare(optimizer_config(f"{PIECES}:adam_by_hand"))
    assert check_configured_optimizer(sound, {}) == []
