"""The grain pipeline's lazy sources (workflow/data/lazy.py): an image folder's training split
read as files (decoded by grain's workers), TFDS records through tfds.data_source and
array_record files; each trains the memory pipeline's numbers, resumes, and a bad record is
one line."""

import gc
import json
import os
import pickle
import signal

import ml_collections
import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    TIMING_KEYS,
    records,
    run_stage,
    same_numbers,
    small_config,
    start_until_checkpoint,
)
from tests.user_setups import digits_folder
from workflow import data, engine, experiment
from workflow.data import pipeline, readers
from workflow.errors import UsageError


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory):
    """The 8x8 digits as PNGs, digit_images/<class>/<index>.png."""
    return digits_folder(tmp_path_factory.mktemp("digits"))


def folder_config(folder, pipeline_name: str, **overrides):
    """small_config's image MLP on an image folder, on `pipeline_name`."""
    config = small_config("image", "mlp")
    config.dataset.kwargs = ml_collections.ConfigDict()
    config.update_from_flattened_dict(
        {"dataset.name": str(folder), "dataset.pipeline": pipeline_name, **overrides}
    )
    return config


def fit_records(config) -> tuple[list[dict], experiment.Setup]:
    """engine.fit's records of `config` from its initial state (timing left out), and setup."""
    setup = experiment.prepare(config)
    result = engine.fit(setup.task, setup.state, setup.dataset, config, progress=False)
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in result.records], setup


def load(folder, pipeline_name: str = "grain", **options):
    """load_dataset of an image folder on `pipeline_name`."""
    cfg = data.default_config()
    cfg.name = str(folder)
    cfg.pipeline = pipeline_name
    cfg.update(options)
    return data.load_dataset(cfg, seed=0)


def write_images(root, per_class: int = 30, size: int = 8) -> None:
    """Two classes of random grayscale PNGs in root/<class>/."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size), dtype=np.uint8)
            Image.fromarray(pixels, "L").save(root / c / f"{i:03d}.png")


# ----------------------------------------------------------------------------- lazy inputs


def test_lazy_inputs_index_like_the_decoded_array_and_take_subsets_without_reading():
    x = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)

    class Counting:
        reads = 0

        def __len__(self):
            return len(x)

        def read(self, record):
            Counting.reads += 1
            return x[record]

        def describe(self):
            return {"format": "test"}

    inputs = data.LazyInputs(Counting(), np.arange(5), (2, 3))
    assert inputs.shape == (5, 2, 3) and inputs.dtype == np.float32 and len(inputs) == 5
    assert inputs.nbytes == x.nbytes and Counting.reads == 0
    np.testing.assert_array_equal(inputs[3], x[3])
    np.testing.assert_array_equal(inputs[1:4], x[1:4])
    np.testing.assert_array_equal(inputs[np.array([4, 0])], x[[4, 0]])
    np.testing.assert_array_equal(np.asarray(inputs), x)
    Counting.reads = 0
    subset = inputs.take(np.array([3, 1]))  # lazy: nothing read
    assert Counting.reads == 0 and subset.shape == (2, 2, 3)
    np.testing.assert_array_equal(subset[:], x[[3, 1]])
    stats = {"mean": [1.0, 2.0, 3.0], "std": [2.0, 2.0, 2.0]}
    np.testing.assert_allclose(inputs.normalized(stats)[2], (x[2] - [1, 2, 3]) / 2)
    assert len(inputs.sample(3)) == 3 and len(inputs.sample(10)) == 5
    np.testing.assert_array_equal(data.bounded(x), x)  # arrays pass through


def test_an_image_folder_on_grain_keeps_its_training_images_as_files(digit_images):
    memory, grain = load(digit_images, "memory"), load(digit_images)
    assert isinstance(grain.x_train, data.LazyInputs)
    assert all(isinstance(a, np.ndarray) for a in (grain.x_val, grain.x_test, grain.y_train))
    # The same examples in the same order: decoded, they are the memory pipeline's arrays.
    np.testing.assert_array_equal(grain.x_train[:], memory.x_train)
    np.testing.assert_array_equal(grain.y_train, memory.y_train)
    np.testing.assert_array_equal(grain.x_val, memory.x_val)
    np.testing.assert_array_equal(grain.x_test, memory.x_test)
    # Fewer training examples than the statistics' sample: the same statistics.
    assert grain.normalization == memory.normalization
    assert grain.info["normalization_sample"] == len(grain.y_train)
    summary = grain.summary()
    assert summary["splits"] == memory.summary()["splits"]
    assert summary["train_inputs"]["format"] == "image files"
    assert pickle.loads(pickle.dumps(grain.x_train)).shape == grain.x_train.shape  # to workers


def test_a_large_lazy_split_is_never_decoded_whole(digit_images, monkeypatch):
    # Statistics from a bounded sample: loading decodes the sample, val and test, not train.
    monkeypatch.setattr("workflow.data.dataset.NORMALIZATION_SAMPLE", 200)
    decoded = []
    read = readers.ImageFiles.read
    monkeypatch.setattr(
        readers.ImageFiles, "read", lambda self, i: decoded.append(i) or read(self, i)
    )
    grain = load(digit_images)
    # Read: the sample, and the val and test examples (carved from the files, held in memory).
    assert grain.info["normalization_sample"] == 200
    assert len(decoded) == 200 + len(grain.y_val) + len(grain.y_test) < 1797
    again = load(digit_images)  # a seeded sample: the same statistics every time
    assert again.normalization == grain.normalization
    memory = load(digit_images, "memory")
    assert grain.normalization != memory.normalization  # a sample's, not every example's
    np.testing.assert_allclose(grain.normalization["mean"], memory.normalization["mean"], atol=0.1)


def test_per_host_shards_of_a_lazy_split_are_the_memory_pipelines_shards(digit_images):
    cfg = data.default_config()
    cfg.name = str(digit_images)
    parts = {}
    for name in ("memory", "grain"):
        cfg.pipeline = name
        parts[name] = data.load_dataset(cfg, seed=0, shard=data.Shard(1, 2))
    assert isinstance(parts["grain"].x_train, data.LazyInputs)
    np.testing.assert_array_equal(parts["grain"].x_train[:], parts["memory"].x_train)
    assert parts["grain"].info["shard"]["start"] == parts["memory"].info["shard"]["start"] > 0


def test_grain_workers_decode_an_image_folder_to_the_memory_pipelines_records(digit_images):
    # One worker process opens, decodes and normalizes each batch's images.
    overrides = {"num_steps": 20, "steps_per_call": 10, "eval_every": 20, "log_every": 10}
    memory, _ = fit_records(folder_config(digit_images, "memory", **overrides))
    grain, setup = fit_records(
        folder_config(digit_images, "grain", **overrides, **{"dataset.grain.worker_count": 1})
    )
    assert isinstance(setup.dataset.x_train, data.LazyInputs)
    assert grain == memory


def test_a_corrupt_image_read_in_a_grain_worker_is_one_error_naming_it(tmp_path):
    write_images(tmp_path / "images")
    bad = tmp_path / "images" / "b" / "007.png"
    bad.write_bytes(bad.read_bytes()[:60])  # its header reads; its pixels do not
    ds = load(tmp_path / "images", normalize=False)  # nothing decodes the training split
    plan = pipeline.BatchPlan(len(ds.y_train), len(ds.y_train), 0)
    config = small_config(**{"dataset.pipeline": "grain", "dataset.grain.worker_count": 1})
    stream = pipeline.Stream(pipeline.ArraySource(ds.x_train, ds.y_train), plan, config, 0, [1])
    try:
        with pytest.raises(UsageError, match=r"^image '.*b/007.png' cannot be read \(") as e:
            stream.next_chunk(1)
    finally:
        stream.close()
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_corrupt_image_during_training_exits_2_with_one_line(tmp_path):
    write_images(tmp_path / "images")
    bad = tmp_path / "images" / "a" / "011.png"
    bad.write_bytes(bad.read_bytes()[:60])
    workdir = tmp_path / "run"
    result = run_stage(
        "start_simple",
        "--config=configs/digits.py",
        f"--config.dataset.name={tmp_path / 'images'}",
        "--config.dataset.pipeline=grain",
        "--config.dataset.grain.worker_count=1",
        "--config.dataset.normalize=False",
        "--config.num_steps=20",
        "--config.batch_size=16",
        "--config.progress=False",
        f"--workdir={workdir}",
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert f"image '{bad}' cannot be read" in lines[0]
    assert not (workdir / "summary.json").exists()
    assert not [f for f in workdir.rglob("*") if ".tmp" in f.name]  # nothing half-written


def test_a_folder_without_images_is_refused_on_grain(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir(parents=True)
    with pytest.raises(UsageError, match=r"empty' needs one folder of images per class"):
        load(tmp_path / "empty")


@pytest.mark.slow
def test_kill_9_on_a_lazy_image_folder_resumes_to_the_uninterrupted_records(digit_images, tmp_path):
    args = [
        "--config=configs/digits.py",
        f"--config.dataset.name={digit_images}",
        "--config.model.name=tests.fault_models:SlowMLP",
        "--config.dataset.pipeline=grain",
        "--config.dataset.grain.worker_count=1",
        "--config.num_steps=300",
        "--config.batch_size=32",
        "--config.steps_per_call=25",
        "--config.checkpoint_every=50",
        "--config.eval_every=50",
        "--config.log_every=25",
        "--config.progress=False",
    ]
    killed = tmp_path / "killed"
    proc = start_until_checkpoint(args, killed, 100)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists()
    resumed = run_stage("start_simple", *args, f"--workdir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = run_stage("start_simple", *args, f"--workdir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-2000:]
    summary = json.loads((killed / "summary.json").read_text())
    reference = json.loads((tmp_path / "whole" / "summary.json").read_text())
    same_numbers(summary["metrics"], reference["metrics"])
    assert records(killed) == records(tmp_path / "whole")
    assert summary["dataset"]["train_inputs"]["format"] == "image files"


# ----------------------------------------------------------------------------- TFDS


def test_a_tfds_training_split_on_grain_is_read_through_its_data_source(tmp_path):
    # tfds.testing.mock_data: records generated per index, the same on every read; the grain
    # pipeline reads the train split's records by index as batches need them (threads of this
    # process: the mock lives in it), the memory pipeline all of them at load.
    tfds = pytest.importorskip("tensorflow_datasets")
    overrides = {"num_steps": 10, "steps_per_call": 10, "eval_every": 10, "batch_size": 16}
    runs = {}
    gc.collect()  # earlier tests' garbage collected outside the mock (tests/conftest.py)
    with tfds.testing.mock_data(num_examples=120):
        for name in ("memory", "grain"):
            runs[name] = fit_records(folder_config("tfds:mnist", name, **overrides))
    (memory, memory_setup), (grain, grain_setup) = runs["memory"], runs["grain"]
    lazy_train = grain_setup.dataset.x_train
    assert isinstance(lazy_train, data.LazyInputs)
    assert lazy_train.describe()["format"] == "tfds.data_source"
    np.testing.assert_array_equal(grain_setup.dataset.y_train, memory_setup.dataset.y_train)
    assert grain == memory


# ----------------------------------------------------------------------------- array_record


@pytest.fixture(scope="module")
def digit_records(tmp_path_factory):
    """The digits (8x8x1 images in [0, 1], labels) as train.array_record and
    test.array_record, written by readers.write_array_record."""
    from sklearn import datasets

    digits = datasets.load_digits()
    x = (digits.images[..., None] / 16.0).astype(np.float32)
    folder = tmp_path_factory.mktemp("records")
    readers.write_array_record(folder / "train.array_record", x[:1400], digits.target[:1400])
    readers.write_array_record(folder / "test.array_record", x[1400:], digits.target[1400:])
    return folder, x, digits.target


def test_an_array_record_folder_trains_on_grain_to_the_memory_pipelines_records(
    digit_records,
):
    folder, x, y = digit_records
    raw = load(folder, "grain", normalize=False)  # the records hold the arrays written
    np.testing.assert_array_equal(raw.x_test, x[1400:])
    np.testing.assert_array_equal(raw.x_train[:3], x[raw.x_train.records[:3]])
    # The reader goes to grain's worker processes by pickle: it reopens the files by name.
    reader = pickle.loads(pickle.dumps(raw.x_train.reader))
    np.testing.assert_array_equal(reader.read(5), x[5])
    overrides = {"num_steps": 10, "steps_per_call": 10, "eval_every": 10, "log_every": 5}
    memory, _ = fit_records(folder_config(folder, "memory", **overrides))
    grain, setup = fit_records(folder_config(folder, "grain", **overrides))
    assert setup.dataset.x_train.describe()["format"] == "array_record"
    assert setup.dataset.info["record_format"] == readers.RECORD_FORMAT
    assert grain == memory


def test_one_array_record_file_has_its_test_split_carved_like_any_file(digit_records):
    folder, x, y = digit_records
    one = load(folder / "train.array_record")
    assert isinstance(one.x_train, data.LazyInputs) and one.info["test_source"].startswith("carved")
    memory = load(folder / "train.array_record", "memory")
    np.testing.assert_array_equal(one.x_train[:], memory.x_train)
    np.testing.assert_array_equal(one.x_test, memory.x_test)


def raw_bytes_records(path):
    """An array_record file whose records are plain strings, not RECORD_FORMAT."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), "group_size:1")
    for i in range(10):
        writer.write(f"example {i}".encode())
    writer.close()
    return path


def test_an_array_record_of_another_format_is_one_line_naming_the_file(tmp_path):
    path = raw_bytes_records(tmp_path / "raw.array_record")
    for name in ("grain", "memory"):
        with pytest.raises(
            UsageError, match=r"^array_record '.*raw.array_record' record 0 is "
        ) as e:
            load(path, name)
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_a_stage_on_an_array_record_of_another_format_exits_2_writing_nothing(tmp_path):
    path = raw_bytes_records(tmp_path / "raw.array_record")
    workdir = tmp_path / "run"
    result = run_stage(
        "start_simple",
        "--config=configs/digits.py",
        f"--config.dataset.name={path}",
        "--config.dataset.pipeline=grain",
        f"--workdir={workdir}",
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "raw.array_record' record 0 is not in the record format (each record" in lines[0]
    assert not workdir.exists()


def test_write_array_record_leaves_no_partial_file_when_the_arrays_disagree(tmp_path):
    with pytest.raises(UsageError, match="x has 3 examples but y 2"):
        readers.write_array_record(tmp_path / "a.array_record", np.zeros((3, 2)), [0, 1])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["debug", "evaluate"])
def test_the_stages_that_read_the_training_split_run_on_a_lazy_one(digit_images, tmp_path, stage):
    # The debug stage's checks and probes, evaluate's train metrics and error analysis read
    # the lazy split by samples and batches.
    workdir = tmp_path / stage
    result = run_stage(
        stage,
        "--config=configs/digits.py",
        f"--config.dataset.name={digit_images}",
        "--config.dataset.pipeline=grain",
        "--config.num_steps=100",
        "--config.progress=False",
        f"--workdir={workdir}",
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["dataset"]["train_inputs"]["format"] == "image files"


@pytest.mark.slow
def test_two_processes_each_read_only_their_shard_of_a_lazy_folder_to_the_memory_numbers(
    digit_images, tmp_path
):
    # Per-host data: each process keeps only its half of the files and its grain pipeline
    # reads its part of every batch from them; the memory pipeline's per-host numbers.
    from tests.test_multihost import summary_of, tagged_lines, two_processes

    flags = [
        "--config=configs/digits.py",
        f"--config.dataset.name={digit_images}",
        "--config.num_steps=60",
        "--config.batch_size=32",
        "--config.steps_per_call=20",
        "--config.eval_every=20",
        "--config.progress=False",
        "--config.parallel.data=per_host",
    ]
    metrics = {}
    for name in ("grain", "memory"):
        workdir = tmp_path / name
        done = two_processes("start_simple", workdir, *flags, f"--config.dataset.pipeline={name}")
        assert {pid: code for pid, (code, _, _) in done.items()} == {0: 0, 1: 0}, done
        fits = {pid: tagged_lines(err, "MULTIHOST")[0] for pid, (_, _, err) in done.items()}
        assert fits[1]["shard"]["start"] == fits[0]["shard"]["stop"] > 0
        summary = summary_of(workdir)
        if name == "grain":
            assert summary["dataset"]["train_inputs"]["examples"] == fits[0]["shard"]["size"]
        metrics[name] = summary["metrics"]
    same_numbers(metrics["grain"], metrics["memory"])
