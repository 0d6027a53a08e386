"""Two processes on localhost, one CPU device each, run one job through JAX's distributed
runtime: the numbers of the one-process run, files written once, checkpoints by both."""

import json
import os
import socket
import subprocess

import pytest

from tests.conftest import SMALL_CONFIG_FLAGS, run_stage, start_stage
from workflow import distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# Two fresh processes, each importing and compiling: about 30 s on an idle 2-core CPU.
pytestmark_slow = pytest.mark.slow


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """start_simple as processes 0 and 1 of one job on one --workdir: (workdir, outputs)."""
    workdir = tmp_path_factory.mktemp("multihost") / "run"
    address = f"localhost:{free_port()}"
    procs = [
        start_stage(
            "start_simple",
            *SMALL_CONFIG_FLAGS,
            f"--workdir={workdir}",
            f"--coordinator_address={address}",
            "--num_processes=2",
            f"--process_id={pid}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (1, 0)
    ]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    codes = [proc.returncode for proc in procs]
    assert codes == [0, 0], [err[-2000:] for _, err in outputs]
    return workdir, {1: outputs[0], 0: outputs[1]}


@pytestmark_slow
def test_two_processes_give_the_one_process_numbers(two_process_run, reference_run):
    workdir, _ = two_process_run
    summary = json.loads((workdir / "summary.json").read_text())
    reference = reference_run[1]
    assert summary["metrics"]["steps"] == 60
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
        assert summary["metrics"][key] == pytest.approx(reference["metrics"][key], abs=1e-5), key


@pytestmark_slow
def test_process_0_writes_the_files_and_the_console(two_process_run):
    workdir, outputs = two_process_run
    for name in ("summary.json", "report.md", "metrics.jsonl", "plots/learning_curves.png"):
        assert (workdir / name).exists(), name
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    keys = [(r["step"], tuple(sorted(r))) for r in records]
    assert len(keys) == len(set(keys)), "each record written once, by one process"
    # One console for the job: process 0's (JAX's own C++ logging aside).
    assert "start_simple" in outputs[0][0] and "start_simple" not in outputs[1][0]


@pytestmark_slow
def test_checkpoints_are_written_once_for_the_job(two_process_run):
    workdir, _ = two_process_run
    names = sorted(os.listdir(workdir / "checkpoints"))
    assert names == ["20", "40", "60", "checksums.json"]


def test_multi_host_flags_go_together(tmp_path):
    out = run_stage(
        "start_simple",
        "--config=configs/synthetic.py",
        "--coordinator_address=localhost:1234",
        f"--workdir={tmp_path / 'run'}",
    )
    assert out.returncode == 2
    assert "--num_processes" in out.stderr and "--process_id" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, False),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, True),
        ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
        ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "h0:1234"}, True),
    ],
)
def test_a_cluster_is_recognized_from_its_environment(environ, expected):
    assert distributed.cluster_detected(environ) is expected
