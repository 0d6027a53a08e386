"""`python -m workflow.start_simple` as a user runs it: files, exit codes, error lines."""

import os

import pytest

from tests.conftest import read_summary, run_stage

FAST = ["--config.num_steps=40", "--config.eval_every=20", "--config.progress=False"]


@pytest.fixture(scope="module")
def mnist1d_run(tmp_path_factory):
    """The README's main command on the offline default, shortened."""
    workdir = tmp_path_factory.mktemp("start_simple")
    result = run_stage("start_simple", "--config=configs/mnist1d.py", f"--workdir={workdir}", *FAST)
    return workdir, result


def test_default_run_succeeds_and_writes_the_run_directory(mnist1d_run):
    workdir, result = mnist1d_run
    assert result.returncode == 0, result.stderr
    summary = read_summary(workdir)
    assert summary["stage"] == "start_simple" and summary["status"] == "ok"
    assert summary["config"]["model"]["name"] == "lstm"  # the workflow's default for sequences
    assert summary["config"]["optimizer"] == {
        "name": "adam",
        "learning_rate": 3e-4,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "clip_norm": 0.0,  # the simple start: no clipping, no accumulation
        "accumulate_steps": 1,
        "schedule": {"name": "constant", "boundaries": [], "scale": 0.1, "warmup_steps": 0},
    }
    assert summary["dataset"]["splits"]["train"]["size"] == 3600
    assert summary["dataset"]["splits"]["test"]["size"] == 1000
    assert summary["next"] and "workflow.debug" in summary["next"][0]
    assert (workdir / "plots" / "learning_curves.png").stat().st_size > 1000
    assert "test" in result.stdout  # the console table
    # The model summary: each layer's parameters and its output shape for one batch of 100.
    layers = {layer["path"]: layer for layer in summary["model_summary"]}
    assert layers[""]["type"] == "LSTM" and layers[""]["output_shape"] == [100, 10]
    assert layers[""]["param_count"] == summary["metrics"]["num_params"]
    assert layers["out"]["params"] == {"kernel": [32, 10], "bias": [10]}
    assert "LSTM Summary" in (workdir / "model_summary.txt").read_text()
    assert "## Model" in (workdir / "report.md").read_text()


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config=configs/mnist1d.py:resnet9000"], "resnet9000"),
        (["--config.optimizer.learning_rate=-1"], "optimizer.learning_rate"),
        (["--config.optimizer.name=adagrad"], "adagrad"),
        (["--config.dataset.name=imagenet_offline"], "imagenet_offline"),
        (["--config.batch_size=0"], "batch_size"),
        (["--config.no_such_key=1"], "no_such_key"),
        (["--config=configs/no_such_problem.py"], "no_such_problem"),
        (
            ["--config=configs/synthetic.py:tabular", "--config.dataset.train_size=100000"],
            "train_size",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_run_directory(tmp_path, args, expected):
    workdir = tmp_path / "run"
    result = run_stage("start_simple", f"--workdir={workdir}", *args, *FAST)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not workdir.exists()


def test_tfds_dataset_not_available_offline_exits_2(tmp_path):
    workdir = tmp_path / "run"
    result = run_stage(
        "start_simple",
        "--config=configs/tfds_image.py:mnist",
        f"--config.dataset.data_dir={tmp_path / 'empty'}",
        f"--workdir={workdir}",
        *FAST,
    )
    assert result.returncode == 2, result.stderr
    assert "mnist" in result.stderr and "offline" in result.stderr
    assert not workdir.exists()


def test_diverging_run_exits_1_with_nan_or_inf(tmp_path):
    result = run_stage(
        "start_simple",
        "--config=configs/synthetic.py:tabular",
        f"--workdir={tmp_path}",
        "--config.loss=tests.broken:log_of_margin_loss",
        "--config.num_steps=300",
        "--config.checkpoint_every=20",
        "--config.progress=False",
    )
    assert result.returncode == 1, result.stderr
    summary = read_summary(tmp_path)
    assert summary["status"] == "diverged"
    assert summary["findings"][0]["id"] == "nan_or_inf"


def test_a_different_config_in_an_existing_run_directory_is_refused(mnist1d_run):
    workdir, _ = mnist1d_run
    before = sorted(os.listdir(workdir))
    result = run_stage(
        "start_simple",
        "--config=configs/mnist1d.py",
        f"--workdir={workdir}",
        *FAST,
        "--config.optimizer.learning_rate=0.01",
    )
    assert result.returncode == 2
    assert "different config" in result.stderr and "optimizer" in result.stderr
    assert sorted(os.listdir(workdir)) == before


# Slow: a TFDS dataset trains on mock data by default in tests/test_grain_sources.py (both
# pipelines).
@pytest.mark.slow
def test_tfds_config_trains_end_to_end_on_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    from tests.conftest import load_config
    from workflow import experiment

    config = load_config("configs/tfds_image.py", "mnist")
    config.update_from_flattened_dict(
        {"num_steps": 4, "batch_size": 8, "steps_per_call": 2, "eval_every": 2, "progress": False}
    )
    with tfds.testing.mock_data(num_examples=40):
        setup = experiment.prepare(config)
        summary = experiment.train_and_report(setup, str(tmp_path), "start_simple", None)
    assert summary.status == "ok"
    assert summary.config["model"]["name"] == "lenet"
    assert summary.dataset["input_shape"] == [28, 28, 1]
    assert summary.metrics["steps"] == 4


def test_stages_fill_the_persistent_compilation_cache(mnist1d_run, data_cache, tmp_path):
    _, result = mnist1d_run
    assert result.returncode == 0
    cache = os.path.join(data_cache, "jax")
    assert os.path.isdir(cache) and os.listdir(cache), "no compiled program was cached"
    custom = tmp_path / "custom"
    result = run_stage(
        "start_simple",
        "--config=configs/synthetic.py:tabular",
        f"--workdir={custom}/run",
        f"--compilation_cache={custom}/jax",
        *FAST,
    )
    assert result.returncode == 0, result.stderr
    assert os.listdir(custom / "jax")
