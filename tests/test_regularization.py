"""The regularization and data menu: augmentation, early stopping, norms, dropout, AdamW, data."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tests.conftest import run_stage, small_config
from workflow import config_lib, data, engine, experiment
from workflow.diagnostics import checks
from workflow.diagnostics.checks import probes
from workflow.engine import augment, checkpoints, loop, trials
from workflow.errors import UsageError


def run(config, workdir):
    """prepare + train_and_report, as a stage does."""
    return experiment.train_and_report(experiment.prepare(config), str(workdir), "test", None)


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def augment_cfg(**blocks):
    """config.augment with some per-kind options replaced: image={'flip': True}, ..."""
    cfg = augment.default_config()
    for kind, options in blocks.items():
        cfg[kind].update(options)
    return cfg


_augment_jit = jax.jit(augment.augment_batch, static_argnums=(2, 3))


# augment_batch reads cfg[kind][option]: the jitted version needs a hashable mapping.
class _Frozen(dict):
    def __hash__(self):
        return hash(tuple(sorted(self.items())))


def _frozen(cfg, kind):
    return _Frozen({kind: _Frozen(cfg[kind].to_dict())})


def aug(x, kind, cfg, seed=0, step=0):
    """augment_batch at (seed, step) as the training step calls it (jitted)."""
    key = augment.step_key(seed, step)
    return np.asarray(_augment_jit(key, jnp.asarray(x), kind, _frozen(cfg, kind)))


RNG = np.random.default_rng(0)
BATCHES = {
    "image": RNG.standard_normal((64, 6, 5, 2)).astype(np.float32),
    "sequence": RNG.standard_normal((64, 12, 3)).astype(np.float32),
    "tabular": RNG.standard_normal((64, 7)).astype(np.float32),
}
ALL_ON = augment_cfg(
    image={"max_shift": 2, "flip": True, "noise_std": 0.1},
    sequence={"max_shift": 3, "noise_std": 0.1},
    tabular={"noise_std": 0.1},
)


# ----------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize("kind", augment.KINDS)
def test_augmentation_keeps_shape_and_dtype_and_changes_every_example(kind):
    x = BATCHES[kind]
    out = aug(x, kind, ALL_ON)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.all(np.isfinite(out))
    changed = np.any((out != x).reshape(len(x), -1), axis=1)
    assert changed.all()


@pytest.mark.parametrize("kind", augment.KINDS)
def test_augmentation_is_a_pure_function_of_seed_and_step(kind):
    x = BATCHES[kind]
    first = aug(x, kind, ALL_ON, seed=0, step=5)
    np.testing.assert_array_equal(first, aug(x, kind, ALL_ON, seed=0, step=5))
    assert not np.allclose(first, aug(x, kind, ALL_ON, seed=0, step=6))
    assert not np.allclose(first, aug(x, kind, ALL_ON, seed=1, step=5))


def _translate(example, dy, dx, pad):
    """`example` (H, W, C) moved down dy and right dx rows/columns, border padded (numpy)."""
    h, w = example.shape[:2]
    padded = np.pad(example, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def test_image_shift_is_a_translation_bounded_by_max_shift():
    x = BATCHES["image"]
    cfg = augment_cfg(image={"max_shift": 2, "flip": False, "noise_std": 0.0})
    out = aug(x, "image", cfg, step=3)
    seen = set()
    for example, result in zip(x, out, strict=True):
        shifts = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(_translate(example, dy, dx, 2), result)
        ]
        assert shifts, "an output is not a translation of its input by at most max_shift"
        seen.add(shifts[0])
    assert len(seen) > 5, "each example draws its own shift"


def test_sequence_shift_is_a_time_translation_bounded_by_max_shift():
    x = BATCHES["sequence"]
    cfg = augment_cfg(sequence={"max_shift": 3, "noise_std": 0.0})
    out = aug(x, "sequence", cfg, step=1)
    t = x.shape[1]
    seen = set()
    for example, result in zip(x, out, strict=True):
        padded = np.pad(example, ((3, 3), (0, 0)), mode="edge")
        shifts = [s for s in range(-3, 4) if np.array_equal(padded[3 - s : 3 - s + t], result)]
        assert shifts
        seen.add(shifts[0])
    assert len(seen) > 3


def test_flip_only_when_the_config_allows_it():
    x = BATCHES["image"]
    no_flip = augment_cfg(image={"max_shift": 0, "flip": False, "noise_std": 0.0})
    np.testing.assert_array_equal(aug(x, "image", no_flip), x)  # digits are never mirrored
    flip = augment_cfg(image={"max_shift": 0, "flip": True, "noise_std": 0.0})
    out = aug(x, "image", flip)
    flipped = np.array([np.array_equal(o, e[:, ::-1]) for o, e in zip(out, x, strict=True)])
    kept = np.array([np.array_equal(o, e) for o, e in zip(out, x, strict=True)])
    assert np.all(flipped | kept) and flipped.any() and kept.any()


def test_noise_has_the_configured_scale():
    x = np.zeros((256, 7), np.float32)
    out = aug(x, "tabular", augment_cfg(tabular={"noise_std": 0.3}))
    assert out.std() == pytest.approx(0.3, rel=0.05)
    np.testing.assert_array_equal(aug(x, "tabular", augment_cfg(tabular={"noise_std": 0.0})), x)


@pytest.fixture(scope="module")
def aug_config():
    """The fast tabular config with input noise (the image and sequence ops are tested above;
    the step, resume and trials only see an opaque (key, x) -> x function)."""
    config = small_config()
    config.augment.enabled = True
    config.augment.tabular.noise_std = 0.3
    return config


def test_training_batches_are_augmented_and_evaluation_never(aug_config):
    setup = experiment.prepare(aug_config.copy_and_resolve_references())
    assert setup.config.augment.kind == "tabular"  # filled in from the dataset
    assert setup.task.augment is not None
    ds = setup.dataset
    batch = {"x": jnp.asarray(ds.x_train[:32]), "y": jnp.asarray(ds.y_train[:32])}
    step_aug = jax.jit(engine.make_train_step(setup.task))
    state = setup.state
    loss = float(step_aug(state, batch)[1]["loss"])
    assert loss == float(step_aug(state, batch)[1]["loss"])  # same (seed, step), same draw
    later = state.replace(step=jnp.asarray(7, jnp.int32))
    # Same parameters and batch, another step: only the augmentation can change the loss.
    assert float(step_aug(later, batch)[1]["loss"]) != loss
    # Vmapped over trials (workflow/engine/trials.py), each trial draws the single run's
    # augmentation.
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    vmapped = jax.jit(jax.vmap(engine.make_train_step(setup.task), in_axes=(0, None)))
    np.testing.assert_allclose(vmapped(stacked, batch)[1]["loss"], [loss, loss], rtol=1e-6)
    runner = trials.TrialRunner(setup.config, ds.input_shape, ds.num_classes)
    assert runner.task.augment is not None  # the runner's Task reads the kind from the config
    # Evaluation ignores the step: an augmented eval would differ between these two.
    evaluate = engine.Evaluator(setup.task, 256)
    assert evaluate(state, ds.x_val, ds.y_val) == evaluate(later, ds.x_val, ds.y_val)


def killed_copy(workdir, target, after_step):
    """A copy of a finished run directory as if killed after the checkpoint of `after_step`."""
    shutil.copytree(workdir, target)
    for path in (target / "checkpoints").iterdir():
        if path.name.isdigit() and int(path.name) > after_step:
            shutil.rmtree(path)
    return target


def test_augmented_run_resumes_exactly(aug_config, tmp_path):
    reference = run(aug_config.copy_and_resolve_references(), tmp_path / "reference")
    interrupted = killed_copy(tmp_path / "reference", tmp_path / "resumed", 40)
    resumed = run(aug_config.copy_and_resolve_references(), interrupted)
    assert resumed.metrics["steps"] == 60
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
        assert resumed.metrics[key] == reference.metrics[key], key


# ----------------------------------------------------------------------------- early stopping


def _history(metric, values, every=10):
    return [{"step": every * (i + 1), metric: v} for i, v in enumerate(values)]


def test_tracker_counts_evaluations_without_improvement():
    es = engine.EarlyStopping("val_accuracy", patience=2)
    es.replay(_history("val_accuracy", [0.5, 0.6, 0.6, 0.59]), until=1000)
    assert (es.best, es.best_step, es.waited, es.exhausted) == (0.6, 20, 2, True)
    es = engine.EarlyStopping("val_loss", patience=2, min_delta=0.05)
    es.replay(_history("val_loss", [1.0, float("nan"), 0.97, 0.9]), until=1000)
    assert (es.best, es.best_step, es.waited) == (0.9, 40, 0)  # NaN never best; 0.97 too close
    es = engine.EarlyStopping("val_accuracy", patience=0)
    es.replay(_history("val_accuracy", [0.5, 0.6]), until=1000)
    assert not es.exhausted  # patience 0 stops at the first evaluation that does not improve
    es.update(30, {"val_accuracy": 0.6})
    assert es.exhausted
    es = engine.EarlyStopping("val_accuracy", patience=1)
    es.replay(_history("val_accuracy", [0.5, 0.4]), until=10)  # a resumed run at step 10
    assert es.best_step == 10 and es.waited == 0


class ScriptedEvaluator:
    """Stands in for engine.Evaluator: the val accuracy of each step comes from SCRIPT."""

    script: dict[int, float] = {}

    def __init__(self, task, batch_size, mesh=None):
        pass

    def __call__(self, state, x, y):
        accuracy = self.script[int(state.step)]
        return {"loss": 1.0 - accuracy, "accuracy": accuracy, "error": 1.0 - accuracy}


@pytest.fixture(scope="module")
def tabular_setup():
    config = small_config(
        num_steps=100, eval_every=10, steps_per_call=10, log_every=10, checkpoint_every=0
    )
    config.early_stopping.update({"enabled": True, "patience": 3})
    return experiment.prepare(config)


def test_early_stopping_fires_and_returns_the_best_state(tabular_setup, monkeypatch, tmp_path):
    setup = tabular_setup
    accuracies = [0.5, 0.6, 0.7, 0.65, 0.7, 0.69, 0.9, 0.95, 0.96, 0.97]
    script = dict(zip(range(10, 101, 10), accuracies, strict=True))
    monkeypatch.setattr(ScriptedEvaluator, "script", script)
    monkeypatch.setattr(loop, "Evaluator", ScriptedEvaluator)
    state = engine.copy_state(setup.state)
    saved = checkpoints.Checkpointer(str(tmp_path), max_to_keep=None)
    result = engine.fit(
        setup.task, state, setup.dataset, setup.config, progress=False, checkpointer=saved
    )
    assert result.stopped_early and result.final_step == 60
    assert result.best_step == 30 and int(result.state.step) == 30 and result.best_value == 0.7
    assert [r["step"] for r in result.records if "val_loss" in r] == [10, 20, 30, 40, 50, 60]
    # Each new best is checkpointed (for a resumed run), and where training stopped.
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [10, 20, 30, 60]
    # The returned state is the one training had at step 30, not a later one.
    at_30 = saved.restore(30, result.state)
    saved.close()
    for a, b in zip(jax.tree.leaves(result.state), jax.tree.leaves(at_30), strict=True):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_stays_quiet_while_the_metric_improves(tabular_setup, monkeypatch):
    setup = tabular_setup
    monkeypatch.setattr(ScriptedEvaluator, "script", {s: s / 200 for s in range(10, 101, 10)})
    monkeypatch.setattr(loop, "Evaluator", ScriptedEvaluator)
    state = engine.copy_state(setup.state)
    result = engine.fit(setup.task, state, setup.dataset, setup.config, progress=False)
    assert not result.stopped_early
    assert result.final_step == result.best_step == int(result.state.step) == 100


@pytest.fixture(scope="module")
def overfitting_config():
    """40 training examples, a fast learning rate, long: val accuracy stops improving early."""
    config = small_config(
        num_steps=1000, eval_every=20, checkpoint_every=20, steps_per_call=20, log_every=20
    )
    config.dataset.train_size = 40
    config.optimizer.learning_rate = 1e-2
    config.early_stopping.update({"enabled": True, "patience": 3})
    return config


@pytest.fixture(scope="module")
def stopped_run(overfitting_config, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("early_stopped")
    return workdir, run(overfitting_config.copy_and_resolve_references(), workdir)


def test_a_real_run_stops_early_and_reports_the_best_state(stopped_run):
    workdir, summary = stopped_run
    m = summary.metrics
    assert m["stopped_early"] and m["steps"] < 1000 and m["best_step"] < m["steps"]
    evals = {r["step"]: r for r in records(workdir) if "val_accuracy" in r}
    assert max(evals) == m["steps"]
    assert m["steps"] - m["best_step"] == 3 * 20  # patience evaluations after the best
    best = max(evals.values(), key=lambda r: (r["val_accuracy"], -r["step"]))
    assert best["step"] == m["best_step"]
    assert m["val_accuracy"] == best["val_accuracy"] and m["val_loss"] == best["val_loss"]
    assert "early stopping" in (workdir / "report.md").read_text()


def test_rerunning_a_stopped_run_trains_nothing_and_reports_the_same(
    stopped_run, overfitting_config
):
    workdir, summary = stopped_run
    before = records(workdir)
    again = run(overfitting_config.copy_and_resolve_references(), workdir)
    assert records(workdir) == before
    for key in ("steps", "best_step", "stopped_early", "train_loss", "val_loss", "test_accuracy"):
        assert again.metrics[key] == summary.metrics[key], key


@pytest.mark.slow  # kept out of the default run for time; runs with -m slow
def test_early_stopped_run_resumes_exactly_after_an_interruption(
    stopped_run, overfitting_config, tmp_path
):
    workdir, summary = stopped_run
    best = summary.metrics["best_step"]
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert best in kept and kept[-1] == summary.metrics["steps"]  # the best is never evicted
    # Killed one evaluation after the best: the resumed run restores the best from its
    # checkpoint, replays the evaluations it had seen, and stops where the uninterrupted one did.
    interrupted = killed_copy(workdir, tmp_path / "resumed", best + 20)
    resumed = run(overfitting_config.copy_and_resolve_references(), interrupted)
    for key in ("steps", "best_step", "stopped_early", "train_loss", "val_loss", "test_accuracy"):
        assert resumed.metrics[key] == summary.metrics[key], key
    assert _without_timing(records(interrupted)) == _without_timing(records(workdir))


def _without_timing(logged):
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in logged]


# ----------------------------------------------------------------------------- norms, dropout

MODEL_CASES = [
    # (kind, model, norm, dropout_rate): every norm of each model, dropout in each model
    ("tabular", "mlp", "batch", 0.0),
    ("tabular", "mlp", "layer", 0.3),
    ("image", "lenet", "batch", 0.3),
    pytest.param(*("image", "lenet", "layer", 0.0), marks=pytest.mark.slow),
    pytest.param(*("sequence", "tcn", "batch", 0.3), marks=pytest.mark.slow),
    pytest.param(*("sequence", "tcn", "layer", 0.0), marks=pytest.mark.slow),
    ("sequence", "lstm", "layer", 0.3),
]
SMALL = {
    "mlp": {"hidden_sizes": (32, 32)},
    "lenet": {"features": (4, 8), "hidden_sizes": (32,)},
    "tcn": {"channels": (8, 8, 8)},
    "lstm": {"hidden_size": 16},
}


@pytest.mark.parametrize(("kind", "model", "norm", "rate"), MODEL_CASES)
def test_norm_and_dropout_train_eval_behaviour_and_checks(kind, model, norm, rate):
    config = small_config(kind, model)
    config.model.update({**SMALL[model], "norm": norm, "dropout_rate": rate})
    setup = experiment.prepare(config)
    task, state = setup.task, setup.state
    batch = checks.sample_batch(setup.dataset)
    x = jnp.asarray(batch["x"])
    # checks' own compiled programs, which run_checks below reuses (compiles dominate here).
    train, advanced = probes.forward_in_mode(
        task.train_graphdef, state.params, state.model_state, x
    )
    train_again, _ = probes.forward_in_mode(task.train_graphdef, state.params, advanced, x)
    evaluated, after = probes.forward_in_mode(
        task.eval_graphdef, state.params, state.model_state, x
    )
    evaluated_again, _ = probes.forward_in_mode(task.eval_graphdef, state.params, after, x)
    assert train.shape == evaluated.shape == (len(x), setup.dataset.num_classes)
    np.testing.assert_array_equal(evaluated, evaluated_again)  # eval is deterministic
    if rate:
        assert not np.allclose(train, train_again)  # dropout draws new masks each step
    if rate or norm == "batch":  # batch statistics in train mode, running averages in eval
        assert not np.allclose(train, evaluated)
    else:  # LayerNorm alone acts the same in both modes
        np.testing.assert_allclose(train, evaluated, rtol=1e-5, atol=1e-6)
    if norm == "batch":
        stats = [jax.tree_util.keystr(p) for p, _ in _leaves(state.model_state)]
        assert any("mean" in name for name in stats) and any("var" in name for name in stats)
    _, grads = probes.loss_and_grads(task, state, batch)
    for path, g in _leaves(grads):
        assert np.all(np.isfinite(g)) and np.any(g != 0), jax.tree_util.keystr(path)
    if norm == "layer" and not rate:
        # Nothing mode- or batch-dependent: the two checks about it suffice (run_checks'
        # output checks cost a compile per model, ~10 s for LeNet on a busy 2-core CPU).
        findings = checks.check_batch_dependence(task, state, batch["x"])
        findings += checks.check_train_eval_mode(task, state, batch["x"])
    else:  # batch_dependence and train_eval_mode among them: BatchNorm and dropout used right
        findings = checks.run_checks(setup, batch)
    assert [(f.id, f.severity) for f in findings if f.severity != "info"] == []


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


# ----------------------------------------------------------------------------- optimizer, data


def test_adamw_decays_the_weights():
    opt = ml_collections.ConfigDict(
        {"name": "adamw", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-2}
    )
    tx = engine.build_optimizer(opt)
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
    np.testing.assert_allclose(optax.apply_updates(params, updates)["w"], 1 - 0.1 * 1e-2)


@pytest.mark.slow  # kept out of the default run for time; runs with -m slow
def test_the_improve_menu_end_to_end_from_the_command_line(tmp_path):
    result = run_stage(
        "start_simple",
        "--config=configs/synthetic.py:tabular",
        f"--workdir={tmp_path}",
        "--config.optimizer.name=adamw",
        "--config.optimizer.weight_decay=1e-4",
        "--config.augment.enabled=True",
        "--config.augment.tabular.noise_std=0.2",
        "--config.early_stopping.enabled=True",
        "--config.early_stopping.metric=val_loss",
        "--config.model.norm=batch",
        "--config.model.dropout_rate=0.1",
        "--config.dataset.kwargs.num_train=600",
        "--config.num_steps=40",
        "--config.eval_every=20",
        "--config.progress=False",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    c = summary["config"]
    assert c["optimizer"]["name"] == "adamw" and c["optimizer"]["weight_decay"] == 1e-4
    assert c["augment"]["kind"] == "tabular" and c["model"]["norm"] == "batch"
    assert summary["status"] == "ok" and summary["metrics"]["test_accuracy"] > 0.3
    assert {"best_step", "stopped_early"} <= set(summary["metrics"])


def test_a_larger_train_size_is_used():
    sizes = {}
    for size in (100, 300):
        config = small_config()
        config.dataset.train_size = size
        ds = data.load_dataset(config.dataset, seed=0)
        sizes[size] = len(ds.x_train)
        indices = data.batch_indices(len(ds.x_train), 32, 0, 0, 30)
        assert indices.max() >= 0.9 * size  # the batches draw from every example
    assert sizes == {100: 100, 300: 300}


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("early_stopping.patience", -1, "early_stopping.patience"),
        ("early_stopping.metric", "train_loss", "early_stopping.metric"),
        ("early_stopping.min_delta", -0.1, "early_stopping.min_delta"),
        ("augment.tabular.noise_std", -0.1, "augment.tabular.noise_std"),
        ("augment.image.max_shift", -1, "augment.image.max_shift"),
        ("augment.sequence.pad_mode", "mirror", "augment.sequence.pad_mode"),
        ("augment.kind", "audio", "augment.kind"),
    ],
)
def test_bad_regularization_values_are_usage_errors_naming_the_key(key, value, words):
    config = small_config()
    with config.unlocked():
        config_lib.apply_values(config, {key: value})
    with pytest.raises(UsageError, match=words.replace(".", r"\.")):
        config_lib.validate_config(config)


@pytest.mark.parametrize(
    ("kind", "model", "overrides", "words"),
    [
        ("tabular", "mlp", {"model.norm": "group"}, "norm='group'.*none, batch, layer"),
        ("sequence", "lstm", {"model.norm": "batch"}, "norm='batch'.*none, layer"),
        ("sequence", "tcn", {"model.dropout_rate": 1.5}, "dropout_rate=1.5"),
        ("tabular", "mlp", {"augment.kind": "image"}, "augment.kind='image'"),
    ],
)
def test_bad_model_options_and_kind_mismatch_are_usage_errors(kind, model, overrides, words):
    config = small_config(kind, model, **overrides)
    with pytest.raises(UsageError, match=words):
        experiment.prepare(config)
