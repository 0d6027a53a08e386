"""Run directories you can trust: one owner at a time, records that survive a crash at any byte,
one identity checked before anything is written, validation before the first write, nothing
executed from a run directory, verification that fails closed, and every exit the promised one.

docs/reliability.md lists each promise with the test here that holds it.
"""

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import (
    ROOT,
    SMALL_CONFIG_FLAGS,
    read_summary,
    records,
    run_stage,
    same_numbers,
    small_config,
    start_stage,
    train_run,
)
from workflow import config_lib, experiment
from workflow.errors import UsageError
from workflow.reporting import rundir


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints (exit 2, no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def copy_of(run_dir, tmp_path, name: str = "run"):
    """A copy of a finished run directory to change."""
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


# ============================================================================ 1. one owner


def hold_lock(workdir):
    """The run directory's lock, taken by this (test) process as a stage would take it."""
    os.makedirs(workdir, exist_ok=True)
    handle = open(os.path.join(workdir, rundir.LOCK), "a+")  # noqa: SIM115 - held by the caller
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.truncate(0)
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "stage": "test"}))
    handle.flush()
    return handle


def test_a_run_directory_held_by_another_process_is_refused_naming_it(tmp_path):
    workdir = tmp_path / "run"
    holder = hold_lock(workdir)
    try:
        refused = run_stage("start_simple", *SMALL_CONFIG_FLAGS, f"--workdir={workdir}")
    finally:
        holder.close()
    line = error_line(refused)
    assert f"pid {os.getpid()}" in line and socket.gethostname() in line and str(workdir) in line
    assert sorted(os.listdir(workdir)) == [rundir.LOCK]  # nothing written
    # Released: the same command runs, and leaves no lock behind.
    done = run_stage("start_simple", *SMALL_CONFIG_FLAGS, f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (workdir / rundir.LOCK).exists()


def test_a_second_stage_started_on_a_running_ones_directory_exits_2(tmp_path):
    # The first run trains for minutes (a model paused on every call); the second starts once
    # the first has written its config, and must be refused while the first goes on.
    workdir = tmp_path / "run"
    args = [
        *SMALL_CONFIG_FLAGS,
        "--config.model.name=tests.fault_models:SlowMLP",
        "--config.num_steps=100000",
        f"--workdir={workdir}",
    ]
    first = start_stage("start_simple", *args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "metrics.jsonl").exists():
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the first run never started training"
            time.sleep(0.05)
        second = run_stage("start_simple", *args, timeout=120)
        assert first.poll() is None, "the first run stopped"
    finally:
        first.kill()
        first.wait()
    line = error_line(second)
    assert f"pid {first.pid}" in line and "in use" in line
    steps = [r["step"] for r in records(workdir) if "train_loss" in r]
    assert steps == sorted(set(steps)), "one writer: steps only increase"


def test_a_file_system_without_locks_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UsageError, match="does not support file locks"):
        rundir.lock(str(tmp_path / "new" / "run"), "start_simple")
    assert os.listdir(tmp_path) == []


# ============================================================================ 2. records


def test_the_metrics_reader_survives_a_crash_at_any_byte(reference_run, tmp_path):
    ref_dir, _ = reference_run
    text = (ref_dir / "metrics.jsonl").read_bytes()
    whole = [json.loads(line) for line in text.splitlines()]
    run = rundir.RunDir(str(tmp_path))
    for cut in range(len(text) + 1):
        (tmp_path / "metrics.jsonl").write_bytes(text[:cut])
        complete = text[:cut].count(b"\n")
        got = rundir.RunDir(str(tmp_path)).read_metrics()
        # A cut right after a record's closing brace leaves it whole, if without its newline.
        assert got in (whole[:complete], whole[: complete + 1]), cut
    assert run.read_metrics() == whole[: text.count(b"\n")]


def test_a_torn_last_metrics_line_is_reported_and_the_run_resumes(reference_run, tmp_path, capsys):
    ref_dir, ref_summary = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 61, "train_lo')  # a process killed in the middle of a line
    summary = train_run(small_config(), workdir)
    same_numbers(summary.metrics, ref_summary.metrics)
    assert records(workdir) == records(ref_dir)  # the torn line is gone from the file too
    assert "metrics.jsonl" in capsys.readouterr().err


def test_a_finished_runs_torn_last_record_is_trained_again_to_the_same_records(
    reference_run, tmp_path
):
    ref_dir, ref_summary = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    path = workdir / "metrics.jsonl"
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    assert json.loads(last)["step"] == 60  # the final record, written after the last checkpoint
    path.write_text(text[: len(text) - len(last) // 2 - 1])  # killed while writing it
    summary = train_run(small_config(), workdir)
    same_numbers(summary.metrics, ref_summary.metrics)
    assert records(workdir) == records(ref_dir)  # step 60's records are all there again


def test_a_whole_metrics_file_discards_no_checkpoint(reference_run, tmp_path):
    ref_dir, _ = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    run = rundir.RunDir(str(workdir))
    assert run.first_unrecorded_step() is None
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"train_lo')  # torn before its step reached the disk
    assert run.first_unrecorded_step() == 60  # the last whole record's step


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


FULL_DISK_CASES = {
    # Every step logged: metrics.jsonl and the TensorBoard events fill the disk.
    "records": ["--config.num_steps=4000", "--config.log_every=1", "--config.checkpoint_every=0"],
    # Checkpoints of a wide model fill it (each about 0.5 MiB with Adam's moments).
    "checkpoints": [
        "--config.num_steps=200",
        "--config.model.hidden_sizes=(1500,)",
        "--config.checkpoint_every=20",
    ],
}


@pytest.mark.parametrize(
    "case",
    # The checkpoints case is the default run's; the records case adds little time to prove.
    [
        pytest.param(c, marks=[pytest.mark.slow] if c == "records" else [])
        for c in sorted(FULL_DISK_CASES)
    ],
)
def test_a_full_disk_is_one_line_naming_the_path_and_a_rerun_resumes(small_disk, case):
    workdir = small_disk / "run"
    args = [*SMALL_CONFIG_FLAGS, *FULL_DISK_CASES[case], f"--workdir={workdir}"]
    full = run_stage("start_simple", *args, timeout=180)
    line = error_line(full)
    assert "no space left" in line and str(workdir) in line
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    resumed = run_stage("start_simple", *args, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = read_summary(workdir)
    assert summary["metrics"]["steps"] == int(FULL_DISK_CASES[case][0].split("=")[1])


# Orbax's threads, stopped by the failed write, report a closed event loop as they die.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_disk_that_fills_inside_orbax_is_an_os_error_naming_the_folder(small_disk, monkeypatch):
    # Free space is checked before each save (the test above); a disk that fills meanwhile, or
    # a quota, fails inside Orbax, which must come out as the same storage error.
    from workflow import cli
    from workflow.engine import checkpoints

    plenty = shutil.disk_usage("/")._replace(free=2**50)
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: plenty)
    setup = experiment.prepare(small_config(**{"model.hidden_sizes": (5000,)}))
    ckpt = checkpoints.Checkpointer(str(small_disk / "checkpoints"))
    with pytest.raises(OSError) as raised:
        for step in (1, 2, 3):  # 0.6 MiB of parameters each (Adam's zeros compress away)
            ckpt.save(step, setup.state)
    ckpt.close()  # quietly: the error that matters is raised already
    assert raised.value.filename == str(small_disk / "checkpoints")
    assert cli.storage_error_line(raised.value).startswith("cannot write")


# ============================================================================ 3. identity


def test_a_stage_on_another_stages_directory_is_refused_and_changes_nothing(tmp_path):
    from tests.search_worker import search_config
    from workflow.tune import run_tune

    config = search_config()
    config.search.rounds = 1
    config.search.num_trials = 4
    config.search.range_test.enabled = False
    config.search.retrain_best = False
    tune_dir = tmp_path / "tune"
    run_tune(experiment.prepare(config), str(tune_dir), "configs/synthetic.py:tabular")
    before = {name: (tune_dir / name).read_bytes() for name in ("summary.json", "report.md")}
    with pytest.raises(UsageError, match="holds a tune run directory"):
        train_run(config, tune_dir)  # the same config: only the kind of run differs
    assert {name: (tune_dir / name).read_bytes() for name in before} == before


def test_checkpoints_without_config_json_are_refused_never_emptied(reference_run, tmp_path):
    ref_dir, _ = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    os.remove(workdir / "config.json")
    listing = sorted(os.listdir(workdir / "checkpoints"))
    with pytest.raises(UsageError, match="config.json"):
        train_run(small_config(), workdir)
    assert sorted(os.listdir(workdir / "checkpoints")) == listing  # nothing set aside or retrained


def test_a_failed_set_up_removes_only_what_it_wrote(tmp_path, monkeypatch):
    from workflow.engine import checkpoints

    workdir = tmp_path / "mine"
    workdir.mkdir()
    (workdir / "notes.txt").write_text("the user's own file")

    def fail(self, template):
        raise RuntimeError("restore failed")

    monkeypatch.setattr(checkpoints.Checkpointer, "latest_step", lambda self: 20)
    monkeypatch.setattr(checkpoints.Checkpointer, "restore_latest", fail)
    with pytest.raises(RuntimeError, match="restore failed"):
        train_run(small_config(), workdir)
    assert sorted(os.listdir(workdir)) == ["notes.txt"]


def test_other_data_under_the_same_config_is_refused(tmp_path):
    def write_data(seed: int) -> None:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(500, 4)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1)
        np.savez(
            tmp_path / "data.npz", x_train=x[:400], y_train=y[:400], x_test=x[400:], y_test=y[400:]
        )

    write_data(0)
    config = small_config(**{"num_steps": 20})
    config.dataset.name = "tests.broken:arrays_from_file"
    config.dataset.kwargs = {"path": str(tmp_path / "data.npz")}
    train_run(config, tmp_path / "run")
    write_data(1)
    with pytest.raises(UsageError, match="other data"):
        train_run(config, tmp_path / "run")


def test_num_steps_may_not_change_under_a_schedule_that_depends_on_it(tmp_path):
    cosine = {"optimizer.schedule.name": "cosine", "num_steps": 40}
    train_run(small_config(**cosine), tmp_path / "run")
    with pytest.raises(UsageError, match="num_steps.*cosine"):
        train_run(small_config(**{**cosine, "num_steps": 60}), tmp_path / "run")


def test_num_steps_may_grow_under_a_piecewise_schedule_to_the_longer_runs_numbers(tmp_path):
    # Its boundaries are steps, not fractions of num_steps: the steps already trained are the
    # longer run's, so growing num_steps resumes to exactly the uninterrupted longer run.
    piecewise = {"optimizer.schedule.name": "piecewise", "optimizer.schedule.boundaries": (30,)}
    train_run(small_config(**piecewise, num_steps=40), tmp_path / "grown")
    grown = train_run(small_config(**piecewise, num_steps=60), tmp_path / "grown")
    whole = train_run(small_config(**piecewise, num_steps=60), tmp_path / "whole")
    same_numbers(grown.metrics, whole.metrics)
    assert records(tmp_path / "grown") == records(tmp_path / "whole")


def test_num_steps_may_not_grow_from_off_the_evaluation_grid_with_early_stopping(tmp_path):
    # The 50-step run evaluated at step 50, which the 60-step run never does: early stopping
    # would count an evaluation the uninterrupted run does not make.
    stopping = {"early_stopping.enabled": True, "num_steps": 50}
    train_run(small_config(**stopping), tmp_path / "run")
    with pytest.raises(UsageError, match="multiple of eval_every=20"):
        train_run(small_config(**{**stopping, "num_steps": 60}), tmp_path / "run")


def test_num_steps_may_not_shrink(reference_run, tmp_path):
    ref_dir, _ = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    with pytest.raises(UsageError, match="num_steps"):
        train_run(small_config(num_steps=40), workdir)


def test_a_garbled_config_json_is_one_line(reference_run, tmp_path):
    ref_dir, _ = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    (workdir / "config.json").write_text('{"seed": 0, "mod')
    line = error_line(run_stage("start_simple", *SMALL_CONFIG_FLAGS, f"--workdir={workdir}"))
    assert "config.json" in line and "damaged" in line


# ============================================================================ 4. checks first


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"batch_size": 1000}, "batch_size=1000 exceeds the 540 training examples"),
        ({"loss": "tests.broken:loss_without_labels"}, "must take (logits, labels)"),
        ({"loss": "tests.broken:raising_loss"}, "RuntimeError: the user's loss failed"),
        ({"loss": "tests.broken:per_class_loss"}, "returns shape (32, 10) for a batch of 32"),
        ({"loss": "tests.broken:mean_loss"}, "returns shape () for a batch of 32"),
        ({"model.name": "tests.broken:RaisingModel"}, "RuntimeError: the user's model failed"),
        ({"model.name": "tests.broken:UnbuildableModel"}, "the user's model cannot be built"),
    ],
)
def test_bad_input_is_found_before_the_run_directory_is_written(tmp_path, overrides, words):
    config = small_config()
    with config.ignore_type():
        config.update_from_flattened_dict(overrides)
    with pytest.raises(UsageError) as raised:
        train_run(config, tmp_path / "run")  # prepare, then train_and_report, as a stage does
    assert words in str(raised.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"num_steps": 10**20}, "must be at most 2,147,483,647"),
        ({"num_steps": 10**8, "steps_per_call": 1}, "plans every host call up front"),
        ({"eval_batch_size": 10**9}, "must be at most 1,048,576 examples"),
    ],
)
def test_sizes_beyond_their_bounds_are_refused_before_anything_runs(overrides, words):
    # Unbounded, num_steps=10**20 planned its chunks until memory ran out.
    with pytest.raises(UsageError, match=words):
        experiment.prepare(small_config(**overrides))


def test_a_batch_the_devices_cannot_split_is_refused_before_writing(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow.start_simple",
            *SMALL_CONFIG_FLAGS,
            "--config.batch_size=33",
            f"--workdir={workdir}",
        ],
        cwd=ROOT,
        env=dict(env, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "batch_size=33" in error_line(result)
    assert not workdir.exists()


def test_the_corrected_command_runs_where_a_bad_batch_size_was_refused(tmp_path):
    workdir = tmp_path / "run"
    bad = run_stage(
        "start_simple", *SMALL_CONFIG_FLAGS, "--config.batch_size=1000", f"--workdir={workdir}"
    )
    assert "batch_size" in error_line(bad)
    assert not workdir.exists()
    fixed = run_stage("start_simple", *SMALL_CONFIG_FLAGS, f"--workdir={workdir}")
    assert fixed.returncode == 0, fixed.stderr[-3000:]


# ============================================================================ 5. data, not code


def test_best_config_py_holds_no_absolute_path_of_the_machine_that_wrote_it(tmp_path):
    config = config_lib.load_config_file("configs/synthetic.py", "tabular")
    config.optimizer.learning_rate = 0.0123
    path = tmp_path / "a" / "best_config.py"
    path.parent.mkdir()
    path.write_text(
        config_lib.config_file_text(str(path), "configs/synthetic.py:tabular", config, "a test")
    )
    assert ROOT not in path.read_text() and str(tmp_path) not in path.read_text()
    moved = tmp_path / "elsewhere" / "best_config.py"
    moved.parent.mkdir()
    shutil.move(path, moved)
    loaded = config_lib.load_config_file(str(moved))
    assert loaded.optimizer.learning_rate == 0.0123 and loaded.dataset.name == "synthetic"


TINY_RUN = [
    *SMALL_CONFIG_FLAGS,
    "--config.num_steps=40",
    "--config.debug.overfit_steps=500",
    "--config.debug.train_steps=20",
    "--config.goal.test_error=0.0",  # never met: a resumed run would go on to tune
    "--config.budget.max_rounds=0",
]


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    """workflow.run through start_simple, debug and evaluate (no rounds), finished."""
    workdir = tmp_path_factory.mktemp("workflow") / "run"
    result = run_stage("run", *TINY_RUN, f"--workdir={workdir}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads((workdir / "workflow.json").read_text())["steps"]
    assert [s["name"] for s in steps] == ["1_start_simple", "2_debug", "3_evaluate"]
    return workdir


def test_workflow_run_never_executes_a_file_its_run_directory_names(finished_workflow, tmp_path):
    workdir = copy_of(finished_workflow, tmp_path)
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n\ndef get_config(arg=None):\n    pass\n")
    state = json.loads((workdir / "workflow.json").read_text())
    tuned = json.loads(json.dumps(state["steps"][-1]))
    tuned.update(name="4_tune", stage="tune", config_source=str(evil))
    tuned["summary"]["best_config"] = str(evil)
    if "chosen" in tuned:  # the tuned values, as JSON: here an import path, which is code
        tuned["chosen"] = {"loss": "tests.broken:raising_loss"}
    state["steps"].append(tuned)
    (workdir / "workflow.json").write_text(json.dumps(state))
    result = run_stage("run", *TINY_RUN, "--config.budget.max_rounds=1", f"--workdir={workdir}")
    line = error_line(result)
    assert "workflow.json" in line
    assert not marker.exists(), "a file named by the run directory was executed"


def test_values_read_from_a_file_never_name_code_to_import():
    base = small_config()
    where = "runs/x/workflow.json"
    tuned = config_lib.apply_saved_values(base, {"optimizer.learning_rate": 0.01}, where)
    assert tuned.optimizer.learning_rate == 0.01 and base.optimizer.learning_rate == 3e-3
    for values in (
        {"loss": "os:system"},
        {"model": {"name": "tests.broken:RaisingModel"}},
        {"dataset.name": "tests.broken:raising_loader"},
    ):
        with pytest.raises(UsageError, match="import path"):
            config_lib.apply_saved_values(base, values, where)
    with pytest.raises(UsageError, match=where):
        config_lib.apply_saved_values(base, {"no_such_key": 1}, where)


def test_workflow_run_refuses_a_step_outside_its_directory(finished_workflow, tmp_path):
    workdir = copy_of(finished_workflow, tmp_path)
    state = json.loads((workdir / "workflow.json").read_text())
    state["steps"][0]["name"] = "../elsewhere"
    (workdir / "workflow.json").write_text(json.dumps(state))
    assert "workflow.json" in error_line(run_stage("run", *TINY_RUN, f"--workdir={workdir}"))


def test_workflow_run_refuses_another_config_on_a_finished_run(finished_workflow, tmp_path):
    workdir = copy_of(finished_workflow, tmp_path)
    result = run_stage(
        "run", *TINY_RUN, "--config.optimizer.learning_rate=0.01", f"--workdir={workdir}"
    )
    line = error_line(result)
    assert "different config" in line and "optimizer.learning_rate" in line
    again = run_stage("run", *TINY_RUN, f"--workdir={workdir}")  # the same command: reported
    assert again.returncode == 0, again.stderr[-3000:]


def test_workflow_run_checks_each_finished_steps_directory(finished_workflow, tmp_path):
    workdir = copy_of(finished_workflow, tmp_path)
    step_config = workdir / "1_start_simple" / "config.json"
    changed = json.loads(step_config.read_text())
    changed["seed"] = 7
    step_config.write_text(json.dumps(changed))
    line = error_line(run_stage("run", *TINY_RUN, f"--workdir={workdir}"))
    assert "1_start_simple" in line


# ============================================================================ 6. verification


def test_unreadable_checksums_are_a_warning_not_silence(reference_run, tmp_path):
    ref_dir, ref_summary = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    (workdir / "checkpoints" / "checksums.json").write_text("{garbled")
    summary = train_run(small_config(), workdir)
    same_numbers(summary.metrics, ref_summary.metrics)
    [finding] = [f for f in summary.findings if f.id == "corrupt_checkpoint"]
    assert finding.severity == "warning" and "checksums.json" in finding.message
    assert "not verified" in finding.message


def test_a_checkpoint_folder_replaced_by_another_steps_is_set_aside_without_checksums(
    reference_run, tmp_path
):
    ref_dir, ref_summary = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    checkpoints = workdir / "checkpoints"
    shutil.rmtree(checkpoints / "60")
    shutil.copytree(checkpoints / "20", checkpoints / "60")  # readable, but step 20's state
    (checkpoints / "checksums.json").write_text("{garbled")  # nothing to check it against
    summary = train_run(small_config(), workdir)
    same_numbers(summary.metrics, ref_summary.metrics)
    [finding] = [f for f in summary.findings if f.id == "corrupt_checkpoint"]
    assert finding.evidence["resumed_from"] == 40
    assert "holds the state of step 20" in finding.evidence["checkpoints"][0]["error"]
    assert records(workdir) == records(ref_dir)


def test_a_checkpoint_without_a_checksum_gives_way_to_the_verified_one_before(
    reference_run, tmp_path
):
    ref_dir, ref_summary = reference_run
    workdir = copy_of(ref_dir, tmp_path)
    sums_path = workdir / "checkpoints" / "checksums.json"
    sums = json.loads(sums_path.read_text())
    del sums["60"]
    sums_path.write_text(json.dumps(sums))
    summary = train_run(small_config(), workdir)
    same_numbers(summary.metrics, ref_summary.metrics)
    [finding] = [f for f in summary.findings if f.id == "corrupt_checkpoint"]
    assert finding.evidence["resumed_from"] == 40
    assert [c["step"] for c in finding.evidence["checkpoints"]] == [60]
    assert records(workdir) == records(ref_dir)


# ============================================================================ 7. every exit


def test_an_empty_workdir_is_refused_and_nothing_is_written_here(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "workflow.start_simple",
            f"--config={ROOT}/configs/synthetic.py:tabular",
            *SMALL_CONFIG_FLAGS[1:],
            "--workdir=",
        ],
        cwd=tmp_path,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "--workdir" in error_line(result)
    assert os.listdir(tmp_path) == []


# A config whose dataset takes no options, for the loaders below.
NO_DATASET_OPTIONS = ["--config=configs/mnist1d.py", "--config.progress=False"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--config.loss=tests.broken:loss_without_labels"], "tests.broken:loss_without_labels"),
        (["--config.loss=tests.broken:raising_loss"], "the user's loss failed"),
        (["--config.loss=tests.broken:per_class_loss"], "one value per example"),
        (["--config.model.name=tests.broken:RaisingModel"], "the user's model failed"),
        (
            [*NO_DATASET_OPTIONS, "--config.dataset.name=tests.broken:raising_loader"],
            "the user's loader failed",
        ),
        ([*NO_DATASET_OPTIONS, "--config.dataset.name=sys:exit"], "sys:exit"),
    ],
)
def test_user_code_that_fails_is_one_line_naming_it(tmp_path, args, words):
    workdir = tmp_path / "run"
    flags = args if args[0].startswith("--config=") else [*SMALL_CONFIG_FLAGS, *args]
    result = run_stage("start_simple", *flags, f"--workdir={workdir}")
    assert words in error_line(result)
    assert not workdir.exists()


def test_verbose_adds_the_traceback_of_the_users_code(tmp_path):
    result = run_stage(
        "start_simple",
        *SMALL_CONFIG_FLAGS,
        "--config.loss=tests.broken:raising_loss",
        "--verbose",
        f"--workdir={tmp_path / 'run'}",
    )
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "broken.py" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_config_file_whose_get_config_returns_a_dict_is_one_line(tmp_path):
    result = run_stage("start_simple", "--config=tests/broken_config.py", f"--workdir={tmp_path}")
    assert "ConfigDict" in error_line(result)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_a_resume_hint_and_the_run_resumes(tmp_path):
    workdir = tmp_path / "run"
    args = [
        *SMALL_CONFIG_FLAGS,
        "--config.model.name=tests.fault_models:SlowMLP",
        "--config.num_steps=300",
        f"--workdir={workdir}",
    ]
    proc = start_stage(
        "start_simple", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / "40").is_dir():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no checkpoint at step 40 in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert "interrupted" in lines[0] and "resume" in lines[0]
    assert not (workdir / rundir.LOCK).exists()
    resumed = run_stage("start_simple", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_summary(workdir)["metrics"]["steps"] == 300
