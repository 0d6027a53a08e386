"""Two processes on localhost, one CPU device each, run one job through JAX's distributed
runtime: per-host data by default (each process loads only its half of the training set), the
one-process numbers with replicated data, files written once, checkpoints by both, and a
damaged checkpoint set aside once."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, SMALL_CONFIG_FLAGS, run_stage
from tests.test_faults import damage
from tests.test_parallel import run_worker
from workflow.engine import distributed

STAGE = os.path.join(ROOT, "tests", "multihost_stage.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# Two fresh processes, each importing and compiling: about 30 s on an idle 2-core CPU.
pytestmark_slow = pytest.mark.slow


def two_processes(stage: str, workdir, *flags: str, env: dict | None = None) -> dict[int, tuple]:
    """`stage` as processes 0 and 1 of one job on one --workdir (through
    tests/multihost_stage.py): {process: (exit code, stdout, stderr)}."""
    address = f"localhost:{free_port()}"
    procs = {
        pid: subprocess.Popen(
            [
                sys.executable,
                STAGE,
                stage,
                *flags,
                f"--workdir={workdir}",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={pid}",
            ],
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu", **(env or {})),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pid in (1, 0)
    }
    outputs = {pid: proc.communicate(timeout=300) for pid, proc in procs.items()}
    return {pid: (procs[pid].returncode, *outputs[pid]) for pid in (0, 1)}


def tagged_lines(stderr: str, tag: str) -> list[dict]:
    """The JSON of each `TAG {json}` line tests/multihost_stage.py wrote."""
    return [
        json.loads(line.split(" ", 1)[1])
        for line in stderr.splitlines()
        if line.startswith(f"{tag} ")
    ]


def run_two_processes(workdir, *flags: str) -> dict[int, dict]:
    """start_simple as processes 0 and 1 of one job on one --workdir:
    {process: {"stdout", "stderr", "fit": its MULTIHOST line}}."""
    done = two_processes("start_simple", workdir, *SMALL_CONFIG_FLAGS, *flags)
    codes = {pid: code for pid, (code, _, _) in done.items()}
    assert codes == {0: 0, 1: 0}, {pid: err[-2000:] for pid, (_, _, err) in done.items()}
    runs = {}
    for pid, (_, out, err) in done.items():
        [fit] = tagged_lines(err, "MULTIHOST")
        runs[pid] = {"stdout": out, "stderr": err, "fit": fit}
    return runs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """The default layout (per-host data with two processes): (workdir, runs)."""
    workdir = tmp_path_factory.mktemp("multihost") / "run"
    return workdir, run_two_processes(workdir)


def summary_of(workdir) -> dict:
    return json.loads((workdir / "summary.json").read_text())


@pytestmark_slow
def test_each_process_loads_only_its_half_of_the_training_set(two_process_run):
    workdir, runs = two_process_run
    # 600 synthetic examples, 60 carved for val: 540 to train, 270 per process, none dropped.
    for pid in (0, 1):
        fit = runs[pid]["fit"]
        assert fit["process"] == pid and fit["train_examples"] == 270
        assert fit["shard"]["start"] == 270 * pid and fit["shard"]["stop"] == 270 * (pid + 1)
        assert fit["data"] == {
            "layout": "per_host",
            "examples": 540,
            "blocks": 2,
            "block_size": 270,
            "dropped": 0,
        }
    dataset = summary_of(workdir)["dataset"]
    assert dataset["splits"]["train"]["size"] == 540  # the job's training set, both halves
    assert sum(dataset["splits"]["train"]["class_counts"]) == 540
    assert dataset["shard"]["dropped"] == 0 and dataset["shard"]["processes"] == 2
    # Each process's own count, gathered from it when it loaded.
    assert dataset["shard"]["hosts"] == [
        {"process": 0, "start": 0, "stop": 270, "examples": 270},
        {"process": 1, "start": 270, "stop": 540, "examples": 270},
    ]
    assert dataset["splits"]["val"]["size"] == 60 and dataset["splits"]["test"]["size"] == 200


@pytestmark_slow
def test_both_processes_end_with_the_same_params_and_the_loss_falls(two_process_run):
    workdir, runs = two_process_run
    digests = [d for pid in (0, 1) for d in runs[pid]["fit"]["params_sha256"]]
    assert len(digests) == 2 and len(set(digests)) == 1
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    train = [r["train_loss"] for r in records if "train_loss" in r]
    assert train[-1] < 0.7 * train[0]
    metrics = summary_of(workdir)["metrics"]
    assert metrics["steps"] == 60 and metrics["train_loss"] < 0.7 * train[0]


@pytestmark_slow
def test_two_processes_give_the_numbers_of_one_process_on_two_devices(two_process_run, tmp_path):
    # The same two halves, one per device, the same blocks' batches: per-host data on two
    # processes is per-host data on two devices of one (the statistics, combined from each
    # host's sums, are the whole training set's).
    workdir, _ = two_process_run
    one = run_worker("per_host_2")["per_host_2"]
    assert one["data"]["block_size"] == 270
    metrics = summary_of(workdir)["metrics"]
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
        assert metrics[key] == pytest.approx(one["metrics"][key], abs=1e-5), key
    saved = json.loads((workdir / "normalization.json").read_text())
    for key in ("mean", "std"):
        np.testing.assert_allclose(saved[key], one["normalization"][key], rtol=1e-12)


@pytestmark_slow
def test_process_0_writes_the_files_and_the_console(two_process_run):
    workdir, runs = two_process_run
    for name in ("summary.json", "report.md", "metrics.jsonl", "plots/learning_curves.png"):
        assert (workdir / name).exists(), name
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    keys = [(r["step"], tuple(sorted(r))) for r in records]
    assert len(keys) == len(set(keys)), "each record written once, by one process"
    # One console for the job: process 0's (JAX's own C++ logging aside).
    assert "start_simple" in runs[0]["stdout"] and "start_simple" not in runs[1]["stdout"]


@pytestmark_slow
def test_checkpoints_are_written_once_for_the_job(two_process_run):
    workdir, _ = two_process_run
    names = sorted(os.listdir(workdir / "checkpoints"))
    assert names == ["20", "40", "60", "checksums.json"]


@pytestmark_slow
def test_a_damaged_checkpoint_is_set_aside_once_and_both_resume_from_the_same_step(
    two_process_run, tmp_path
):
    ref_dir, ref_runs = two_process_run
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    damage(workdir / "checkpoints" / "60")
    runs = run_two_processes(workdir)
    summary = summary_of(workdir)
    [finding] = [f for f in summary["findings"] if f["id"] == "corrupt_checkpoint"]
    assert [c["step"] for c in finding["evidence"]["checkpoints"]] == [60]
    assert finding["evidence"]["resumed_from"] == 40
    names = sorted(os.listdir(workdir / "checkpoints"))
    assert names == ["20", "40", "60", "checksums.json", "corrupt-60"]  # renamed once
    for pid in (0, 1):  # both resumed at 40 and ended where the uninterrupted run did
        assert runs[pid]["fit"]["params_sha256"] == ref_runs[pid]["fit"]["params_sha256"]
    reference = summary_of(ref_dir)
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy", "steps"):
        assert summary["metrics"][key] == reference["metrics"][key], key


@pytestmark_slow
def test_replicated_data_on_two_processes_gives_the_one_process_numbers(tmp_path, reference_run):
    runs = run_two_processes(tmp_path / "run", "--config.parallel.data=replicated")
    for pid in (0, 1):
        assert runs[pid]["fit"]["data"] == {"layout": "replicated", "examples": 540}
    summary = summary_of(tmp_path / "run")
    reference = reference_run[1]
    assert summary["metrics"]["steps"] == 60
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
        assert summary["metrics"][key] == pytest.approx(reference.metrics[key], abs=1e-5), key


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


def stage_summaries(done: dict[int, tuple], stage: str) -> dict[int, dict]:
    """Each process's last `stage` summary (its SUMMARY lines), after both exited 0."""
    codes = {pid: code for pid, (code, _, _) in done.items()}
    assert codes == {0: 0, 1: 0}, {pid: err[-3000:] for pid, (_, _, err) in done.items()}
    summaries = {}
    for pid, (_, _, err) in done.items():
        lines = [s["summary"] for s in tagged_lines(err, "SUMMARY")]
        summaries[pid] = [s for s in lines if s.get("stage") == stage][-1]
    return summaries


# Tune and improve as two processes: each about 25 s on an idle 2-core CPU, plus a one-process
# tune of the same config (about 15 s) to compare the search with.
@pytestmark_slow
def test_tune_as_two_processes_searches_like_one_and_process_0_writes_the_study(
    tmp_path_factory,
):
    from tests.test_tune import TINY, _finished_trials

    base = tmp_path_factory.mktemp("multihost_tune")
    scratch = base / "tmp"
    scratch.mkdir()
    done = two_processes("tune", base / "run", *TINY, env={"TMPDIR": str(scratch)})
    summaries = stage_summaries(done, "tune")
    summary = summary_of(base / "run")
    assert summary["status"] == "ok" and len(summary["trials"]) == 12
    # Every process went on with process 0's trials and best, and retrained the same model.
    for key in ("best", "trials", "rounds"):
        assert summaries[1][key] == summaries[0][key] == summary[key], key
    retrained = [tagged_lines(done[pid][2], "MULTIHOST")[-1] for pid in (0, 1)]
    assert retrained[0]["params_sha256"] == retrained[1]["params_sha256"]
    assert retrained[0]["data"]["layout"] == "per_host"  # the retrain is engine.fit's
    # The job's study holds each trial once (process 1 searched in a scratch copy, deleted).
    trials = _finished_trials(str(base / "run" / "study.db"))
    assert sorted({study for study, _, _ in trials}) == ["tune/round-0", "tune/round-1"]
    assert len(trials) == 12 and len(set(trials)) == 12
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("tune-")]
    # The search ran on the whole training split on every host: one process finds the same.
    one = run_stage("tune", *TINY, f"--workdir={base / 'one'}")
    assert one.returncode == 0, one.stderr[-2000:]
    single = summary_of(base / "one")
    assert single["range_test"]["suggested_lr"] == summary["range_test"]["suggested_lr"]
    assert [r["val_loss"] for r in single["trials"]] == [r["val_loss"] for r in summary["trials"]]
    for key in ("learning_rate", "l2", "round", "slot"):
        assert single["best"][key] == summary["best"][key], key


@pytestmark_slow
def test_improve_as_two_processes_agrees_on_one_decision(tmp_path):
    flags = [
        *SMALL_CONFIG_FLAGS,
        "--config.optimizer.learning_rate=3e-4",  # underfit: lr remedies, batched as trials
        "--config.goal.test_error=0.001",
        "--config.improve.max_candidates=4",  # the lr comes last
        "--config.search.range_test.num_steps=60",
        "--config.search.range_test.repeats=2",
    ]
    done = two_processes("improve", tmp_path / "run", *flags)
    summaries = stage_summaries(done, "improve")
    summary = summary_of(tmp_path / "run")
    assert summary["verdicts"] == ["underfit"]
    names = [c["name"] for c in summary["candidates"]]
    assert names[0] == "baseline" and "re-tuned lr" in names
    for key in ("decision", "candidates", "best_config"):
        assert summaries[1][key] == summaries[0][key] == summary[key], key
    assert summary["decision"]["chosen"] == "re-tuned lr"
    assert (tmp_path / "run" / "best_config.py").exists()
    # The baseline trained once for the job, by engine.fit over both processes.
    fits = [tagged_lines(done[pid][2], "MULTIHOST") for pid in (0, 1)]
    assert fits[0][0]["params_sha256"] == fits[1][0]["params_sha256"]


def test_workflow_run_as_several_processes_exits_2_with_one_line(tmp_path):
    done = two_processes("run", tmp_path / "run", *SMALL_CONFIG_FLAGS)
    for pid, (code, _, err) in done.items():
        assert code == 2, (pid, err[-2000:])
        [line] = [line for line in err.splitlines() if line.startswith("error:")]
        assert "workflow.run does not run as a multi-process job" in line
        assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


# Two fresh processes importing JAX and compiling: well over a few seconds on the 2-core CPU.
@pytestmark_slow
def test_debug_as_two_processes_writes_the_run_directory_once(tmp_path):
    # The short run trains over both processes; the files are process 0's alone, written once.
    workdir = tmp_path / "run"
    done = two_processes(
        "debug",
        workdir,
        *SMALL_CONFIG_FLAGS,
        "--config.debug.overfit_steps=50",
        "--config.debug.train_steps=20",
    )
    errors = {pid: err[-3000:] for pid, (_, _, err) in done.items()}
    assert done[0][0] == done[1][0] and done[0][0] in (0, 1), errors
    writes = {
        pid: [w["path"] for w in tagged_lines(err, "WRITE")] for pid, (_, _, err) in done.items()
    }
    assert writes[1] == [], "only process 0 writes the run directory"
    summary = summary_of(workdir)
    assert summary["stage"] == "debug" and summary["metrics"]["short_run_steps"] == 20
    assert summary["status"] == ("ok" if done[0][0] == 0 else "failed")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "val_loss" in r] == [20]
    keys = [(r["step"], tuple(sorted(r))) for r in records]
    assert len(keys) == len(set(keys)), "each record written once"
    files = sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*") if p.is_file())
    assert [f for f in files if not f.startswith("tensorboard/")] == [
        "config.json",
        "identity.json",
        "metrics.jsonl",
        "model_summary.txt",
        "plots/overfit_batch.png",
        "plots/short_run.png",
        "report.md",
        "summary.json",
    ]
    # Each file written once: config.json, metrics.jsonl (opened, then appended to per record).
    assert writes[0].count("config.json") == 1 and writes[0].count("summary.json") == 1
    assert writes[0].count("report.md") == 1
