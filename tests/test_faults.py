"""Faults: a killed run resumes to the uninterrupted numbers, damaged checkpoints are set aside,
and an unwritable run directory is one clear line (exit 2)."""

import errno
import json
import os
import shutil
import signal

import pytest

from tests.conftest import (
    records,
    run_stage,
    same_numbers,
    small_config,
    start_until_checkpoint,
)
from tests.conftest import train_run as run
from workflow import cli, experiment
from workflow.engine import checkpoints


def damage(checkpoint_dir) -> None:
    """Truncate every file of a checkpoint to half its size (a partly written copy)."""
    for root, _, files in os.walk(checkpoint_dir):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)


def test_damaged_latest_checkpoint_is_set_aside_and_the_one_before_used(reference_run, tmp_path):
    ref_dir, ref_summary = reference_run
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    damage(workdir / "checkpoints" / "60")
    summary = run(small_config(), workdir)
    same_numbers(summary.metrics, ref_summary.metrics)  # resumed from step 40: the same again
    [finding] = [f for f in summary.findings if f.id == "corrupt_checkpoint"]
    assert finding.severity == "warning"
    assert [c["step"] for c in finding.evidence["checkpoints"]] == [60]
    assert finding.evidence["resumed_from"] == 40
    assert os.path.isdir(workdir / "checkpoints" / "corrupt-60")  # kept for inspection
    assert sorted(os.listdir(workdir / "checkpoints" / "60"))  # rewritten by the resumed run
    assert records(workdir) == records(ref_dir)


def test_a_checkpoint_orbax_reads_but_that_changed_fails_its_checksum(reference_run, tmp_path):
    ref_dir, _ = reference_run
    directory = tmp_path / "checkpoints"
    shutil.copytree(ref_dir / "checkpoints", directory)
    shutil.rmtree(directory / "60")
    shutil.copytree(directory / "20", directory / "60")  # readable, but not what step 60 wrote
    setup = experiment.prepare(small_config())
    ckpt = checkpoints.Checkpointer(str(directory))
    try:
        with pytest.raises(checkpoints.CorruptCheckpoint, match="checksum"):
            ckpt.restore(60, setup.state)
        state, step, skipped = ckpt.restore_latest(setup.state)
    finally:
        ckpt.close()
    assert step == 40 and [s["step"] for s in skipped] == [60]
    assert int(state.step) == 40


def test_healthy_checkpoints_are_restored_without_findings(reference_run, tmp_path):
    ref_dir, _ = reference_run
    setup = experiment.prepare(small_config())
    ckpt = checkpoints.Checkpointer(str(ref_dir / "checkpoints"))
    try:
        state, step, skipped = ckpt.restore_latest(setup.state)
    finally:
        ckpt.close()
    assert step == 60 and skipped == [] and int(state.step) == 60


def test_every_checkpoint_damaged_restarts_from_scratch(reference_run, tmp_path):
    ref_dir, ref_summary = reference_run
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    for step in ("20", "40", "60"):
        damage(workdir / "checkpoints" / step)
    summary = run(small_config(), workdir)
    same_numbers(summary.metrics, ref_summary.metrics)
    [finding] = [f for f in summary.findings if f.id == "corrupt_checkpoint"]
    assert [c["step"] for c in finding.evidence["checkpoints"]] == [60, 40, 20]
    assert finding.evidence["resumed_from"] is None and "restarted" in finding.message
    assert records(workdir) == records(ref_dir)


@pytest.mark.slow
def test_kill_9_mid_run_then_the_same_command_ends_with_the_uninterrupted_metrics(tmp_path):
    # A model paused 10 ms per call (tests/fault_models.py) makes the run slow enough to kill
    # between checkpoints; the pause changes no number.
    args = [
        "--config=configs/synthetic.py",
        "--config.model.name=tests.fault_models:SlowMLP",
        "--config.dataset.kwargs.num_train=600",
        "--config.dataset.kwargs.num_test=200",
        "--config.num_steps=300",
        "--config.batch_size=32",
        "--config.steps_per_call=25",
        "--config.checkpoint_every=50",
        "--config.eval_every=50",
        "--config.log_every=25",
        "--config.optimizer.learning_rate=3e-3",
        "--config.progress=False",
    ]
    killed = tmp_path / "killed"
    proc = start_until_checkpoint(args, killed, 100)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()  # killed mid-run, before the end

    resumed = run_stage("start_simple", *args, f"--workdir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = run_stage("start_simple", *args, f"--workdir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-2000:]
    summary = json.loads((killed / "summary.json").read_text())
    reference = json.loads((tmp_path / "whole" / "summary.json").read_text())
    same_numbers(summary["metrics"], reference["metrics"])
    assert records(killed) == records(tmp_path / "whole")


def test_workdir_under_a_file_is_one_clear_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = run_stage(
        "start_simple",
        "--config=configs/synthetic.py",
        "--config.num_steps=20",
        f"--workdir={blocker / 'run'}",
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") <= 1 and "Traceback" not in out.stderr
    assert "a file is in the way" in out.stderr and str(blocker / "run") in out.stderr


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "no space left"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only"),
    ],
)
def test_storage_errors_name_the_path_and_the_fix(code, words):
    line = cli.storage_error_line(OSError(code, os.strerror(code), "/runs/x/metrics.jsonl"))
    assert words in line and "/runs/x/metrics.jsonl" in line and "resumes" in line


def test_other_os_errors_are_not_disguised_as_storage_errors():
    assert cli.storage_error_line(OSError(errno.ECONNREFUSED, "refused")) is None


def test_a_full_disk_mid_run_keeps_the_last_checkpoint_and_resumes(
    reference_run, tmp_path, monkeypatch
):
    ref_dir, ref_summary = reference_run
    workdir = tmp_path / "run"
    real_save = checkpoints.Checkpointer.save

    def save_until_full(self, step, state):
        if step > 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(workdir / "checkpoints"))
        real_save(self, step, state)

    monkeypatch.setattr(checkpoints.Checkpointer, "save", save_until_full)
    with pytest.raises(OSError) as raised:
        run(small_config(), workdir)
    assert cli.storage_error_line(raised.value).startswith("cannot write")
    monkeypatch.setattr(checkpoints.Checkpointer, "save", real_save)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "checksums.json"]
    same_numbers(run(small_config(), workdir).metrics, ref_summary.metrics)  # resume from 20
    assert records(workdir) == records(ref_dir)
