"""Per-host data in one process: shards of the training split, the statistics combined from
them, TFDS reading only its records, and the per-device batch indices (data.py). The
multi-process runs are in tests/test_multihost.py, the 8-device one in tests/test_parallel.py."""

import ml_collections
import numpy as np
import pytest

from workflow import data
from workflow.data import Shard, load_dataset, sources
from workflow.errors import UsageError


def synthetic_cfg(**fields) -> ml_collections.ConfigDict:
    cfg = data.default_config()
    cfg.name = "synthetic"
    cfg.normalize = fields.pop("normalize", False)
    cfg.kwargs = ml_collections.ConfigDict({"kind": "tabular", "num_train": 300, "num_test": 100})
    cfg.update(fields)
    return cfg


def test_shards_are_equal_contiguous_ranges_of_the_whole_training_split():
    whole = load_dataset(synthetic_cfg(), seed=0, shard=None)
    parts = [load_dataset(synthetic_cfg(), seed=0, shard=Shard(i, 2, 4)) for i in (0, 1)]
    # 300 examples, 30 carved for val: 270, of which 2 x 4 divide 264; 6 dropped.
    assert [len(p.y_train) for p in parts] == [132, 132]
    np.testing.assert_array_equal(np.concatenate([p.x_train for p in parts]), whole.x_train[:264])
    np.testing.assert_array_equal(np.concatenate([p.y_train for p in parts]), whole.y_train[:264])
    for part in parts:  # val and test stay whole on every host, carved before sharding
        np.testing.assert_array_equal(part.x_val, whole.x_val)
        np.testing.assert_array_equal(part.x_test, whole.x_test)
    shard = parts[1].info["shard"]
    assert (shard["start"], shard["stop"], shard["size"]) == (132, 264, 132)
    assert (shard["global_size"], shard["dropped"], shard["processes"]) == (264, 6, 2)
    assert "sliced" in shard["read"]
    summary = parts[1].summary()
    assert summary["splits"]["train"]["size"] == 264 and summary["shard"]["dropped"] == 6


def test_one_process_loads_everything_unless_told_otherwise():
    assert data.process_shard() is None  # "auto" with one process: replicated
    assert "shard" not in load_dataset(synthetic_cfg(), seed=0).info
    config = ml_collections.ConfigDict({"parallel": {"data": "per_host", "data_devices": 0}})
    shard = data.process_shard(config)
    assert (shard.index, shard.count) == (0, 1)


def test_too_few_examples_for_the_shards_is_a_usage_error():
    with pytest.raises(UsageError, match="per-host data needs at least 512 training examples"):
        load_dataset(synthetic_cfg(), seed=0, shard=Shard(0, 2, 256))


def test_combined_statistics_are_the_whole_training_splits():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(203, 5, 3)) * [1.0, 10.0, 1e-3] + [5.0, -3.0, 1e4]).astype(np.float32)
    whole = data.compute_normalization(x)
    combined = data.combined_normalization(x[:200], x[200:])  # a shard and the dropped rows
    np.testing.assert_allclose(combined["mean"], whole["mean"], rtol=1e-12)
    np.testing.assert_allclose(combined["std"], whole["std"], rtol=1e-9)
    assert data.combined_normalization(x, None)["mean"] == pytest.approx(whole["mean"])


def test_per_host_normalization_counts_the_dropped_examples():
    # One process: its shard is everything kept, the rest are the dropped rows.
    whole = load_dataset(synthetic_cfg(normalize=True), seed=0, shard=None)
    part = load_dataset(synthetic_cfg(normalize=True), seed=0, shard=Shard(0, 1, 8))
    assert part.info["shard"]["dropped"] == 270 % 8
    np.testing.assert_allclose(part.normalization["mean"], whole.normalization["mean"], rtol=1e-9)
    np.testing.assert_allclose(part.normalization["std"], whole.normalization["std"], rtol=1e-9)


def test_tfds_reads_only_this_processs_records(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    reads = []
    read = sources._read_tfds_source

    def counting(source, image_key, label_key, indices=None):
        reads.append(len(source) if indices is None else len(indices))
        return read(source, image_key, label_key, indices)

    monkeypatch.setattr(sources, "_read_tfds_source", counting)
    cfg = data.default_config()
    cfg.name = "tfds:mnist"
    cfg.normalize = False
    with tfds.testing.mock_data(num_examples=20):
        whole = load_dataset(cfg, seed=0, shard=None)
        reads.clear()
        parts = []
        for i in (0, 1):
            parts.append(load_dataset(cfg, seed=0, shard=Shard(i, 2, 1)))
    # Each process: its 9 training records, no dropped ones, 2 carved val and the 20 test.
    assert reads == [9, 0, 2, 20] * 2
    assert [len(p.y_train) for p in parts] == [9, 9] and len(parts[0].y_val) == 2
    assert parts[0].info["shard"]["read"].startswith("11 of the 20 records")
    assert "not stratified" in parts[0].info["val_source"]
    np.testing.assert_array_equal(parts[0].x_val, parts[1].x_val)  # every host carves alike

    def rows(x):
        return {r.tobytes() for r in x.reshape(len(x), -1)}

    # The halves and val: disjoint, and together the whole training split of the source.
    halves = [rows(p.x_train) for p in parts]
    assert not halves[0] & halves[1] and not (halves[0] | halves[1]) & rows(parts[0].x_val)
    assert halves[0] | halves[1] | rows(parts[0].x_val) == rows(whole.x_train) | rows(whole.x_val)


def test_block_indices_visit_each_block_in_epoch_permutations():
    idx = data.block_batch_indices(12, 4, 12, seed=3, step=0, num_steps=8)
    assert idx.shape == (8, 12)
    for d in range(4):
        columns = idx[:, 3 * d : 3 * (d + 1)]
        for epoch in range(2):  # 12 examples, 3 per step: an epoch of 4 steps
            np.testing.assert_array_equal(
                np.sort(columns[4 * epoch : 4 * epoch + 4].ravel()), range(12)
            )
    assert len({idx[:4, 3 * d : 3 * (d + 1)].tobytes() for d in range(4)}) == 4  # own orders
    # A function of the step: a resumed run draws what the uninterrupted one did.
    np.testing.assert_array_equal(data.block_batch_indices(12, 4, 12, 3, 5, 3), idx[5:8])
    np.testing.assert_array_equal(data.block_batch_indices(12, 4, 12, 3, 0, 8), idx)


def test_block_indices_refuse_a_batch_the_blocks_cannot_serve():
    with pytest.raises(UsageError, match="multiple of the 4 device blocks"):
        data.block_batch_indices(12, 4, 10, 0, 0, 1)
    with pytest.raises(UsageError, match="use batch_size <= 48"):
        data.block_batch_indices(12, 4, 64, 0, 0, 1)


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_tasks_beyond_classification_shard_with_the_whole_splits_statistics(task):
    """Regression's target statistics and multi-label's label counts are the whole training
    split's on every host; each host trains on its own slice of the standardized targets."""
    cfg = synthetic_cfg()
    if task == "regression":
        cfg.kwargs = ml_collections.ConfigDict({"kind": task, "num_train": 300, "num_test": 100})
    else:  # scikit-learn's digits as three yes/no questions
        cfg.name = "workflow.data.examples:digits_multilabel"
        cfg.kwargs = ml_collections.ConfigDict()
    whole = load_dataset(cfg, seed=0, shard=None, task=task)
    parts = [load_dataset(cfg, seed=0, shard=Shard(i, 2, 4), task=task) for i in (0, 1)]
    kept = len(parts[0].y_train) * 2
    assert kept == len(whole.y_train) - len(whole.y_train) % 8
    np.testing.assert_array_equal(np.concatenate([p.y_train for p in parts]), whole.y_train[:kept])
    train = parts[1].summary()["splits"]["train"]
    assert train["size"] == kept
    if task == "regression":
        assert all(p.task == whole.task for p in parts)  # the whole split's, not a shard's
        assert train["target_mean"] == list(whole.task.mean)
    else:
        # One process here: the sum over processes is this shard's own positives per label.
        expected = np.sum(parts[1].y_train, axis=0).astype(int).tolist()
        assert train["label_counts"] == expected and sum(expected) > 0
        assert "class_counts" not in train
