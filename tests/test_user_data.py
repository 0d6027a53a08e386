"""Your data from files (workflow/data/readers.py): each reader on real offline data and each of
its errors, one line naming the file (exit 2 from a stage)."""

import json

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sklearn import datasets

from tests.conftest import run_stage
from tests.user_setups import breast_cancer_csv, digits_folder, wine_csv, wine_npz
from workflow import data
from workflow.data import readers
from workflow.errors import UsageError


def load(name, seed=0, **kwargs):
    """load_dataset on `name` (a path) with dataset.kwargs `kwargs`."""
    cfg = data.default_config()
    cfg.name = str(name)
    cfg.kwargs = ml_collections.ConfigDict(kwargs)
    return data.load_dataset(cfg, seed=seed)


def refused(name, match, **kwargs):
    with pytest.raises(UsageError, match=match) as e:
        load(name, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_data")
    return {
        "breast_cancer": breast_cancer_csv(folder),
        "wine_csv": wine_csv(folder),
        "wine_npz": wine_npz(folder),
        "digits": digits_folder(folder),
    }


# ----------------------------------------------------------------------------- tables


def test_a_csv_table_is_read_with_its_last_column_as_the_label(files):
    ds = load(files["breast_cancer"])
    cancer = datasets.load_breast_cancer()
    assert ds.kind == "tabular" and ds.num_classes == 2 and ds.input_shape == (30,)
    sizes = ds.info["sizes"]
    assert sum(sizes.values()) == len(cancer.target) == 569
    assert sizes["test"] == round(0.2 * 569)
    assert ds.info["label_column"] == "target"
    assert ds.info["feature_names"] == list(cancer.feature_names)
    # Stratified: the test split keeps the classes' proportions.
    share = np.bincount(ds.y_test) / len(ds.y_test)
    np.testing.assert_allclose(share, np.bincount(cancer.target) / 569, atol=0.01)


def test_the_carved_test_split_is_the_same_for_every_seed(files):
    cfg = data.default_config()
    cfg.name, cfg.normalize = str(files["wine_csv"]), False  # statistics follow the val carve
    a, b = data.load_dataset(cfg, seed=0), data.load_dataset(cfg, seed=7)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_val, b.x_val)  # the val carve follows the seed


def test_test_fraction_sets_the_carved_share(files):
    cfg = data.default_config()
    cfg.name, cfg.test_fraction = str(files["wine_csv"]), 0.5
    ds = data.load_dataset(cfg, seed=0)
    assert ds.info["sizes"]["test"] == 89 and ds.num_classes == 3


def test_label_column_names_the_label_and_string_labels_become_classes(tmp_path):
    path = tmp_path / "t.csv"
    animals = [f"{'cat' if i % 2 else 'dog'},{i},{2 * i}" for i in range(40)]
    rows = ["species,width,height", *animals]
    path.write_text("\n".join(rows) + "\n")
    ds = load(path, label_column="species")
    assert ds.num_classes == 2 and ds.input_shape == (2,)
    assert ds.info["class_names"] == ["cat", "dog"]
    assert ds.info["feature_names"] == ["width", "height"]


def test_table_errors_name_the_file_and_the_problem(tmp_path):
    good = ["a,b,label"] + [f"{i},{i % 3},{i % 2}" for i in range(30)]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(good))
    refused(path, r"t.csv' has no column 'y' .*columns: a, b, label", label_column="y")
    text = tmp_path / "text.csv"
    text.write_text("\n".join(["a,color,label"] + [f"{i},red,{i % 2}" for i in range(30)]))
    refused(text, r"text.csv': feature column\(s\) color are not numeric.*one_hot=True")
    one_hot = load(text, one_hot=True)
    assert one_hot.info["feature_names"] == ["a", "color=red"] and one_hot.input_shape == (2,)
    gaps = tmp_path / "gaps.csv"
    gaps.write_text("a,b,label\n1,,0\n2,3,1\n" + "\n".join(f"{i},1,{i % 2}" for i in range(30)))
    refused(gaps, r"gaps.csv': column\(s\) b have missing values")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b,label\n1,2,0\n1,2\n")
    refused(ragged, r"ragged.csv' line 3 has 2 fields; the header has 3")
    regression = tmp_path / "reg.csv"
    regression.write_text("a,y\n" + "\n".join(f"{i},{i / 7:.3f}" for i in range(30)))
    refused(
        regression,
        r"reg.csv': the labels are not classes.*for float targets use --config.task=regression",
    )
    refused(path, r"takes no dataset.kwargs image_size; valid: label_column", image_size=3)
    only_label = tmp_path / "one.csv"
    only_label.write_text("label\n0\n1\n")
    refused(only_label, r"one.csv' has only the label column 'label'")


def test_a_parquet_table_reads_like_the_same_csv(files, tmp_path):
    wine = datasets.load_wine()
    columns = {n: wine.data[:, i] for i, n in enumerate(wine.feature_names)}
    columns["target"] = wine.target
    pq.write_table(pa.table(columns), tmp_path / "wine.parquet")
    from_parquet, from_csv = load(tmp_path / "wine.parquet"), load(files["wine_csv"])
    np.testing.assert_allclose(from_parquet.x_train, from_csv.x_train, rtol=1e-6)
    np.testing.assert_array_equal(from_parquet.y_test, from_csv.y_test)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    refused(tmp_path / "bad.parquet", r"bad.parquet' cannot be read as Parquet")


# ----------------------------------------------------------------------------- NumPy


def test_an_npz_of_x_and_y_gets_a_carved_test_split(files):
    ds = load(files["wine_npz"])
    assert ds.kind == "tabular" and ds.num_classes == 3 and ds.input_shape == (13,)
    assert ds.info["sizes"]["test"] == round(0.2 * 178)
    assert "carved from the file" in ds.info["test_source"]


def test_an_npz_with_its_own_splits_keeps_them(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(50, 6, 6)),
        "y_train": np.arange(50) % 3,
        "x_test": rng.normal(size=(20, 6, 6)),
        "y_test": np.arange(20) % 3,
    }
    np.savez(tmp_path / "seq.npz", **arrays)
    ds = load(tmp_path / "seq.npz")
    assert ds.kind == "sequence" and ds.info["sizes"]["test"] == 20
    image = load(tmp_path / "seq.npz", kind="image")  # (N, H, W): grayscale, one channel
    assert image.kind == "image" and image.input_shape == (6, 6, 1)


def test_npz_errors_name_the_file_and_the_keys(tmp_path):
    np.savez(tmp_path / "keys.npz", inputs=np.zeros((4, 2)), targets=np.zeros(4))
    refused(tmp_path / "keys.npz", r"keys.npz' holds inputs, targets; expected x_train, y_train")
    np.savez(
        tmp_path / "half.npz",
        x_train=np.zeros((9, 2)),
        y_train=np.arange(9) % 2,
        x_val=np.zeros((3, 2)),
    )
    refused(tmp_path / "half.npz", r"half.npz' has only one of x_val, y_val")
    np.savez(tmp_path / "short.npz", x=np.zeros((9, 2)), y=np.arange(8) % 2)
    refused(tmp_path / "short.npz", r"short.npz': x_train has 9 examples but y_train 8")
    np.savez(tmp_path / "five.npz", x=np.zeros((9, 2, 2, 2, 2)), y=np.arange(9) % 2)
    refused(tmp_path / "five.npz", r"x has shape \(9, 2, 2, 2, 2\).*dataset.kwargs.kind")
    np.savez(tmp_path / "hot.npz", x=np.zeros((9, 2)), y=np.eye(3)[np.arange(9) % 3])
    refused(tmp_path / "hot.npz", r"hot.npz': y_train has shape \(9, 3\).*multi-label")
    (tmp_path / "junk.npz").write_text("junk")
    refused(tmp_path / "junk.npz", r"junk.npz' cannot be read as .npz")


def test_npy_pairs_read_their_labels_and_splits_beside_them(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 30)):
        np.save(tmp_path / f"x_{split}.npy", rng.normal(size=(n, 5)))
        np.save(tmp_path / f"y_{split}.npy", np.arange(n) % 2)
    ds = load(tmp_path / "x_train.npy")
    assert ds.info["sizes"]["test"] == 30 and ds.input_shape == (5,)
    np.save(tmp_path / "features.npy", rng.normal(size=(40, 5)))
    np.save(tmp_path / "classes.npy", np.arange(40) % 4)
    named = load(tmp_path / "features.npy", labels=str(tmp_path / "classes.npy"))
    assert named.num_classes == 4 and named.info["sizes"]["test"] == 8
    refused(tmp_path / "features.npy", r"features.npy': name its labels file")
    np.save(tmp_path / "x_lone.npy", rng.normal(size=(40, 5)))
    refused(tmp_path / "x_lone.npy", r"y_lone.npy' does not exist")


# ----------------------------------------------------------------------------- images


def test_the_digits_as_a_png_folder(files):
    ds = load(files["digits"], seed=0)
    digits = datasets.load_digits()
    assert ds.kind == "image" and ds.num_classes == 10 and ds.input_shape == (8, 8, 1)
    assert sum(ds.info["sizes"].values()) == 1797
    assert ds.info["class_names"] == [str(i) for i in range(10)]
    assert ds.info["image_mode"] == "L"
    # Pixels in [0, 1] before normalization: the raw file's values, read back exactly.
    cfg = data.default_config()
    cfg.name, cfg.normalize = str(files["digits"]), False
    raw = data.load_dataset(cfg, seed=0)
    assert raw.x_train.max() <= 1.0 and raw.x_train.min() >= 0.0
    first = np.asarray(Image.open(files["digits"] / "0" / "0000.png"), np.float32) / 255
    np.testing.assert_allclose(np.clip(digits.images[0] * 16, 0, 255) / 255, first)


def test_image_size_resizes_and_rgb_keeps_three_channels(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "rgb" / label).mkdir(parents=True)
        for i in range(6):
            size = (12, 10) if i else (10, 8)  # the first image sets the size: 10x8 (H x W)
            pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(tmp_path / "rgb" / label / f"{i}.jpg")
    ds = load(tmp_path / "rgb")
    assert ds.input_shape == (10, 8, 3) and ds.info["image_mode"] == "RGB"
    assert load(tmp_path / "rgb", image_size=4).input_shape == (4, 4, 3)
    assert load(tmp_path / "rgb", image_size=(6, 5)).input_shape == (6, 5, 3)
    refused(tmp_path / "rgb", r"image_size='big' is invalid", image_size="big")


def test_split_folders_are_kept_as_the_splits(tmp_path):
    for split, n in (("train", 8), ("test", 3)):
        for label in ("x", "y"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((4, 4), 30 * i, np.uint8), "L").save(
                    tmp_path / split / label / f"{i}.png"
                )
    ds = load(tmp_path)
    assert ds.info["sizes"]["test"] == 6 and ds.num_classes == 2


def test_image_folder_errors_name_the_folder(tmp_path):
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "one" / "only" / "0.png")
    refused(tmp_path / "one", r"one' needs one folder of images per class.*found 1")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "b").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "bad" / "a" / "0.png")
    (tmp_path / "bad" / "b" / "0.png").write_bytes(b"not a png")
    refused(tmp_path / "bad", r"image '.*b/0.png' cannot be read")
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    refused(tmp_path / "half", r"half' has train but not both train/ and test/")


# ----------------------------------------------------------------------------- names


def test_a_missing_file_or_an_unknown_format_is_named(tmp_path):
    refused(tmp_path / "nothing.npz", r"data file '.*nothing.npz' does not exist")
    (tmp_path / "notes.txt").write_text("x")
    refused(tmp_path / "notes.txt", r"notes.txt': unknown format .txt; valid: .npz, .npy, .csv")
    assert readers.is_path("data/wine.csv") and readers.is_path("wine.npz")
    assert not readers.is_path("my_pkg.data:load") and not readers.is_path("mnist1d")


def test_a_stage_reads_a_file_and_a_bad_one_exits_2(files, tmp_path):
    """--config.dataset.name=PATH on a config built for another dataset: its loader options
    (the synthetic generator's) are not passed to the file's reader."""
    workdir = tmp_path / "run"
    args = ["--config=configs/synthetic.py", f"--config.dataset.name={files['wine_csv']}"]
    ok = run_stage("start_simple", *args, "--config.num_steps=40", f"--workdir={workdir}")
    assert ok.returncode in (0, 1), ok.stderr[-2000:]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["dataset"]["name"] == str(files["wine_csv"]) and saved["dataset"]["kwargs"] == {}
    bad = run_stage(
        "debug",
        "--config=configs/synthetic.py",
        f"--config.dataset.name={tmp_path / 'missing.csv'}",
        f"--workdir={tmp_path / 'bad'}",
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        f"error: data file '{tmp_path / 'missing.csv'}' does not exist"
    )
    option = run_stage(
        "debug",
        "--config=configs/synthetic.py",
        f"--config.dataset.name={files['wine_csv']}",
        "--config.dataset.kwargs.label_column=nope",
        f"--workdir={tmp_path / 'c'}",
    )
    assert option.returncode == 2 and "has no column 'nope'" in option.stderr
