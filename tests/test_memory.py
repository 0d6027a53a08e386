"""Out of memory: XLA's resource-exhausted error becomes an `out_of_memory` finding, and
memory.retry_halving halves the batch until it fits. A test double raises the real error type."""

import json
import os

import jax
import pytest

from tests.conftest import read_summary, run_stage, small_config
from workflow import experiment
from workflow.diagnostics import memory
from workflow.errors import UsageError

OOM_TEXT = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4294967296 bytes."


def oom() -> jax.errors.JaxRuntimeError:
    return jax.errors.JaxRuntimeError(OOM_TEXT)


class FlakyStage:
    """A stage that runs out of memory above `fits_at` (or on its first `failures` calls),
    writing part of a run directory first, as a real stage would, and a summary when it fits."""

    def __init__(self, config, workdir, *, fits_at=None, failures=None):
        self.config, self.workdir = config, str(workdir)
        self.fits_at, self.failures = fits_at, failures
        self.batch_sizes = []

    def __call__(self) -> int:
        self.batch_sizes.append(self.config.batch_size)
        os.makedirs(self.workdir, exist_ok=True)
        with open(os.path.join(self.workdir, "metrics.jsonl"), "w") as f:
            f.write("{}\n")
        too_big = self.fits_at is not None and self.config.batch_size > self.fits_at
        if too_big or (self.failures is not None and len(self.batch_sizes) <= self.failures):
            raise RuntimeError("step failed") from oom()  # wrapped, as callbacks do
        summary = {
            "stage": "start_simple",
            "status": "ok",
            "config": {"batch_size": self.config.batch_size},
            "metrics": {},
            "findings": [
                {
                    "id": "lr_too_low",
                    "severity": "info",
                    "message": "",
                    "evidence": {},
                    "suggestions": [],
                }
            ],
            "next": ["python -m workflow.debug --config=configs/synthetic.py --workdir=runs/d"],
            "device": "cpu",
        }
        with open(os.path.join(self.workdir, "summary.json"), "w") as f:
            json.dump(summary, f)
        with open(os.path.join(self.workdir, "report.md"), "w") as f:
            f.write("# start_simple\n")
        return 0


def summary_of(workdir) -> dict:
    return read_summary(workdir)


def config(retry=False, batch_size=32):
    cfg = small_config("tabular")
    cfg.batch_size = batch_size
    cfg.memory.retry_halving = retry
    return cfg


def test_resource_exhausted_is_recognized_also_when_wrapped():
    assert memory.is_out_of_memory(oom())
    try:
        try:
            raise oom()
        except jax.errors.JaxRuntimeError as e:
            raise ValueError("in a callback") from e
    except ValueError as wrapped:
        assert memory.is_out_of_memory(wrapped)
    assert not memory.is_out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: something else"))
    assert not memory.is_out_of_memory(MemoryError("host"))


def test_the_error_line_names_the_failed_allocation():
    # As an H100 reported it: the first line only says autotuning failed.
    gpu = jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Failed to get configs for: 4 out of 32 instructions. See logs for "
        "all failures. Example failure:\n%fusion = f32[...] ... Status: RESOURCE_EXHAUSTED: Out "
        "of memory while trying to allocate 128.02GiB with allocator GPU_0_bfc on device 0. "
        "[tf-allocator-allocation-error='']\n=== Source Location Trace: ==="
    )
    assert memory.error_line(gpu) == (
        "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 128.02GiB with allocator "
        "GPU_0_bfc on device 0"
    )
    assert memory.error_line(jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: x\ny")) == (
        "RESOURCE_EXHAUSTED: x"
    )


def test_out_of_memory_becomes_a_finding_with_the_sizes_and_what_to_scale_back(tmp_path):
    cfg = config()
    stage = FlakyStage(cfg, tmp_path, fits_at=0)
    assert memory.run_guarded(stage, cfg, str(tmp_path), "start_simple") == 1
    summary = summary_of(tmp_path)
    assert summary["status"] == "failed" and summary["stage"] == "start_simple"
    [finding] = summary["findings"]
    assert finding["id"] == "out_of_memory" and finding["severity"] == "error"
    ev = finding["evidence"]
    assert ev["batch_size"] == 32 and ev["num_params"] == 20 * 100 + 100 + 100 * 10 + 10
    assert ev["activation_bytes"] > 0 and ev["param_bytes"] == 4 * ev["num_params"]
    assert ev["input_shape"] == [20] and ev["error"] == OOM_TEXT.rstrip(".")
    assert ev["retry"] == {
        "enabled": False,
        "stopped_because": "retry off (memory.retry_halving=False)",
    }
    # The workflow's order: batch size, model size, sequence/image size, precision.
    kinds = [s.split(":")[0] for s in finding["suggestions"]]
    assert kinds == ["batch size", "model size", "sequence/image size", "precision"]
    assert "--config.batch_size=16" in finding["suggestions"][0]
    assert "--config.dataset.pipeline=grain" in finding["suggestions"][2]  # data on the device
    # The failed attempt's files are gone, so the same --workdir takes a smaller batch.
    assert sorted(os.listdir(tmp_path)) == ["report.md", "summary.json"]
    assert "## Memory" in (tmp_path / "report.md").read_text()


def test_a_streamed_training_set_is_not_blamed_for_device_memory(tmp_path):
    cfg = config()
    cfg.dataset.pipeline = "grain"
    assert memory.run_guarded(FlakyStage(cfg, tmp_path, fits_at=0), cfg, str(tmp_path), "x") == 1
    [finding] = summary_of(tmp_path)["findings"]
    assert "pipeline=grain" not in finding["suggestions"][2]
    assert "kept on the device" not in finding["suggestions"][2]


def test_retry_halves_the_batch_until_it_fits_and_records_each_attempt(tmp_path):
    cfg = config(retry=True)
    stage = FlakyStage(cfg, tmp_path, failures=2)
    assert memory.run_guarded(stage, cfg, str(tmp_path), "start_simple") == 0
    assert stage.batch_sizes == [32, 16, 8] and cfg.batch_size == 8
    summary = summary_of(tmp_path)
    assert summary["status"] == "ok"
    finding = next(f for f in summary["findings"] if f["id"] == "out_of_memory")
    assert finding["severity"] == "warning"
    attempts = summary["memory"]["attempts"]
    assert [(a["batch_size"], a["result"]) for a in attempts] == [
        (32, "out_of_memory"),
        (16, "out_of_memory"),
        (8, "ok"),
    ]
    assert [a["eval_batch_size"] for a in attempts] == [256, 128, 64]
    assert finding["evidence"]["attempts"] == attempts
    # The next stage gets the batch size that fits.
    assert summary["next"][0].endswith(
        "--config.batch_size=8 --config.eval_batch_size=64 --config.debug.batch_size=8"
    )
    assert "## Out of memory" in (tmp_path / "report.md").read_text()


def test_retry_stops_at_batch_size_1_with_a_clear_finding(tmp_path):
    cfg = config(retry=True, batch_size=4)
    stage = FlakyStage(cfg, tmp_path, fits_at=0)
    assert memory.run_guarded(stage, cfg, str(tmp_path), "debug") == 1
    assert stage.batch_sizes == [4, 2, 1]
    [finding] = summary_of(tmp_path)["findings"]
    assert finding["severity"] == "error"
    assert "every batch size from 4 down to 1" in finding["message"]
    assert finding["evidence"]["retry"]["stopped_because"] == "smallest batch size"
    assert [a["batch_size"] for a in finding["evidence"]["attempts"]] == [4, 2, 1]
    assert finding["suggestions"][0].startswith("batch size: already 1, the smallest")


def test_retry_leaves_an_earlier_run_alone(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a run from before: its batch size is fixed
    cfg = config(retry=True)
    stage = FlakyStage(cfg, tmp_path, fits_at=0)
    assert memory.run_guarded(stage, cfg, str(tmp_path), "start_simple") == 1
    assert stage.batch_sizes == [32]
    assert (tmp_path / "config.json").exists()
    [finding] = summary_of(tmp_path)["findings"]
    assert "held an earlier run" in finding["evidence"]["retry"]["stopped_because"]


def test_other_errors_pass_through(tmp_path):
    cfg = config(retry=True)

    def broken():
        raise jax.errors.JaxRuntimeError("INTERNAL: not memory")

    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        memory.run_guarded(broken, cfg, str(tmp_path), "start_simple")


def test_a_stage_that_fits_is_left_alone(tmp_path):
    cfg = config(retry=True)
    stage = FlakyStage(cfg, tmp_path)
    assert memory.run_guarded(stage, cfg, str(tmp_path), "start_simple") == 0
    summary = summary_of(tmp_path)
    assert [f["id"] for f in summary["findings"]] == ["lr_too_low"]
    assert "memory" not in summary and stage.batch_sizes == [32] and cfg.batch_size == 32


def test_cli_reports_out_of_memory_without_a_traceback(tmp_path):
    result = run_stage(
        "start_simple",
        "--config=configs/synthetic.py:tabular",
        "--config.dataset.kwargs.num_train=300",
        "--config.progress=False",
        "--config.memory.step_limit_mb=0.01",  # no step fits: the simulated device limit
        f"--workdir={tmp_path}",
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "out_of_memory" in result.stdout
    summary = summary_of(tmp_path)
    assert summary["status"] == "failed"
    assert summary["findings"][0]["evidence"]["error"].startswith(
        "RESOURCE_EXHAUSTED: simulated by memory.step_limit_mb=0.01"
    )


@pytest.mark.parametrize(
    "key,value,valid",
    [
        ("memory.step_limit_mb", -1.0, "must be a number > 0 (MiB) or None (no limit)"),
        ("memory.retry_halving", "yes", "must be True/False"),
        ("debug.disable_jit", 1, "must be True/False"),
    ],
)
def test_invalid_memory_and_debug_options_are_bad_input(tmp_path, key, value, valid):
    cfg = config()
    section, leaf = key.split(".")
    with cfg[section].ignore_type():
        cfg[section][leaf] = value
    with pytest.raises(UsageError) as e:
        memory.run_guarded(FlakyStage(cfg, tmp_path), cfg, str(tmp_path), "start_simple")
    assert str(e.value) == f"invalid value {key}={value!r}: {valid}"
    assert not os.listdir(tmp_path)  # nothing ran, nothing written


@pytest.mark.slow
def test_step_limit_makes_a_real_stage_halve_its_batch(tmp_path):
    cfg = config(retry=True)
    at_16 = memory.estimate(config(batch_size=16))["training_bytes"]
    cfg.memory.step_limit_mb = (at_16 + 1) / memory.MIB  # 16 fits, 32 does not

    def stage():
        setup = experiment.prepare(cfg)
        summary = experiment.train_and_report(setup, str(tmp_path), "start_simple", None)
        return 0 if summary.status == "ok" else 1

    assert memory.run_guarded(stage, cfg, str(tmp_path), "start_simple") == 0
    summary = summary_of(tmp_path)
    assert summary["config"]["batch_size"] == 16
    assert [a["result"] for a in summary["memory"]["attempts"]] == ["out_of_memory", "ok"]
    assert summary["model_summary"][0]["output_shape"] == [16, 10]


@pytest.mark.slow
def test_oom_check_benchmark_simulated_on_the_cpu(tmp_path):
    from benchmarks import oom_check

    out = tmp_path / "oom.json"
    argv = ["--small", "--simulate", "--scenarios=halving,no_retry", f"--out={out}"]
    assert oom_check.main(argv) == 0
    report = json.loads(out.read_text())
    halving, no_retry = report["scenarios"]["halving"], report["scenarios"]["no_retry"]
    assert halving["status"] == "ok" and halving["final_batch_size"] == 16
    assert [r for _, r in halving["out_of_memory"]["attempts"]] == ["out_of_memory"] * 2 + ["ok"]
    assert no_retry["exit_code"] == 1 and no_retry["out_of_memory"]["severity"] == "error"
