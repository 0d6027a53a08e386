"""The grain input pipeline (config.dataset.pipeline="grain"): the memory pipeline's numbers,
its iterator state in the checkpoint, resumes to the uninterrupted records, and bad settings."""

import json
import os
import shutil
import signal
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import (
    SMALL_CONFIG_FLAGS,
    TIMING_KEYS,
    records,
    run_stage,
    same_numbers,
    small_config,
    start_until_checkpoint,
    train_run,
)
from workflow import config_lib, data, engine, experiment
from workflow.data import pipeline
from workflow.engine import checkpoints
from workflow.errors import UsageError

GRAIN = {"dataset.pipeline": "grain"}


@pytest.fixture(scope="module")
def grain_run(tmp_path_factory):
    """small_config() trained on the grain pipeline (checkpoints at 20, 40, 60)."""
    workdir = tmp_path_factory.mktemp("grain")
    return workdir, train_run(small_config(**GRAIN), workdir)


def saved_data_state(workdir, step: int) -> dict | None:
    """The data state of the checkpoint at `step`, read with Orbax's standard API."""
    manager = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"))
    try:
        restored = manager.restore(step, args=ocp.args.StandardRestore())
    finally:
        manager.close()
    if checkpoints.DATA_STATE not in restored:
        return None
    return checkpoints.decode_data_state(restored[checkpoints.DATA_STATE], step)


# ----------------------------------------------------------------------------- item 1


def test_the_grain_pipeline_trains_the_memory_pipelines_records(reference_run, grain_run):
    ref_dir, ref_summary = reference_run
    workdir, summary = grain_run
    same_numbers(summary.metrics, ref_summary.metrics)
    assert records(workdir) == records(ref_dir)  # the same batches in the same order


def test_a_process_reads_its_part_and_the_parts_make_the_global_batch():
    whole = data.batch_indices(50, 8, 3, 17, 1)[0]
    parts = [pipeline.BatchPlan(50, 8, 3, process=p, processes=4).indices(17) for p in range(4)]
    assert [len(p) for p in parts] == [2, 2, 2, 2]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    # Per-host data: each process draws its part from its own shard, as a device block would.
    blocks = data.block_batch_indices(20, 4, 8, 3, 17, 1)[0]
    own = [pipeline.BatchPlan(20, 8, 3, p, 4, per_host=True).indices(17) for p in range(4)]
    np.testing.assert_array_equal(np.concatenate(own), blocks)


def stream(x, y, config, start, chunks, resume=None):
    """A Stream over arrays with config's settings (one process)."""
    plan = pipeline.BatchPlan(len(y), config.batch_size, config.seed)
    return pipeline.Stream(pipeline.ArraySource(x, y), plan, config, start, chunks, resume)


def test_a_chunk_stacks_each_steps_batch_and_a_stream_resumes_from_its_saved_state():
    config = small_config(**GRAIN, num_steps=30)
    x = np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    y = np.arange(100, dtype=np.int32)
    whole = stream(x, y, config, 0, [10, 10, 10])
    try:
        chunks = [whole.next_chunk(10) for _ in range(3)]
        saved = whole.state_at(10)
    finally:
        whole.close()
    assert chunks[0].x.shape == (10, 32, 3) and chunks[0].y.shape == (10, 32)
    expected = data.batch_indices(100, 32, config.seed, 10, 10)
    np.testing.assert_array_equal(chunks[1].y, expected)  # y[i] == i: the examples of each step
    np.testing.assert_array_equal(chunks[1].x[..., 0], expected)
    assert saved["first_step"] == 0 and saved["step"] == 10
    resumed = stream(x, y, config, 10, [10, 10], resume=json.loads(json.dumps(saved)))
    try:
        again = [resumed.next_chunk(10) for _ in range(2)]
    finally:
        resumed.close()
    for a, b in zip(again, chunks[1:], strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"dataset.pipeline": "tfdata"}, "dataset.pipeline='tfdata': one of memory, grain"),
        ({"dataset.grain.worker_count": -1}, "dataset.grain.worker_count=-1: must be an integer"),
        ({"dataset.grain.prefetch_chunks": 0}, "dataset.grain.prefetch_chunks=0: must be"),
        ({"dataset.grain.worker_buffer_size": 0}, "dataset.grain.worker_buffer_size=0"),
        ({"dataset.grain.augment_on_host": 1}, "augment_on_host=1: must be True or False"),
    ],
)
def test_bad_pipeline_settings_are_one_line_naming_the_value(overrides, words):
    config = small_config()
    with config.ignore_type():
        config.update_from_flattened_dict(overrides)
    with pytest.raises(UsageError, match=words):
        config_lib.validate_config(config)


def test_a_bad_pipeline_on_the_command_line_exits_2_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    flags = [*SMALL_CONFIG_FLAGS, "--config.dataset.pipeline=disk", f"--workdir={workdir}"]
    result = run_stage("start_simple", *flags)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "dataset.pipeline='disk'" in lines[0] and "memory, grain" in lines[0]
    assert not workdir.exists()


def fit_records(config) -> list[dict]:
    """engine.fit's records of `config` from its initial state, timing fields left out."""
    setup = experiment.prepare(config)
    result = engine.fit(setup.task, setup.state, setup.dataset, config, progress=False)
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in result.records]


def test_augmentation_on_the_host_gives_the_train_steps_augmented_numbers():
    # Image shifts drawn from step_key(seed, step) on the host's CPU in the grain pipeline,
    # instead of in the train step: the same augmented batches, so the same records.
    overrides = {"num_steps": 20, "steps_per_call": 10, "eval_every": 20, "augment.enabled": True}
    in_step = fit_records(small_config("image", "mlp", **overrides))
    on_host = fit_records(
        small_config(
            "image", "mlp", **overrides, **GRAIN, **{"dataset.grain.augment_on_host": True}
        )
    )
    plain = fit_records(small_config("image", "mlp", **{**overrides, "augment.enabled": False}))
    assert on_host == in_step
    assert on_host != plain  # the augmentation changed the numbers: it ran


# ----------------------------------------------------------------------------- item 2


def test_a_grain_checkpoint_holds_the_iterator_state_and_a_memory_one_none(
    reference_run, grain_run
):
    workdir, _ = grain_run
    state = saved_data_state(workdir, 40)
    assert state["pipeline"] == "grain" and state["step"] == 40 and state["first_step"] == 0
    assert state["iterator"] == {"next_index": 40}  # grain's own get_state()
    ref_dir, _ = reference_run
    assert saved_data_state(ref_dir, 40) is None  # the memory pipeline's checkpoint is as before


def test_a_damaged_data_state_fails_the_checksum_and_is_set_aside(grain_run, tmp_path):
    workdir, _ = grain_run
    copy = tmp_path / "checkpoints"
    shutil.copytree(workdir / "checkpoints", copy)
    # Rewrite step 60 with another data state but the arrays and checksum of the original.
    manager = ocp.CheckpointManager(os.path.abspath(copy))
    restored = manager.restore(60, args=ocp.args.StandardRestore())
    manager.close()
    state = checkpoints.decode_data_state(restored[checkpoints.DATA_STATE], 60)
    state["iterator"] = {"next_index": 59}
    restored[checkpoints.DATA_STATE] = checkpoints.encode_data_state(state)
    shutil.rmtree(copy / "60")
    manager = ocp.CheckpointManager(os.path.abspath(copy))
    manager.save(60, args=ocp.args.StandardSave(restored), force=True)
    manager.wait_until_finished()
    manager.close()
    setup = experiment.prepare(small_config(**GRAIN))
    ckpt = checkpoints.Checkpointer(str(copy))
    try:
        _, step, skipped = ckpt.restore_latest(setup.state)
        assert step == 40 and [s["step"] for s in skipped] == [60]
        assert "does not match the checksum" in skipped[0]["error"]
        assert ckpt.data_state(40)["iterator"] == {"next_index": 40}
    finally:
        ckpt.close()


def test_a_resumed_grain_run_continues_its_saved_iterator_to_the_same_records(grain_run, tmp_path):
    ref_dir, ref_summary = grain_run
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    path = workdir / "metrics.jsonl"
    text = path.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    path.write_text(text[: len(text) - len(last) // 2 - 1])  # killed writing step 60's record
    summary = train_run(small_config(**GRAIN), workdir)  # resumes from the checkpoint at 40
    same_numbers(summary.metrics, ref_summary.metrics)
    assert records(workdir) == records(ref_dir)
    # The new checkpoint's iterator continued the saved one (a fresh one would start at 40).
    assert saved_data_state(workdir, 60) == {
        "version": pipeline.STATE_VERSION,
        "pipeline": "grain",
        "first_step": 0,
        "step": 60,
        "iterator": {"next_index": 60},
    }


def test_a_checkpoint_without_a_data_state_resumes_on_the_grain_pipeline(reference_run):
    ref_dir, _ = reference_run
    config = small_config(**GRAIN)
    setup = experiment.prepare(config)
    ckpt = checkpoints.Checkpointer(str(ref_dir / "checkpoints"))
    try:
        state = ckpt.restore(40, setup.state)
        assert ckpt.data_state(40) is None
        result = engine.fit(setup.task, state, setup.dataset, config, progress=False)
    finally:
        ckpt.close()
    resumed = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in result.records]
    assert resumed == [r for r in records(ref_dir) if r["step"] > 40]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux's /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


@pytest.mark.slow
def test_kill_9_with_grain_workers_then_the_same_command_ends_with_the_uninterrupted_records(
    tmp_path,
):
    # A model paused 10 ms per call (tests/fault_models.py) makes the run slow enough to kill
    # between checkpoints; one grain worker process reads the batches.
    args = [
        "--config=configs/synthetic.py",
        "--config.model.name=tests.fault_models:SlowMLP",
        "--config.dataset.kwargs.num_train=600",
        "--config.dataset.kwargs.num_test=200",
        "--config.dataset.pipeline=grain",
        "--config.dataset.grain.worker_count=1",
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
    workers = children(proc.pid)
    assert workers, "no grain worker process"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()  # killed mid-run, before the end
    deadline = time.monotonic() + 30
    while any(os.path.exists(f"/proc/{pid}") for pid in workers):  # they die with the run
        assert time.monotonic() < deadline, "grain workers outlived the killed run"
        time.sleep(0.1)

    resumed = run_stage("start_simple", *args, f"--workdir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = run_stage("start_simple", *args, f"--workdir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-2000:]
    summary = json.loads((killed / "summary.json").read_text())
    reference = json.loads((tmp_path / "whole" / "summary.json").read_text())
    same_numbers(summary["metrics"], reference["metrics"])
    assert records(killed) == records(tmp_path / "whole")
    assert saved_data_state(killed, 300)["first_step"] == 0  # the iterator was carried over


# ----------------------------------------------------------------------------- two processes


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["replicated", "per_host"])
def test_two_processes_on_grain_read_their_parts_to_the_memory_pipelines_numbers(layout, tmp_path):
    # Each process reads its half of every batch (replicated: from the whole split; per_host:
    # from its own shard, as its device block would) and the global batch is assembled from
    # the halves: the memory pipeline's numbers in the same layout.
    from tests.test_multihost import run_two_processes, summary_of

    flags = [f"--config.parallel.data={layout}"]
    runs = run_two_processes(tmp_path / "grain", *flags, "--config.dataset.pipeline=grain")
    for pid in (0, 1):
        assert runs[pid]["fit"]["data"]["pipeline"] == "grain"
    run_two_processes(tmp_path / "memory", *flags)
    grain, memory = summary_of(tmp_path / "grain"), summary_of(tmp_path / "memory")
    assert grain["metrics"]["steps"] == memory["metrics"]["steps"] == 60
    for key in ("train_loss", "val_loss", "test_loss", "test_accuracy"):
        assert grain["metrics"][key] == pytest.approx(memory["metrics"][key], abs=1e-5), key
