"""What a person opening `tensorboard --logdir=<workdir>` sees, read back with TensorBoard's own
event reader: per stage its own run, the learning rate, per-layer histograms, HParams, images."""

import json
import os

import numpy as np
import pytest

from tests.conftest import (
    SMALL_CONFIG_FLAGS,
    experiment_metrics,
    read_events,
    read_summary,
    run_stage,
    session_hparams,
)
from workflow.reporting import rundir, tensorboard

IMAGE = ["--config=configs/synthetic.py:image", *SMALL_CONFIG_FLAGS[1:]]
SCHEDULED = [
    *IMAGE,
    "--config.optimizer.schedule.name=cosine",
    "--config.optimizer.schedule.warmup_steps=20",
]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("tb") / "evaluate")
    result = run_stage("evaluate", *SCHEDULED, f"--workdir={workdir}")
    assert result.returncode in (0, 1), result.stderr[-3000:]
    return workdir, read_events(os.path.join(workdir, "tensorboard"))


def test_the_learning_rate_of_each_logged_step_follows_the_schedule(evaluated):
    workdir, events = evaluated
    lr = {e.step: e.value for e in events.Scalars("lr")}
    assert sorted(lr) == [10, 20, 30, 40, 50, 60]
    peak = 3e-3  # the config's rate: warm-up to it over 20 steps, then a cosine decay to 0
    assert lr[10] == pytest.approx(peak * 9 / 20, rel=1e-5)
    assert lr[20] == pytest.approx(peak * (1 + np.cos(np.pi * 0 / 40)) / 2 * 19 / 20, rel=0.1)
    assert lr[40] < lr[30] < lr[20] and lr[60] < 0.05 * peak
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert {r["step"]: r["lr"] for r in records if "lr" in r} == pytest.approx(lr)


def test_each_evaluation_has_gradient_and_activation_histograms_per_layer(evaluated):
    _, events = evaluated
    histograms = events.Tags()["histograms"]
    gradients = [t for t in histograms if t.startswith("gradients/")]
    activations = [t for t in histograms if t.startswith("activations/")]
    assert "gradients/out/kernel" in gradients and "activations/out" in activations
    assert len(gradients) >= 6 and len(activations) >= 3
    for tag in ("gradients/out/kernel", "activations/dense/0"):
        steps = [e.step for e in events.Histograms(tag)]
        assert steps == [20, 40, 60]  # the evaluation points
        value = events.Histograms(tag)[-1].histogram_value
        assert value.num > 0 and value.min <= value.max and sum(value.bucket) == value.num
    norms = {e.step: e.value for e in events.Scalars("gradient_norm/out/kernel")}
    assert sorted(norms) == [20, 40, 60] and all(v > 0 for v in norms.values())


def test_hparams_hold_the_config_and_the_final_metrics(evaluated):
    workdir, events = evaluated
    hparams = session_hparams(events)
    assert hparams["optimizer.learning_rate"] == pytest.approx(3e-3)
    assert hparams["model.name"] == "lenet" and hparams["batch_size"] == 32
    assert "progress" not in hparams  # says nothing about the result
    metrics = read_summary(workdir)["metrics"]
    assert "final/test_accuracy" in experiment_metrics(events)
    final = events.Scalars("final/test_accuracy")[-1]
    assert final.step == 60 and final.value == pytest.approx(metrics["test_accuracy"], rel=1e-6)
    assert events.Scalars("final/val_macro_f1")[-1].value == pytest.approx(
        metrics["val_macro_f1"], rel=1e-6
    )


def test_evaluate_shows_the_worst_examples_of_image_data(evaluated):
    _, events = evaluated
    assert set(events.Tags()["images"]) == {"worst_examples", "confusion_matrix"}
    image = events.Images("worst_examples")[-1]
    assert image.step == 60 and image.width > 100 and image.encoded_image_string[:4] == b"\x89PNG"


def test_a_copied_run_directory_does_not_carry_the_events_of_its_source(evaluated, tmp_path):
    workdir, _ = evaluated
    copy = rundir.RunDir(str(tmp_path / "copy"))
    copy.copy_from(workdir)
    assert os.path.exists(copy.file(rundir.METRICS))
    assert not os.path.exists(copy.file(rundir.TENSORBOARD))


def test_without_histograms_there_are_none_and_nothing_else_changes(tmp_path):
    workdir = str(tmp_path / "run")
    flags = [*IMAGE, "--config.tensorboard.histograms=False", f"--workdir={workdir}"]
    result = run_stage("start_simple", *flags)
    assert result.returncode in (0, 1), result.stderr[-3000:]
    events = read_events(os.path.join(workdir, "tensorboard"))
    assert events.Tags()["histograms"] == []
    assert not any(t.startswith("gradient_norm/") for t in events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val_loss")] == [20, 40, 60]
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1  # one file per process


def test_each_search_trial_is_a_run_with_its_hyperparameters_and_val_error(tmp_path):
    records = [
        {
            "round": 0,
            "slot": slot,
            "learning_rate": lr,
            "l2": 1e-4,
            "seed": slot,
            "steps": 40,
            "epochs": 2.0,
            "val_accuracy": accuracy,
            "val_loss": 0.5,
            "initial_loss": 2.3,
            "final_loss": 0.4,
            "improved": True,
            "diverged_at": -1,
            "loss_curve": [2.0, 1.0, 0.5, 0.4],
        }
        for slot, (lr, accuracy) in enumerate([(1e-3, 0.9), (1e-2, 0.7)])
    ]
    folder = str(tmp_path / "trials")
    tensorboard.write_trials(folder, records, {"batch_size": 32})
    runs = sorted(os.listdir(folder))
    assert runs == ["round0-slot0", "round0-slot1"]
    events = read_events(os.path.join(folder, "round0-slot1"))
    hparams = session_hparams(events)
    assert hparams["learning_rate"] == pytest.approx(1e-2) and hparams["batch_size"] == 32
    assert "val_accuracy" not in hparams and "loss_curve" not in hparams  # results, not points
    assert events.Scalars("final/val_error")[-1].value == pytest.approx(0.3)
    assert [e.step for e in events.Scalars("train_loss")] == [10, 20, 30, 40]
    tensorboard.write_trials(folder, records[:1], {"batch_size": 32})  # rewritten whole
    assert os.listdir(folder) == ["round0-slot0"]


def test_a_model_whose_outputs_cannot_be_captured_keeps_its_gradient_histograms():
    # nnx.RNN scans its cell: captured method outputs would enter the scan's carry, which
    # refuses them. Training must not fail for a histogram; the gradients' stay.
    import numpy as np
    from flax import nnx

    from tests.conftest import small_config
    from workflow import engine
    from workflow.engine.layer_statistics import layer_statistics

    class Recurrent(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(1, 8, rngs=rngs))
            self.out = nnx.Linear(8, 3, rngs=rngs)

        def __call__(self, x):
            return self.out(self.rnn(x)[:, -1])

    task, state = engine.create_train_state(
        Recurrent(nnx.Rngs(0)), small_config("sequence"), "sequence"
    )
    x = np.random.default_rng(0).normal(size=(16, 12, 1)).astype(np.float32)
    stats = layer_statistics(task, state, x, np.arange(16) % 3)
    tags = set(stats["histograms"])
    assert "gradients/out/kernel" in tags and not any(t.startswith("activations/") for t in tags)
    assert stats["scalars"]["gradient_norm/out/kernel"] > 0
