"""Tests for workflow.data and workflow.data.synthetic (CPU only, small sizes)."""

from __future__ import annotations

import sys
import textwrap
import time

import ml_collections
import numpy as np
import pytest

from workflow import data
from workflow.data import apply_normalization, batch_indices, default_config, load_dataset
from workflow.errors import UsageError

SMALL = {"num_train": 300, "num_test": 100}


def make_cfg(name: str, **fields) -> ml_collections.ConfigDict:
    cfg = default_config()
    cfg.name = name
    cfg.normalize = fields.pop("normalize", False)
    kwargs = fields.pop("kwargs", {})
    cfg.kwargs = ml_collections.ConfigDict(kwargs)
    for key, value in fields.items():
        cfg[key] = value
    return cfg


def rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def mnist1d_cache(tmp_path_factory):
    """Generate the default mnist1d once per session into a private cache dir."""
    cache = tmp_path_factory.mktemp("dnn-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(data.CACHE_ENV, str(cache))
        start = time.perf_counter()
        ds = load_dataset(make_cfg("mnist1d"), seed=0)
        elapsed = time.perf_counter() - start
    return cache, ds, elapsed


@pytest.fixture
def mnist1d_env(monkeypatch, mnist1d_cache):
    monkeypatch.setenv(data.CACHE_ENV, str(mnist1d_cache[0]))
    return mnist1d_cache


LOADER_SOURCE = """
import numpy as np

def load(n=40, bad=None, kind="tabular", with_val=False, irreducible_error=None):
    rng = np.random.default_rng(0)
    shape = {"tabular": (5,), "sequence": (7, 2), "image": (4, 4, 3)}[kind]
    out = {
        "x_train": rng.normal(size=(n, *shape)),
        "y_train": np.arange(n) % 3,
        "x_test": rng.normal(size=(10, *shape)),
        "y_test": np.arange(10) % 3,
        "kind": kind,
        "num_classes": 3,
    }
    if with_val == "none":
        out["x_val"] = out["y_val"] = None
    elif with_val:
        out["x_val"], out["y_val"] = rng.normal(size=(6, *shape)), np.arange(6) % 3
    if irreducible_error is not None:
        out["irreducible_error"] = irreducible_error
    if bad == "label_range":
        out["y_train"][[1, 5]] = [3, 7]
    elif bad == "nan":
        out["x_test"][2, 0] = np.nan
        out["x_test"][4, 0] = np.inf
    elif bad == "length":
        out["y_train"] = out["y_train"][:-1]
    elif bad == "dims":
        out["x_train"] = out["x_train"][:, None]
    elif bad == "float_labels":
        out["y_train"] = out["y_train"] + 0.5
    elif bad == "onehot":
        out["y_train"] = np.eye(3)[out["y_train"]]
    elif bad == "kind":
        out["kind"] = "video"
    elif bad == "missing":
        del out["x_test"]
    elif bad == "feature_shape":
        out["x_test"] = out["x_test"][:, :2]
    return out

def not_a_dict():
    return [1, 2]
"""


@pytest.fixture(scope="session")
def loader_module(tmp_path_factory):
    """An importable module with a custom loader, as a user would write it."""
    root = tmp_path_factory.mktemp("loaders")
    (root / "dnn_test_loader.py").write_text(textwrap.dedent(LOADER_SOURCE))
    sys.path.insert(0, str(root))
    yield "dnn_test_loader"
    sys.path.remove(str(root))
    sys.modules.pop("dnn_test_loader", None)


# ----------------------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    "kind, shape", [("tabular", (20,)), ("image", (12, 12, 1)), ("sequence", (64, 1))]
)
def test_synthetic_shapes_kinds_and_determinism(kind, shape):
    cfg = make_cfg("synthetic", kwargs={"kind": kind, **SMALL})
    ds = load_dataset(cfg, seed=3)
    assert ds.kind == kind and ds.num_classes == 10 and ds.input_shape == shape
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (270, 30, 100)
    for x, y in (ds.split(s) for s in ("train", "val", "test")):
        assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape[1:] == shape
        assert y.min() >= 0 and y.max() < 10
    assert ds.irreducible_error == pytest.approx(0.1 * 9 / 10, abs=1e-4)
    assert ds.info["label_noise"] == 0.1 and ds.info["clean_error_upper_bound"] < 1e-3
    again = load_dataset(cfg, seed=3)
    other = load_dataset(cfg, seed=4)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    assert not np.array_equal(ds.x_train, other.x_train)
    summary = ds.summary()
    assert summary["splits"]["train"]["size"] == 270
    assert sum(summary["splits"]["test"]["class_counts"]) == 100


def test_synthetic_tabular_logistic_regression_reaches_bayes_accuracy():
    from sklearn.linear_model import LogisticRegression

    cfg = make_cfg("synthetic", normalize=True, kwargs={"num_train": 2000, "num_test": 2000})
    ds = load_dataset(cfg, seed=0)
    model = LogisticRegression(max_iter=500).fit(ds.x_train, ds.y_train)
    accuracy = model.score(ds.x_test, ds.y_test)
    assert abs(accuracy - (1.0 - ds.irreducible_error)) < 0.03


def test_synthetic_sequence_envelope_detector_reaches_bayes_accuracy():
    # The Bayes classifier for random-phase sinusoids is the Fourier-magnitude arg-max.
    kwargs = {"kind": "sequence", "num_train": 10, "num_test": 3000, "label_noise": 0.3}
    ds = load_dataset(make_cfg("synthetic", kwargs=kwargs), seed=0)
    magnitude = np.abs(np.fft.rfft(ds.x_test[..., 0], axis=1))
    predicted = magnitude[:, 1 : ds.num_classes + 1].argmax(1)
    assert ds.irreducible_error == pytest.approx(0.27, abs=1e-6)
    assert abs(np.mean(predicted == ds.y_test) - (1 - ds.irreducible_error)) < 0.03


def test_synthetic_image_nearest_mean_reaches_bayes_accuracy():
    kwargs = {"kind": "image", "num_train": 2000, "num_test": 2000, "label_noise": 0.2}
    ds = load_dataset(make_cfg("synthetic", kwargs=kwargs), seed=0)
    x_tr, x_te = ds.x_train.reshape(len(ds.x_train), -1), ds.x_test.reshape(len(ds.x_test), -1)
    means = np.stack([x_tr[ds.y_train == c].mean(0) for c in range(ds.num_classes)])
    predicted = ((x_te[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert abs(np.mean(predicted == ds.y_test) - (1 - ds.irreducible_error)) < 0.03


def test_synthetic_task_seed_fixes_the_task_across_run_seeds():
    kwargs = {"num_train": 2000, "num_test": 10, "label_noise": 0.0}
    a = load_dataset(make_cfg("synthetic", kwargs=kwargs), seed=0)
    b = load_dataset(make_cfg("synthetic", kwargs=kwargs), seed=1)
    mean_a = np.stack([a.x_train[a.y_train == c].mean(0) for c in range(10)])
    mean_b = np.stack([b.x_train[b.y_train == c].mean(0) for c in range(10)])
    np.testing.assert_allclose(mean_a, mean_b, atol=0.5)


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"kind": "video"}, "kind='video' is unknown; valid kinds: image, sequence, tabular"),
        ({"kind": "tabular", "length": 10}, "unknown synthetic option(s) length"),
        ({"separation": 2.0}, "classes overlap"),
        ({"label_noise": 1.5}, "label_noise=1.5 must be in [0, 1)"),
        ({"dims": 4}, "fewer than num_classes=10"),
        ({"kind": "sequence", "length": 16}, "need length >= 21"),
        ({"num_train": 2.5}, "num_train=2.5 must be an integer"),
    ],
)
def test_synthetic_bad_options(kwargs, text):
    with pytest.raises(UsageError) as err:
        load_dataset(make_cfg("synthetic", kwargs=kwargs), seed=0)
    assert text in str(err.value) and "\n" not in str(err.value)


def test_digits_shapes_and_fixed_test_split():
    a = load_dataset(make_cfg("digits"), seed=0)
    b = load_dataset(make_cfg("digits"), seed=1)
    assert a.kind == "image" and a.input_shape == (8, 8, 1) and a.num_classes == 10
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 1797
    assert len(a.y_test) == 359 and len(a.y_val) == 144
    assert a.x_train.dtype == np.float32 and 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    np.testing.assert_array_equal(a.x_test, b.x_test)  # test split independent of run seed
    assert not np.array_equal(a.y_val, b.y_val)  # val carve is seeded by the run seed
    assert np.bincount(a.y_test).min() >= 35  # stratified: ~36 per class


def test_mnist1d_sizes_shapes_and_no_global_rng_side_effect(mnist1d_env):
    _, ds, _ = mnist1d_env
    assert ds.kind == "sequence" and ds.num_classes == 10 and ds.input_shape == (40, 1)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (3600, 400, 1000)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.info["raw_sizes"] == {"train": 4000, "test": 1000}
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    load_dataset(make_cfg("mnist1d", kwargs={"num_samples": 100}), seed=0)
    assert np.random.rand() == expected


def test_mnist1d_cache_is_reused(mnist1d_env):
    cache, first, first_time = mnist1d_env
    files = sorted(p.name for p in cache.glob("mnist1d-*.npz"))
    assert files and not list(cache.glob("*.tmp"))
    start = time.perf_counter()
    second = load_dataset(make_cfg("mnist1d"), seed=0)
    elapsed = time.perf_counter() - start
    assert second.info["from_cache"] and not first.info["from_cache"]
    assert elapsed < 0.5 and elapsed < first_time / 3
    np.testing.assert_array_equal(first.x_train, second.x_train)
    np.testing.assert_array_equal(first.y_test, second.y_test)


def test_mnist1d_kwargs_override_and_validation(mnist1d_env):
    cache = mnist1d_env[0]
    ds = load_dataset(make_cfg("mnist1d", kwargs={"num_samples": 200, "seed": 1}), seed=0)
    assert len(ds.y_train) + len(ds.y_val) == 160 and len(ds.y_test) == 40
    assert len(list(cache.glob("mnist1d-*.npz"))) >= 2  # keyed by generator args
    with pytest.raises(UsageError, match="unknown mnist1d option.*num_sample.*valid:.*num_samples"):
        load_dataset(make_cfg("mnist1d", kwargs={"num_sample": 10}), seed=0)
    with pytest.raises(UsageError, match="shuffle_seq='yes' has the wrong type"):
        load_dataset(make_cfg("mnist1d", kwargs={"shuffle_seq": "yes"}), seed=0)


def test_mnist1d_corrupt_cache_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setenv(data.CACHE_ENV, str(tmp_path))
    cfg = make_cfg("mnist1d", kwargs={"num_samples": 100})
    first = load_dataset(cfg, seed=0)
    (path,) = tmp_path.glob("mnist1d-*.npz")
    path.write_bytes(path.read_bytes()[:1000])  # as if a writer died mid-file
    second = load_dataset(cfg, seed=0)
    assert not second.info["from_cache"]
    np.testing.assert_array_equal(first.x_train, second.x_train)


# ----------------------------------------------------------------------------- splits


def test_val_carved_deterministically_disjoint_and_stratified():
    cfg = make_cfg("synthetic", kwargs={**SMALL, "label_noise": 0.0})
    raw = load_dataset(make_cfg("synthetic", val_fraction=0.5, kwargs=cfg.kwargs), seed=5)
    a, b = load_dataset(cfg, seed=5), load_dataset(cfg, seed=5)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    train, val = rows(a.x_train), rows(a.x_val)
    assert not train & val
    assert train | val == rows(raw.x_train) | rows(raw.x_val)  # a partition of the raw train
    assert len(a.y_val) == 30
    full = np.bincount(np.concatenate([a.y_train, a.y_val]), minlength=10)
    assert np.all(np.abs(np.bincount(a.y_val, minlength=10) - full * 0.1) <= 1)
    c = load_dataset(cfg, seed=6)
    assert rows(c.x_val) != val


def test_dataset_own_val_split_is_used(loader_module):
    ds = load_dataset(make_cfg(f"{loader_module}:load", kwargs={"with_val": True}), seed=0)
    assert len(ds.y_val) == 6 and len(ds.y_train) == 40
    assert ds.info["val_source"] == "dataset's own validation split"
    ds = load_dataset(make_cfg(f"{loader_module}:load", kwargs={"with_val": "none"}), seed=0)
    assert len(ds.y_val) == 4 and len(ds.y_train) == 36  # None means: carve val from train


def test_train_size_subsets_the_carved_train_split():
    kwargs = {**SMALL, "label_noise": 0.0}
    full = load_dataset(make_cfg("synthetic", kwargs=kwargs), seed=2)
    small = load_dataset(make_cfg("synthetic", train_size=50, kwargs=kwargs), seed=2)
    smaller = load_dataset(make_cfg("synthetic", train_size=20, kwargs=kwargs), seed=2)
    assert len(small.y_train) == 50 and small.info["sizes"]["train"] == 50
    np.testing.assert_array_equal(small.x_val, full.x_val)  # val carved before subsetting
    assert rows(small.x_train) <= rows(full.x_train)
    assert rows(smaller.x_train) <= rows(small.x_train)  # nested subsets
    assert np.bincount(small.y_train, minlength=10).min() >= 4  # stratified
    with pytest.raises(UsageError, match=r"train_size=271 exceeds the 270 training examples"):
        load_dataset(make_cfg("synthetic", train_size=271, kwargs=kwargs), seed=2)


@pytest.mark.parametrize(
    "field, value, text",
    [
        ("val_fraction", 0.0, "val_fraction=0.0 must be in (0, 1)"),
        ("val_fraction", 1.5, "val_fraction=1.5 must be in (0, 1)"),
        ("train_size", 0, "train_size=0 must be a positive integer or None"),
    ],
)
def test_bad_split_fields(field, value, text):
    cfg = make_cfg("synthetic", kwargs=SMALL)
    cfg[field] = value
    with pytest.raises(UsageError) as err:
        load_dataset(cfg, seed=0)
    assert text in str(err.value)


# ----------------------------------------------------------------------------- normalization


def test_normalization_uses_train_statistics_only():
    kwargs = {"kind": "image", "channels": 3, "image_size": 6, **SMALL}
    plain = load_dataset(make_cfg("synthetic", kwargs=kwargs), seed=0)
    ds = load_dataset(make_cfg("synthetic", normalize=True, kwargs=kwargs), seed=0)
    norm = ds.normalization
    assert norm["axis"] == "per-channel" and len(norm["mean"]) == len(norm["std"]) == 3
    np.testing.assert_allclose(norm["mean"], plain.x_train.mean((0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(norm["std"], plain.x_train.std((0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(ds.x_train.mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std((0, 1, 2)), 1.0, atol=1e-4)
    assert not np.allclose(ds.x_test.mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(apply_normalization(plain.x_test, norm), ds.x_test, atol=1e-6)
    assert ds.x_test.dtype == np.float32 and ds.summary()["normalized"]
    assert apply_normalization(plain.x_test, None) is plain.x_test


def test_normalization_constant_channel_and_channel_mismatch():
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    x[:, 1] = 4.0
    norm = data.compute_normalization(x)
    assert norm["std"][1] == 1.0 and norm["constant_channels"] == [1]
    out = apply_normalization(np.full((2, 3), 5.0, np.float32), norm)
    assert np.all(np.isfinite(out)) and out[0, 1] == pytest.approx(1.0)
    with pytest.raises(UsageError, match="have 4 channels but the normalization statistics have 3"):
        apply_normalization(np.zeros((2, 4), np.float32), norm)


# ----------------------------------------------------------------------------- tfds


def test_tfds_mock_data_source():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        ds = load_dataset(make_cfg("tfds:mnist"), seed=0)
        with pytest.raises(UsageError, match="unknown tfds option.*image_kye"):
            load_dataset(make_cfg("tfds:mnist", kwargs={"image_kye": "x"}), seed=0)
        with pytest.raises(UsageError, match="no feature label 'digit'"):
            load_dataset(make_cfg("tfds:mnist", kwargs={"label_key": "digit"}), seed=0)
    assert ds.kind == "image" and ds.num_classes == 10 and ds.input_shape == (28, 28, 1)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (18, 2, 20)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() <= ds.x_train.max() <= 1.0
    assert ds.x_train.max() > 0.5  # uint8 scaled by 1/255, not left at 0..255 or zeroed


def test_tfds_not_available_offline(tmp_path):
    cfg = make_cfg("tfds:mnist", data_dir=str(tmp_path))
    with pytest.raises(UsageError) as err:
        load_dataset(cfg, seed=0)
    message = str(err.value)
    assert "'mnist' is not available offline" in message and str(tmp_path) in message
    assert "tfds build mnist" in message and "--config.dataset.data_dir" in message
    assert "\n" not in message
    with pytest.raises(UsageError, match="'no_such_dataset_xyz' does not exist"):
        load_dataset(make_cfg("tfds:no_such_dataset_xyz", data_dir=str(tmp_path)), seed=0)


# ----------------------------------------------------------------------------- custom loader


def test_custom_loader(loader_module):
    kwargs = {"kind": "image", "n": 30, "irreducible_error": 0.25}
    ds = load_dataset(make_cfg(f"{loader_module}:load", kwargs=kwargs), seed=0)
    assert ds.kind == "image" and ds.num_classes == 3 and ds.input_shape == (4, 4, 3)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (27, 3, 10)
    assert ds.irreducible_error == 0.25 and ds.x_train.dtype == np.float32
    assert ds.y_train.dtype == np.int32
    with pytest.raises(UsageError, match="does not accept kwargs.*colour"):
        load_dataset(make_cfg(f"{loader_module}:load", kwargs={"colour": 1}), seed=0)


@pytest.mark.parametrize(
    "name, text",
    [
        ("imagenet", "name='imagenet' is unknown; valid: mnist1d, digits, synthetic, tfds:<name>"),
        ("no_such_module_xyz:load", "cannot import module 'no_such_module_xyz'"),
        ("{mod}:nothing", "has no function 'nothing'"),
        ("{mod}:not_a_dict", "returned list; it must return a dict"),
    ],
)
def test_unknown_dataset_names(loader_module, name, text):
    with pytest.raises(UsageError) as err:
        load_dataset(make_cfg(name.format(mod=loader_module)), seed=0)
    assert text in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "bad, text",
    [
        ("label_range", "y_train has 2 labels outside [0, 3) (values: 3, 7)"),
        ("nan", "x_test has 2 non-finite values (1 NaN, 1 inf) in 2 examples"),
        ("length", "train split has 40 inputs but 39 labels"),
        ("dims", "x_train has shape (40, 1, 5) but kind='tabular' needs (N, D) (2 dims)"),
        ("float_labels", "y_train has 40 non-integer labels (e.g. 0.5"),
        ("onehot", "y_train has shape (40, 3); labels must be class indices shaped (N,) (one-hot?"),
        ("kind", "kind='video' is unknown; valid: image, sequence, tabular"),
        ("missing", "lacks x_test"),
        ("feature_shape", "x_test examples have shape (2,) but x_train examples have (5,)"),
    ],
)
def test_validation_errors(loader_module, bad, text):
    with pytest.raises(UsageError) as err:
        load_dataset(make_cfg(f"{loader_module}:load", kwargs={"bad": bad}), seed=0)
    assert text in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- batch order


def test_batch_indices_pure_and_epoch_coverage():
    a = batch_indices(103, 10, seed=7, step=0, num_steps=25)
    assert a.shape == (25, 10)
    np.testing.assert_array_equal(a, batch_indices(103, 10, seed=7, step=0, num_steps=25))
    for epoch in range(2):  # 10 full batches per epoch, remainder of 3 dropped
        seen = a[epoch * 10 : (epoch + 1) * 10].ravel()
        assert len(np.unique(seen)) == 100 and seen.min() >= 0 and seen.max() < 103
    assert not np.array_equal(a[:10], a[10:20])  # a fresh permutation each epoch
    assert not np.array_equal(a, batch_indices(103, 10, seed=8, step=0, num_steps=25))
    exact = batch_indices(40, 8, seed=1, step=5, num_steps=5)  # exactly epoch 1
    np.testing.assert_array_equal(np.sort(exact.ravel()), np.arange(40))


def test_batch_indices_chunked_equals_single_call():
    whole = batch_indices(50, 7, seed=3, step=4, num_steps=40)
    parts, step = [], 4
    for size in (1, 6, 0, 13, 20):
        parts.append(batch_indices(50, 7, seed=3, step=step, num_steps=size))
        step += size
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(batch_indices(50, 7, 3, 10, 1)[0], whole[6])


def test_batch_indices_errors_and_speed():
    with pytest.raises(UsageError, match="batch_size=11 exceeds the 10 training examples"):
        batch_indices(10, 11, seed=0, step=0, num_steps=1)
    with pytest.raises(UsageError, match="step=-1 must be an integer >= 0"):
        batch_indices(10, 2, seed=0, step=-1, num_steps=1)
    start = time.perf_counter()
    for step in range(0, 5000, 500):
        batch_indices(60000, 128, seed=0, step=step, num_steps=500)
    assert time.perf_counter() - start < 1.0
