"""The trainer: determinism, resume, divergence, checkpoints, chunking."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from tests.conftest import small_config, train_run
from workflow import config_lib, engine, experiment
from workflow.engine import checkpoints, loop
from workflow.errors import UsageError


def run(config, workdir):
    """prepare + train_and_report, as a stage does."""
    return experiment.train_and_report(experiment.prepare(config), str(workdir), "test", None)


def test_run_directory_contract(reference_run):
    workdir, summary = reference_run
    for name in (
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "report.md",
        "normalization.json",
        "plots/learning_curves.png",
    ):
        assert os.path.exists(workdir / name), name
    assert os.listdir(workdir / "tensorboard"), "no TensorBoard event file"
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40", "60", "checksums.json"]
    on_disk = json.loads((workdir / "summary.json").read_text())
    assert set(on_disk) >= {"stage", "status", "config", "metrics", "findings", "next"}
    assert on_disk["status"] == "ok" and on_disk["findings"] == []
    for key in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "test_loss",
        "test_accuracy",
        "num_params",
        "steps",
        "wall_seconds",
    ):
        assert key in on_disk["metrics"], key
    assert on_disk["metrics"]["steps"] == 60
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train_loss" in r]
    assert train_steps == list(range(10, 61, 10))
    assert [r["step"] for r in records if "val_loss" in r] == [20, 40, 60]
    assert "![learning curves](plots/learning_curves.png)" in (workdir / "report.md").read_text()


def test_learns_the_synthetic_task(reference_run):
    _, summary = reference_run
    # 10 balanced classes: chance is 0.1; 60 Adam steps on well separated Gaussians learn a lot.
    assert summary.metrics["test_accuracy"] > 0.5
    assert summary.metrics["train_loss"] < np.log(10)


def test_same_seed_same_numbers(reference_run, tmp_path):
    _, summary = reference_run
    again = run(small_config(), tmp_path / "again")
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
        assert again.metrics[key] == summary.metrics[key], key


def test_other_seed_other_numbers(reference_run, tmp_path):
    _, summary = reference_run
    other = run(small_config(seed=1), tmp_path / "other")
    assert other.metrics["train_loss"] != summary.metrics["train_loss"]


def test_resume_after_interruption_gives_the_uninterrupted_numbers(reference_run, tmp_path):
    workdir, summary = reference_run
    interrupted = tmp_path / "resumed"
    run(small_config(num_steps=40), interrupted)  # as if killed after the step-40 checkpoint
    resumed = run(small_config(), interrupted)
    assert resumed.metrics["steps"] == 60
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
        assert resumed.metrics[key] == summary.metrics[key], key
    steps = [json.loads(line)["step"] for line in (interrupted / "metrics.jsonl").open()]
    reference = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").open()]
    assert steps == reference, "metrics.jsonl must hold each logged step exactly once"


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    config = small_config(num_steps=400, loss="tests.broken:log_of_margin_loss")
    config.optimizer.learning_rate = 3e-4  # slow enough to pass a checkpoint before the NaN
    summary = run(config, tmp_path)
    assert summary.status == "diverged"
    [finding] = summary.findings
    assert finding.id == "nan_or_inf" and finding.severity == "error"
    step = finding.evidence["step"]
    assert 0 < step < 400
    kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert kept and kept[-1] < step
    assert finding.evidence["last_good_checkpoint"] == kept[-1]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").open()]
    assert all(np.isfinite(r["train_loss"]) for r in records if "train_loss" in r)
    assert records[-1]["step"] < step


def test_checkpoint_round_trip_keeps_rng_and_batch_stats():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 4, rngs=rngs)
            self.norm = nnx.BatchNorm(4, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.norm(self.dense(x)))

    config = small_config()
    task, state = engine.create_train_state(Net(nnx.Rngs(0, dropout=1)), config)
    flat = checkpoints.to_flat(state)
    assert all(not jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) for v in flat.values())
    back = checkpoints.from_flat(flat, state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)


def test_schedule_chunks_end_on_eval_and_checkpoint_steps():
    assert engine.schedule_chunks(0, 250, 100, (100, 0)) == [100, 100, 50]
    assert engine.schedule_chunks(30, 100, 100, (50, 40)) == [10, 10, 30, 20]
    assert engine.schedule_chunks(100, 100, 100, (50,)) == []


def test_window_records_average_each_log_window():
    metrics = {"loss": np.arange(10, dtype=float)}
    records = engine.window_records(20, metrics, log_every=5, rate=1.0)
    assert [r["step"] for r in records] == [25, 30]
    assert [r["train_loss"] for r in records] == [2.0, 7.0]


def _state_with_params(params):
    return engine.TrainState(np.int32(0), params, {}, {})


def test_chunk_divergence_names_the_first_nonfinite_step_and_the_last_finite_loss():
    finite = _state_with_params({"w": np.ones(3, np.float32)})
    loss = np.array([2.0, 1.5, 1.2, np.nan, np.nan], np.float32)
    grad_norm = np.ones(5, np.float32)
    divergence = loop.chunk_divergence(40, {"loss": loss, "grad_norm": grad_norm}, finite)
    # Steps 41..45 ran; the fourth (step 44) is the first NaN, after a finite 1.2.
    assert divergence == {"step": 44, "quantity": "loss", "last_finite_loss": np.float32(1.2)}
    grad_norm[1] = np.inf  # an infinite gradient at step 42 comes first
    divergence = loop.chunk_divergence(40, {"loss": loss, "grad_norm": grad_norm}, finite)
    assert divergence == {"step": 42, "quantity": "gradient", "last_finite_loss": 2.0}
    loss[0] = np.nan  # the chunk's first step: no finite loss in it
    divergence = loop.chunk_divergence(40, {"loss": loss, "grad_norm": grad_norm}, finite)
    assert divergence == {"step": 41, "quantity": "loss", "last_finite_loss": None}


def test_chunk_divergence_catches_nonfinite_parameters_behind_finite_metrics():
    metrics = {"loss": np.array([2.0, 1.5], np.float32), "grad_norm": np.ones(2, np.float32)}
    assert loop.chunk_divergence(0, metrics, _state_with_params({"w": np.ones(3)})) is None
    overflowed = _state_with_params({"w": np.array([1.0, np.inf, 0.0], np.float32)})
    # Blamed on the chunk's last step, whose update left the parameters non-finite.
    assert loop.chunk_divergence(0, metrics, overflowed) == {
        "step": 2,
        "quantity": "gradient",
        "last_finite_loss": 2.0,
    }


def test_chunk_timer_counts_each_chunk_lengths_first_call_as_compilation():
    timer = loop.ChunkTimer()
    assert timer.steps_per_s == 0.0  # nothing timed yet
    for steps, seconds in ((20, 5.0), (20, 1.0), (10, 3.0), (20, 1.0), (10, 0.5)):
        timer.add(steps, seconds)
    assert timer.compile_seconds == 8.0
    assert timer.steps_per_s == 50 / 2.5


def test_evaluation_and_checkpoint_due():
    config = small_config(num_steps=100, eval_every=30, checkpoint_every=40)
    assert [s for s in range(1, 101) if loop.evaluation_due(s, config)] == [30, 60, 90, 100]
    due = [
        s for s in range(1, 101) if loop.checkpoint_due(s, config, improved=False, stopped=False)
    ]
    assert due == [40, 80, 100]
    assert loop.checkpoint_due(30, config, improved=True, stopped=False)  # a new best
    assert loop.checkpoint_due(30, config, improved=False, stopped=True)  # early stopping's end
    config.checkpoint_every = 0  # no periodic checkpoints: only the last step's
    due = [
        s for s in range(1, 101) if loop.checkpoint_due(s, config, improved=False, stopped=False)
    ]
    assert due == [100]


class BatchNormNet(nnx.Module):
    """A small MLP with BatchNorm and dropout, used correctly."""

    def __init__(self, input_shape, num_outputs, *, rngs):
        self.dense = nnx.Linear(int(np.prod(input_shape)), 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(16, num_outputs, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.out(self.drop(nnx.relu(self.norm(self.dense(x)))))


def test_batchnorm_statistics_are_updated_and_carried_through_training(tmp_path):
    config = small_config(num_steps=20, eval_every=20, checkpoint_every=20)
    config.model = ml_collections.ConfigDict({"name": "tests.test_training:BatchNormNet"})
    setup = experiment.prepare(config)
    template = experiment.prepare(config).state
    summary = experiment.train_and_report(setup, str(tmp_path), "test", None)
    assert summary.status == "ok"
    assert summary.metrics["test_accuracy"] > 0.3
    saved = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
    state = saved.restore(20, template)
    saved.close()

    def running_means(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return [np.asarray(v) for p, v in leaves if "mean" in jax.tree_util.keystr(p)]

    [before], [after] = running_means(template.model_state), running_means(state.model_state)
    assert not np.allclose(before, after), "BatchNorm statistics never moved"


def _updates(schedule: dict, steps: int, num_steps: int = 10) -> list[float]:
    """The SGD (lr 1) update of a constant unit gradient at each step, under `schedule`."""
    opt = ml_collections.ConfigDict(
        {"name": "sgd", "learning_rate": 1.0, "momentum": 0.9, "weight_decay": 0.0}
    )
    opt.schedule = ml_collections.ConfigDict(
        {"name": "constant", "boundaries": (), "scale": 0.1, "warmup_steps": 0, **schedule}
    )
    tx = engine.build_optimizer(opt, num_steps=num_steps)
    params = {"w": jax.numpy.zeros(())}
    state, out = tx.init(params), []
    for _ in range(steps):
        updates, state = tx.update({"w": jax.numpy.ones(())}, state, params)
        out.append(float(updates["w"]))
    return out


def test_piecewise_schedule_scales_the_learning_rate_at_each_boundary():
    updates = _updates({"name": "piecewise", "boundaries": (2, 4), "scale": 0.1}, 6)
    np.testing.assert_allclose(updates, [-1, -1, -0.1, -0.1, -0.01, -0.01], rtol=1e-6)


def test_cosine_schedule_warms_up_then_decays_to_zero_at_num_steps():
    updates = -np.array(_updates({"name": "cosine", "warmup_steps": 2}, 11, num_steps=10))
    assert updates[0] == 0.0 and updates[1] == pytest.approx(0.5) and updates[2] == 1.0
    assert np.all(np.diff(updates[2:]) <= 0) and updates[10] == pytest.approx(0.0, abs=1e-7)


def test_constant_schedule_leaves_the_rate_alone():
    assert _updates({}, 3) == [-1.0, -1.0, -1.0]


def test_logging_metrics_does_not_import_torch(tmp_path):
    # tensorboardX imports torch when installed (2-6 s of every stage's start); we hide it.
    code = (
        "import sys; from workflow.reporting import rundir; r = rundir.RunDir(sys.argv[1]); "
        "r.log({'step': 1, 'train_loss': 0.5}); r.close(); print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    assert os.listdir(tmp_path / "tensorboard"), "the event file is still written"


def _sgd(**options) -> ml_collections.ConfigDict:
    """SGD at learning rate 1 with the given optimizer options."""
    opt = ml_collections.ConfigDict(
        {"name": "sgd", "learning_rate": 1.0, "momentum": 0.9, "weight_decay": 0.0}
    )
    opt.update(options)
    return opt


GRADS = {"a": np.full(3, 10.0, np.float32), "b": np.full(4, -10.0, np.float32)}


def test_clip_norm_scales_the_gradient_down_to_its_global_norm():
    tx = engine.build_optimizer(_sgd(clip_norm=1.0))
    params = jax.tree.map(np.zeros_like, GRADS)
    updates, _ = tx.update(GRADS, tx.init(params), params)
    assert float(optax.global_norm(updates)) == pytest.approx(1.0, rel=1e-6)
    norm = float(optax.global_norm(GRADS))
    for name in GRADS:  # the direction is kept
        np.testing.assert_allclose(updates[name], -GRADS[name] / norm, rtol=1e-6)


def test_without_clip_norm_the_gradient_passes_unchanged():
    for options in ({}, {"clip_norm": 0.0}, {"clip_norm": 1e6}):
        tx = engine.build_optimizer(_sgd(**options))
        params = jax.tree.map(np.zeros_like, GRADS)
        updates, _ = tx.update(GRADS, tx.init(params), params)
        for name in GRADS:
            np.testing.assert_allclose(updates[name], -GRADS[name], rtol=1e-6)


def test_accumulate_steps_updates_once_per_k_batches_with_their_mean_gradient():
    tx = engine.build_optimizer(_sgd(accumulate_steps=3))
    params = {"w": np.zeros(2, np.float32)}
    state = tx.init(params)
    assert float(state.hyperparams["learning_rate"]) == 1.0  # trials still set it per trial
    grads = [np.array([1.0, 2.0]), np.array([3.0, -2.0]), np.array([5.0, 6.0])] * 2
    out = []
    for g in grads:
        updates, state = tx.update({"w": g.astype(np.float32)}, state, params)
        out.append(np.asarray(updates["w"]))
    for i in (0, 1, 3, 4):
        np.testing.assert_array_equal(out[i], 0.0)  # accumulating: the parameters stay
    np.testing.assert_allclose(out[2], -np.mean(grads[:3], axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[5], -np.mean(grads[3:], axis=0), rtol=1e-6)


def test_an_accumulated_schedule_counts_batches():
    opt = _sgd(accumulate_steps=2)
    opt.schedule = ml_collections.ConfigDict(
        {"name": "piecewise", "boundaries": (4,), "scale": 0.1}
    )
    tx = engine.build_optimizer(opt, num_steps=8)
    params = {"w": np.zeros((), np.float32)}
    state, out = tx.init(params), []
    for _ in range(8):
        updates, state = tx.update({"w": np.ones((), np.float32)}, state, params)
        out.append(float(updates["w"]))
    # Updates after batches 2 and 4 run before the boundary, after 6 and 8 past it.
    np.testing.assert_allclose(out, [0, -1, 0, -1, 0, -0.1, 0, -0.1], rtol=1e-6, atol=1e-7)


def test_training_with_clipping_and_accumulation_learns(tmp_path):
    config = small_config(**{"optimizer.clip_norm": 1.0, "optimizer.accumulate_steps": 2})
    config.num_steps = 120
    summary = train_run(config, tmp_path / "run")
    assert summary.status == "ok"
    assert summary.metrics["test_accuracy"] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.parametrize(
    ("key", "value"),
    [("clip_norm", -1.0), ("clip_norm", float("inf")), ("accumulate_steps", 0)],
)
def test_bad_clip_norm_or_accumulate_steps_is_refused_naming_the_key(key, value):
    config = small_config()
    config.optimizer[key] = value
    with pytest.raises(UsageError, match=f"optimizer.{key}"):
        config_lib.validate_config(config)
