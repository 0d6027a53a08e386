"""Shared fixtures: one data cache per test session, small configs, the stage CLI."""

import json
import os
import subprocess
import sys
import time

# Loaded before any test enters tfds.testing.mock_data, whose lazy imports would otherwise make
# pytest's own `import tracemalloc` (when it reports an object's failing __del__) fail to load
# inside the mock, turning a warning into a failed test depending on when garbage is collected.
import tracemalloc  # noqa: F401

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """Generated datasets (MNIST-1D) are cached once per session, outside the user's cache."""
    path = os.environ.get("DNN_TROUBLESHOOTING_CACHE") or str(tmp_path_factory.mktemp("cache"))
    os.environ["DNN_TROUBLESHOOTING_CACHE"] = path
    return path


def run_stage(stage: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m workflow.<stage> args...` from the repo root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", f"workflow.{stage}", *args],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_stage(
    stage: str, *args: str, env: dict[str, str] | None = None, **popen_options
) -> subprocess.Popen:
    """Start `python -m workflow.<stage> args...` from the repo root without waiting (to kill
    it midway, or to run processes side by side); `env` adds environment variables."""
    return subprocess.Popen(
        [sys.executable, "-m", f"workflow.{stage}", *args],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})),
        **popen_options,
    )


def read_summary(workdir) -> dict:
    """summary.json of a run directory, after checking that it reads back as a Summary that
    writes it unchanged (workflow.run reads its steps' summaries back)."""
    from workflow.reporting.summary import Summary

    with open(os.path.join(workdir, "summary.json")) as f:
        data = json.load(f)
    assert Summary.from_json(data).to_json() == data
    return data


def load_config(path: str, arg: str | None = None):
    """get_config(arg) of a configs/*.py file, as --config=path:arg would give it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_under_test", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


# small_config() as command-line flags, for tests that run a stage as a user would.
SMALL_CONFIG_FLAGS = [
    "--config=configs/synthetic.py:tabular",
    "--config.dataset.kwargs.num_train=600",
    "--config.dataset.kwargs.num_test=200",
    "--config.num_steps=60",
    "--config.batch_size=32",
    "--config.steps_per_call=20",
    "--config.log_every=10",
    "--config.eval_every=20",
    "--config.checkpoint_every=20",
    "--config.eval_batch_size=256",
    "--config.optimizer.learning_rate=3e-3",
    "--config.progress=False",
]


def start_until_checkpoint(args: list[str], workdir, step: int, seconds: float = 240):
    """`python -m workflow.start_simple args` in `workdir`, returned still running once its
    checkpoint of `step` is on disk (to be killed there)."""
    proc = start_stage(
        "start_simple",
        *args,
        f"--workdir={workdir}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + seconds
    while not os.path.isdir(os.path.join(workdir, "checkpoints", str(step))):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, f"no checkpoint at step {step} in time"
        time.sleep(0.05)
    return proc


def small_config(kind: str = "tabular", model: str = "", **overrides):
    """A fast synthetic config: few examples, few steps, no progress bar."""
    config = shrink(load_config("configs/synthetic.py", f"{kind},{model}" if model else kind))
    config.update_from_flattened_dict(overrides) if overrides else None
    return config


def shrink(config):
    """`config` at the suite's small size: few synthetic examples, few steps, no progress bar."""
    if "num_train" in config.dataset.get("kwargs", {}):  # a generated dataset: its size
        config.dataset.kwargs.num_train = 600
        config.dataset.kwargs.num_test = 200
    config.num_steps = 60
    config.batch_size = 32
    config.steps_per_call = 20
    config.log_every = 10
    config.eval_every = 20
    config.checkpoint_every = 20
    config.eval_batch_size = 256
    config.optimizer.learning_rate = 3e-3  # few steps: learn fast enough to assert on
    config.progress = False
    return config


# metrics.jsonl fields that differ between any two runs of the same config.
TIMING_KEYS = {"steps_per_s", "wall_seconds", "compile_seconds", "seconds"}


def records(workdir) -> list[dict]:
    """metrics.jsonl without its timing fields (they differ between any two runs)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in lines]


def same_numbers(metrics: dict, reference: dict) -> None:
    """The same final numbers in two summaries' metrics."""
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy", "steps"):
        assert metrics[key] == reference[key], key


def train_run(config, workdir) -> dict:
    """prepare + train_and_report, as a stage does; the run's summary."""
    from workflow import experiment

    return experiment.train_and_report(experiment.prepare(config), str(workdir), "test", None)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """One uninterrupted 60-step small_config() run (checkpoints at 20, 40, 60), shared
    read-only by the tests that compare against it: (workdir, summary)."""
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, train_run(small_config(), workdir)


# ----------------------------------------------------------------------------- TensorBoard


def read_events(folder: str):
    """TensorBoard's reader over one run's folder, everything kept."""
    from tensorboard.backend.event_processing import event_accumulator

    sizes = {kind: 0 for kind in ("scalars", "histograms", "images", "tensors")}
    accumulator = event_accumulator.EventAccumulator(folder, size_guidance=sizes)
    accumulator.Reload()
    return accumulator


def session_hparams(accumulator) -> dict:
    """The HParams dashboard's values of the run's session (name -> value)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    values = {}
    for name, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return values


def experiment_metrics(accumulator) -> list[str]:
    """The metric tags the HParams dashboard shows for the run."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = accumulator.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    return [m.name.tag for m in experiment.metric_infos]


def _sklearn_set(name: str):
    """scikit-learn's bundled set `name` (load_<name>), loaded when a test calls it."""

    def load(**kwargs):
        from sklearn import datasets

        return getattr(datasets, f"load_{name}")(**kwargs)

    load.__name__ = f"load_{name}"
    return load


# scikit-learn's bundled sets with their task: real data the data checks must stay quiet on.
SKLEARN_SETS = [
    (_sklearn_set("digits"), "classification"),
    (_sklearn_set("wine"), "classification"),
    (_sklearn_set("breast_cancer"), "classification"),
    (_sklearn_set("iris"), "classification"),
    (_sklearn_set("diabetes"), "regression"),
]
