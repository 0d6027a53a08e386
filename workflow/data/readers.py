"""Readers of a user's data files: `dataset.name` as a path (or the Python API's `data=path`).

    x.npz            arrays x_train, y_train (optional x_val, y_val, x_test, y_test), or x, y
    x_train.npy      with y_train.npy beside it (and x_test.npy / y_test.npy, x_val.npy /
                     y_val.npy if there), or any x.npy with `dataset.kwargs.labels` its labels
    table.csv        a header row, then one example a row; the label is
    table.parquet    `dataset.kwargs.label_column` (default: the last column); the other
                     columns are the features, numeric, or one-hot encoded with
                     `dataset.kwargs.one_hot=True`
    folder/          images folder/<class>/*.png|jpg|jpeg (or folder/train/<class>/...,
                     folder/test/<class>/... with split folders), read with Pillow, resized to
                     `dataset.kwargs.image_size` (default: the first image's size), grayscale
                     kept as one channel, anything else as RGB, pixels scaled to [0, 1]
    x.array_record   records of one example each (RECORD_FORMAT), or a folder of them:
                     train*.array_record, test*.array_record (val*.array_record), or any
                     names, all training data; written by `write_array_record(path, x, y)`

Each reader is a function of its own returning the raw dict every loader returns (x_train,
y_train, x_test, y_test, kind, num_classes, info). A file without a test split has one carved
from its examples, `dataset.test_fraction` of them, stratified by class and the same for every
run seed (a fixed seed, as the digits set's), so every run is tested on the same examples.

Labels are classes: integers >= 0 are kept as class indices; anything else (strings, negative
numbers) is mapped to 0..K-1 in sorted order, the names kept in info["class_names"]. Every
problem is one line naming the file (a UsageError, exit 2).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from workflow.data.batching import stratified_order
from workflow.data.lazy import LazyInputs, is_lazy, rows
from workflow.data.synthetic import rng_for
from workflow.data.validation import KINDS
from workflow.engine.tasks import CLASSIFICATION
from workflow.errors import UsageError

# dataset.test_fraction's default: the share of a file's examples carved as its test split.
DEFAULT_TEST_FRACTION = 0.2
# The fixed seed of every carved test split: the same examples whatever the run's seed.
TEST_SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_RECORD = ".array_record"
RECORD_FORMAT = (
    "each record the bytes of an .npz (numpy.savez) of arrays x (one example) and y (its label "
    "or targets)"
)
TABLE_SUFFIXES = (".csv", ".parquet")
SPLITS = ("train", "val", "test")
# Input kinds by the number of dims of x (examples included).
_KIND_BY_NDIM = {2: "tabular", 3: "sequence", 4: "image"}


def is_path(name: str) -> bool:
    """Whether dataset name `name` names a file or folder to read rather than a registered
    dataset or an import path."""
    suffix = pathlib.Path(name).suffix.lower()
    return (
        suffix in (".npz", ".npy", ARRAY_RECORD, *TABLE_SUFFIXES)
        or os.sep in name
        or os.path.isdir(name)
    )


def read_path(
    name: str,
    kwargs: dict[str, Any],
    test_fraction: float,
    task: str = CLASSIFICATION,
    lazy: bool = False,
) -> dict[str, Any]:
    """The raw dataset in the file or folder `name`, by its suffix, with targets for `task`
    (config.task: class labels mapped to indices, or float / multi-hot targets as they are);
    `lazy` (the grain pipeline): an image folder's or array_record's training split as
    data.lazy.LazyInputs, read when indexed."""
    path = pathlib.Path(name).expanduser()
    if not path.exists():
        raise UsageError(f"data file {name!r} does not exist")
    kind = "folder" if path.is_dir() else path.suffix.lower()
    if kind == "folder" and any(path.glob(f"*{ARRAY_RECORD}")):
        kind = ARRAY_RECORD
    if kind not in READERS:
        raise UsageError(
            f"data file {name!r}: unknown format {kind or '(no suffix)'}; valid: .npz, .npy, "
            f".csv, .parquet, {ARRAY_RECORD} or a folder of images "
            f"(<class>/*{'|'.join(IMAGE_SUFFIXES)})"
        )
    reader, options = READERS[kind]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise UsageError(
            f"data file {name!r} takes no dataset.kwargs {', '.join(unknown)}; "
            f"valid: {', '.join(options)}"
        )
    if kind == "folder" and task != CLASSIFICATION:
        raise UsageError(
            f"data folder {name!r}: an image folder's labels are its class folders, which "
            f"task={task!r} cannot use; use task=classification or a .npz/.csv of targets"
        )
    if kind in LAZY_READERS:
        return reader(path, kwargs, test_fraction, task, lazy=lazy)
    return reader(path, kwargs, test_fraction, task)


# ----------------------------------------------------------------------------- NumPy


def read_npz(
    path: pathlib.Path, kwargs: dict[str, Any], test_fraction: float, task: str = CLASSIFICATION
) -> dict[str, Any]:
    """An .npz of x_train/y_train[/x_val/y_val/x_test/y_test] or of x/y (test carved)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise UsageError(f"{_name(path)} cannot be read as .npz ({_one_line(e)})") from None
    if "x_train" in arrays and "y_train" in arrays:
        for split in ("val", "test"):
            if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
                raise UsageError(f"{_name(path)} has only one of x_{split}, y_{split}")
        splits = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in SPLITS if f"x_{s}" in arrays}
    elif "x" in arrays and "y" in arrays:
        splits = {"train": (arrays["x"], arrays["y"])}
    else:
        raise UsageError(
            f"{_name(path)} holds {', '.join(sorted(arrays)) or 'no arrays'}; expected "
            "x_train, y_train (optional x_val, y_val, x_test, y_test) or x, y"
        )
    return _arrays_dataset(path, splits, kwargs, test_fraction, task)


def arrays_dataset(
    arrays: dict[str, Any],
    where: str,
    kwargs: dict[str, Any],
    test_fraction: float,
    task: str = CLASSIFICATION,
) -> dict[str, Any]:
    """The raw dict of in-memory arrays as an .npz holds them (x_train, y_train, optional
    x_val, y_val, x_test, y_test; or x, y): kind and classes inferred, test carved if none;
    `where` names them in errors."""
    keys = {k for k, v in arrays.items() if v is not None}
    if {"x_train", "y_train"} <= keys:
        for split in ("val", "test"):
            if (f"x_{split}" in keys) != (f"y_{split}" in keys):
                raise UsageError(f"data {where} has only one of x_{split}, y_{split}")
        splits = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in SPLITS if f"x_{s}" in keys}
    elif {"x", "y"} <= keys:
        splits = {"train": (arrays["x"], arrays["y"])}
    else:
        raise UsageError(
            f"data {where} holds {', '.join(sorted(keys)) or 'nothing'}; expected x_train, "
            "y_train (optional x_val, y_val, x_test, y_test) or x, y"
        )
    return _arrays_dataset(f"data {where}", splits, kwargs, test_fraction, task)


def read_npy(
    path: pathlib.Path, kwargs: dict[str, Any], test_fraction: float, task: str = CLASSIFICATION
) -> dict[str, Any]:
    """x.npy with its labels: kwargs.labels, else the file named with y for x (x_train.npy:
    y_train.npy); x_train.npy brings x_test.npy and x_val.npy with their labels if there."""
    labels = kwargs.get("labels")
    stem = path.stem
    if labels is None:
        if not stem.startswith("x"):
            raise UsageError(
                f"{_name(path)}: name its labels file with dataset.kwargs.labels=PATH "
                "(or name the files x*.npy and y*.npy)"
            )
        labels = path.with_name("y" + stem[1:] + path.suffix)
    splits = {"train": (_load_npy(path), _load_npy(pathlib.Path(labels)))}
    if "train" in stem and kwargs.get("labels") is None:
        for split in ("val", "test"):
            x_file = path.with_name(stem.replace("train", split) + path.suffix)
            if x_file.exists():
                y_file = x_file.with_name("y" + x_file.stem[1:] + path.suffix)
                splits[split] = (_load_npy(x_file), _load_npy(y_file))
    return _arrays_dataset(path, splits, kwargs, test_fraction, task)


def _load_npy(path: pathlib.Path) -> np.ndarray:
    if not path.exists():
        raise UsageError(f"{_name(path)} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise UsageError(f"{_name(path)} cannot be read as .npy ({_one_line(e)})") from None


def _arrays_dataset(
    path: pathlib.Path,
    splits: dict[str, tuple],
    kwargs: dict[str, Any],
    test_fraction: float,
    task: str = CLASSIFICATION,
) -> dict[str, Any]:
    """The raw dict of (x, y) splits read from `path`: the kind from x's dims (or kwargs.kind),
    labels as class indices, a test split carved if there is none."""
    x_train = np.asarray(splits["train"][0])
    kind = kwargs.get("kind") or _KIND_BY_NDIM.get(x_train.ndim)
    if kind not in KINDS:
        raise UsageError(
            f"{_name(path)}: x has shape {x_train.shape}; expected (N, D) tables, "
            "(N, T, F) sequences or (N, H, W, C) images, or set dataset.kwargs.kind to one of "
            f"{', '.join(KINDS)}"
        )
    if kind == "image" and x_train.ndim == 3:  # (N, H, W) grayscale: one channel
        splits = {s: (np.asarray(x)[..., None], y) for s, (x, y) in splits.items()}
    for split, (x, y) in splits.items():
        if len(x) != len(y):
            raise UsageError(
                f"{_name(path)}: x_{split} has {len(x)} examples but y_{split} {len(y)}"
            )
    return _finish(path, splits, kind, kwargs, test_fraction, {}, task)


# ----------------------------------------------------------------------------- tables


def read_table(
    path: pathlib.Path, kwargs: dict[str, Any], test_fraction: float, task: str = CLASSIFICATION
) -> dict[str, Any]:
    """A CSV or Parquet table: one example a row, the label column(s) and numeric features.

    `label_column` is one column's name or, for regression with several outputs or
    multi-label targets, a list of names (or one comma-separated string)."""
    columns = _read_csv(path) if path.suffix.lower() == ".csv" else _read_parquet(path)
    if not columns:
        raise UsageError(f"{_name(path)} has no columns")
    labels = _label_columns(kwargs.get("label_column"), list(columns))
    if len(labels) > 1 and task == CLASSIFICATION:
        raise UsageError(
            f"{_name(path)}: dataset.kwargs.label_column names {len(labels)} columns, but "
            "task=classification has one label; use task=multilabel or task=regression"
        )
    missing = [c for c in labels if c not in columns]
    if missing:
        raise UsageError(
            f"{_name(path)} has no column {missing[0]!r} (dataset.kwargs.label_column); "
            f"columns: {', '.join(columns)}"
        )
    targets = [columns.pop(c) for c in labels]
    if not columns:
        shown = ", ".join(repr(c) for c in labels)
        raise UsageError(
            f"{_name(path)} has only the label column{'s' * (len(labels) > 1)} {shown}"
        )
    if task == CLASSIFICATION:
        y = targets[0]
    else:
        y = _numeric_targets(path, dict(zip(labels, targets, strict=True)))
    x, feature_names = _features(path, columns, bool(kwargs.get("one_hot", False)))
    label = labels[0] if len(labels) == 1 else labels
    info = {"label_column": label, "feature_names": feature_names}
    return _finish(path, {"train": (x, y)}, "tabular", kwargs, test_fraction, info, task)


def _label_columns(value: Any, columns: list[str]) -> list[str]:
    """dataset.kwargs.label_column as a list of names (default: the last column)."""
    if not value:
        return [columns[-1]]
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def _numeric_targets(path: pathlib.Path, targets: dict[str, np.ndarray]) -> np.ndarray:
    """(N, K) float targets from K columns; a non-numeric cell is refused naming its column."""
    out = []
    for name, values in targets.items():
        try:
            out.append(np.asarray(values, np.float64))
        except (TypeError, ValueError):
            raise UsageError(
                f"{_name(path)}: target column {name!r} is not numeric (e.g. "
                f"{np.asarray(values)[0]!r}); regression and multi-label targets must be numbers"
            ) from None
    return np.stack(out, axis=1)


def _read_csv(path: pathlib.Path) -> dict[str, np.ndarray]:
    """{column: values}: numbers as float64 (empty cells NaN), any other column as strings."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{_name(path)} cannot be read as CSV ({_one_line(e)})") from None
    if len(rows) < 2:
        raise UsageError(f"{_name(path)} needs a header row and at least one example row")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UsageError(
                f"{_name(path)} line {number} has {len(row)} fields; the header has {len(header)}"
            )
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise UsageError(f"{_name(path)} repeats column(s) {', '.join(duplicated)}")
    cells = np.array(body, dtype=object).reshape(len(body), len(header))
    return {name: _as_column(cells[:, i]) for i, name in enumerate(header)}


def _as_column(cells: np.ndarray) -> np.ndarray:
    """float64 if every non-empty cell is a number, else the stripped strings."""
    text = np.array([c.strip() for c in cells], dtype=object)
    try:
        return np.array([float(c) if c else np.nan for c in text], dtype=np.float64)
    except ValueError:
        return text.astype(str)


def _read_parquet(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"{_name(path)}: reading Parquet needs pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise UsageError(f"{_name(path)} cannot be read as Parquet ({_one_line(e)})") from None
    columns = {}
    for name in table.column_names:
        values = table.column(name).to_numpy(zero_copy_only=False)
        if values.dtype.kind in "biuf":
            values = values.astype(np.float64)
        elif values.dtype.kind != "U":
            values = np.array(["" if v is None else str(v) for v in values])
        columns[name] = values
    return columns


def _features(
    path: pathlib.Path, columns: dict[str, np.ndarray], one_hot: bool
) -> tuple[np.ndarray, list[str]]:
    """(N, D) float features: numeric columns as they are, text columns one-hot (one_hot=True)
    or refused naming them; missing values refused naming their columns."""
    text = [name for name, values in columns.items() if values.dtype.kind not in "biuf"]
    if text and not one_hot:
        raise UsageError(
            f"{_name(path)}: feature column(s) {', '.join(text)} are not numeric; encode "
            "them, drop them, or set dataset.kwargs.one_hot=True to one-hot encode them"
        )
    missing = [n for n, v in columns.items() if v.dtype.kind == "f" and np.isnan(v).any()]
    if missing:
        raise UsageError(
            f"{_name(path)}: column(s) {', '.join(missing)} have missing values; fill or "
            "drop them first"
        )
    blocks, names = [], []
    for name, values in columns.items():
        if values.dtype.kind in "biuf":
            blocks.append(values.astype(np.float64)[:, None])
            names.append(name)
        else:
            categories = np.unique(values)
            blocks.append((values[:, None] == categories[None, :]).astype(np.float64))
            names += [f"{name}={c}" for c in categories]
    # A table's numbers were text (or Parquet columns): float32 is what training reads.
    return np.concatenate(blocks, axis=1).astype(np.float32), names


# ----------------------------------------------------------------------------- images


def read_image_folder(
    path: pathlib.Path,
    kwargs: dict[str, Any],
    test_fraction: float,
    task: str = CLASSIFICATION,
    lazy: bool = False,
) -> dict[str, Any]:
    """Images in path/<class>/ (or path/train/<class>/, path/test/<class>/, path/val/...);
    `lazy`: the training split's images are kept as files (ImageFiles), decoded when read."""
    split_dirs = {s: path / s for s in SPLITS if (path / s).is_dir()}
    if "train" in split_dirs and "test" in split_dirs:
        folders = split_dirs
    elif split_dirs.keys() & {"train", "test"}:
        raise UsageError(
            f"data folder '{path}' has {', '.join(sorted(split_dirs))} but not both train/ "
            "and test/; give both, or put the class folders directly in it"
        )
    else:
        folders = {"train": path}
    class_names = sorted(d.name for d in folders["train"].iterdir() if d.is_dir() and _images_in(d))
    if len(class_names) < 2:
        raise UsageError(
            f"data folder '{folders['train']}' needs one folder of images per class (at least "
            f"two, images {', '.join(IMAGE_SUFFIXES)}); found {len(class_names)}"
        )
    files = {s: _image_files(folder, class_names) for s, folder in folders.items()}
    size = _image_size(kwargs.get("image_size"), files["train"][0][0], path)
    mode = "L" if all(_mode(f) == "L" for s in files.values() for f, _ in s) else "RGB"
    splits = {}
    for split, pairs in files.items():
        labels = np.array([label for _, label in pairs], dtype=np.int64)
        if lazy and split == "train":
            images = ImageFiles(tuple(str(f) for f, _ in pairs), size, mode)
            x = LazyInputs(images, np.arange(len(pairs)), (*size, 1 if mode == "L" else 3))
        else:
            x = np.stack([_read_image(f, size, mode) for f, _ in pairs])
        splits[split] = (x, labels)
    info = {"class_names": class_names, "image_size": list(size), "image_mode": mode}
    raw = _finish(path, splits, "image", kwargs, test_fraction, info, map_labels=False)
    raw["num_classes"] = int(kwargs.get("num_classes") or len(class_names))
    return raw


@dataclasses.dataclass(frozen=True)
class ImageFiles:
    """An image folder's training images as files (data.lazy's reader): record i is the file
    files[i], decoded, converted to `mode` and resized to `size` when read (picklable: grain's
    workers read with it)."""

    files: tuple[str, ...]
    size: tuple[int, int]
    mode: str

    def __len__(self) -> int:
        return len(self.files)

    def read(self, record: int) -> np.ndarray:
        """The image of file `record`, (H, W, C) float32 in [0, 1]."""
        return _read_image(pathlib.Path(self.files[record]), self.size, self.mode)

    def name(self, record: int) -> str:
        """How an error names the record: its file."""
        return f"image '{self.files[record]}'"

    def describe(self) -> dict:
        """The reader in brief (dataset.info, the fingerprint)."""
        return {"format": "image files", "image_size": list(self.size), "mode": self.mode}

    def identity(self) -> bytes:
        """The files' names and sizes: the fingerprint of what is read without reading it."""
        return "\n".join(f"{f}|{_file_size(f)}" for f in self.files).encode()


def _file_size(file: str) -> int:
    try:
        return os.path.getsize(file)
    except OSError:
        return -1


def _images_in(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


def _image_files(folder: pathlib.Path, class_names: list[str]) -> list[tuple[pathlib.Path, int]]:
    pairs = []
    for index, name in enumerate(class_names):
        class_dir = folder / name
        if class_dir.is_dir():
            pairs += [(f, index) for f in _images_in(class_dir)]
    extra = sorted(d.name for d in folder.iterdir() if d.is_dir() and d.name not in class_names)
    if extra and _images_in(folder / extra[0]):
        raise UsageError(
            f"data folder '{folder}' has class folder(s) {', '.join(extra)} that the training "
            f"folder lacks; classes: {', '.join(class_names)}"
        )
    if not pairs:
        raise UsageError(f"data folder '{folder}' has no images ({', '.join(IMAGE_SUFFIXES)})")
    return pairs


def _image_size(value: Any, first: pathlib.Path, root: pathlib.Path) -> tuple[int, int]:
    """(height, width): kwargs.image_size (an int or (height, width)), else the first image's."""
    if value is None:
        with _opened(first) as image:
            return image.height, image.width
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise UsageError(
            f"data folder '{root}': dataset.kwargs.image_size={value!r} is invalid; expected "
            "a positive integer or (height, width)"
        )
    if min(size) < 1:
        raise UsageError(f"data folder '{root}': dataset.kwargs.image_size={value!r} must be > 0")
    return size


def _opened(file: pathlib.Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(file)
    except (OSError, UnidentifiedImageError) as e:
        raise UsageError(f"image '{file}' cannot be read ({_one_line(e)})") from None


def _mode(file: pathlib.Path) -> str:
    with _opened(file) as image:
        return "L" if image.mode in ("L", "1", "I;16", "I", "F") else "RGB"


def _read_image(file: pathlib.Path, size: tuple[int, int], mode: str) -> np.ndarray:
    """(H, W, C) float32 in [0, 1]: resized to `size`, in `mode` (L: one channel, RGB: three)."""
    from PIL import Image

    with _opened(file) as image:
        try:
            image = image.convert(mode)
            if (image.height, image.width) != size:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
        except OSError as e:
            raise UsageError(f"image '{file}' cannot be read ({_one_line(e)})") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


# ----------------------------------------------------------------------------- array_record


def read_array_record(
    path: pathlib.Path,
    kwargs: dict[str, Any],
    test_fraction: float,
    task: str = CLASSIFICATION,
    lazy: bool = False,
) -> dict[str, Any]:
    """An array_record file, or a folder of them by split, of one example a record
    (RECORD_FORMAT); `lazy`: the training split's records are read when indexed (ArrayRecords),
    only their labels here."""
    splits = {}
    for split, files in _array_record_splits(path).items():
        records = ArrayRecords(tuple(str(f) for f in files))
        if lazy and split == "train":
            splits[split] = _lazy_records(records)
        else:
            examples = [records.example(i) for i in range(len(records))]
            x = np.stack([e[0] for e in examples]) if examples else np.zeros((0,), np.float32)
            splits[split] = (x, np.asarray([e[1] for e in examples]))
    x_train = splits["train"][0]
    kind = kwargs.get("kind") or _KIND_BY_NDIM.get(len(x_train.shape))
    if kind not in KINDS:
        raise UsageError(
            f"{_name(path)}: its examples x have shape {tuple(x_train.shape[1:])}; expected "
            "(D,) tables, (T, F) sequences or (H, W, C) images, or set dataset.kwargs.kind to one "
            f"of {', '.join(KINDS)}"
        )
    info = {"record_format": RECORD_FORMAT}
    return _finish(path, splits, kind, kwargs, test_fraction, info, task)


def _array_record_splits(path: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """{split: files}: a file is the training split; a folder's files named train*, val*,
    test* are those splits (none so named: every file is training data)."""
    if not path.is_dir():
        return {"train": [path]}
    files = sorted(path.glob(f"*{ARRAY_RECORD}"))
    named = {s: [f for f in files if f.name.startswith(s)] for s in SPLITS}
    named = {s: f for s, f in named.items() if f}
    if not named:
        return {"train": files}
    if "train" not in named:
        raise UsageError(
            f"data folder '{path}' has {', '.join(sorted(named))}*{ARRAY_RECORD} files but no "
            f"train*{ARRAY_RECORD}"
        )
    return named


def _lazy_records(records: ArrayRecords) -> tuple[LazyInputs, np.ndarray]:
    """(lazy inputs, labels) of array_record records: every record's y, read one at a time."""
    if not len(records):
        raise UsageError(f"{records.name(0)}: the file has no records")
    labels = np.asarray([records.example(i)[1] for i in range(len(records))])
    shape = records.read(0).shape
    return LazyInputs(records, np.arange(len(records)), tuple(shape)), labels


class ArrayRecords:
    """array_record files of one example a record (RECORD_FORMAT), read by index through
    grain's ArrayRecordDataSource (data.lazy's reader; picklable: grain's workers reopen the
    files by name)."""

    def __init__(self, files: tuple[str, ...]):
        self.files = files
        self._source = None
        self.lengths = tuple(len(self._open([f])) for f in files)

    def __getstate__(self) -> dict:
        return {"files": self.files, "lengths": self.lengths}

    def __setstate__(self, state: dict) -> None:
        self.files, self.lengths, self._source = state["files"], state["lengths"], None

    def _open(self, files: list[str]):
        import grain

        try:
            return grain.sources.ArrayRecordDataSource(files)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
            name = files[0] if len(files) == 1 else ", ".join(files)
            raise UsageError(f"array_record '{name}' cannot be read ({_one_line(e)})") from None

    def __len__(self) -> int:
        return sum(self.lengths)

    def example(self, record: int) -> tuple[np.ndarray, Any]:
        """Record `record` as (x, y), checked: an .npz of x and y, x finite numbers."""
        if self._source is None:
            self._source = self._open(list(self.files))
        try:
            with np.load(io.BytesIO(self._source[record]), allow_pickle=False) as npz:
                x, y = npz["x"], npz["y"]
        except Exception as e:  # noqa: BLE001 - a record of another format is the user's input
            raise UsageError(
                f"{self.name(record)} is not in the record format ({RECORD_FORMAT}): {_one_line(e)}"
            ) from None
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or (
            np.issubdtype(x.dtype, np.inexact) and not np.isfinite(x).all()
        ):
            raise UsageError(f"{self.name(record)}: x must be finite numbers (dtype {x.dtype})")
        return x, y[()] if y.ndim == 0 else y

    def read(self, record: int) -> np.ndarray:
        """Record `record`'s input x as float32."""
        return self.example(record)[0].astype(np.float32)

    def name(self, record: int) -> str:
        """How an error names the record: its file and its place there."""
        for file, length in zip(self.files, self.lengths, strict=True):
            if record < length:
                return f"array_record '{file}' record {record}"
            record -= length
        return f"array_record '{self.files[-1]}'"

    def describe(self) -> dict:
        """The reader in brief (dataset.info, the fingerprint)."""
        return {"format": "array_record", "files": len(self.files)}

    def identity(self) -> bytes:
        """The files' names, sizes and record counts: what the fingerprint hashes."""
        pairs = zip(self.files, self.lengths, strict=True)
        return "\n".join(f"{f}|{_file_size(f)}|{n}" for f, n in pairs).encode()


def write_array_record(path: str | os.PathLike, x: Any, y: Any) -> pathlib.Path:
    """Write examples (x[i], y[i]) as an array_record file of RECORD_FORMAT, one record each,
    atomically (a temporary file renamed): what `dataset.name=PATH.array_record` reads."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = pathlib.Path(path)
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise UsageError(f"write_array_record: x has {len(x)} examples but y {len(y)}")
    partial = path.with_name(path.name + ".partial")
    # group_size 1: every record its own chunk, so a random read decodes only that record.
    writer = ArrayRecordWriter(str(partial), "group_size:1")
    try:
        for xi, yi in zip(x, y, strict=True):
            buffer = io.BytesIO()
            np.savez(buffer, x=xi, y=yi)
            writer.write(buffer.getvalue())
    finally:
        writer.close()
    os.replace(partial, path)
    return path


# ----------------------------------------------------------------------------- shared


def _finish(
    path: pathlib.Path,
    splits: dict[str, tuple],
    kind: str,
    kwargs: dict[str, Any],
    test_fraction: float,
    info: dict,
    task: str = CLASSIFICATION,
    map_labels: bool = True,
) -> dict[str, Any]:
    """The raw dict: labels as class indices over every split (classification; other tasks'
    targets as given, num_classes their count per example), a test split carved if none."""
    if task == CLASSIFICATION and map_labels:
        labels, class_names = class_indices({s: y for s, (_, y) in splits.items()}, path)
        splits = {s: (x, labels[s]) for s, (x, _) in splits.items()}
        if class_names is not None:
            info["class_names"] = class_names
        num_classes = kwargs.get("num_classes") or int(
            max(int(np.max(y)) for _, y in splits.values() if len(y)) + 1
        )
    elif task == CLASSIFICATION:
        num_classes = None
    else:
        y = np.asarray(splits["train"][1])
        num_classes = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
    info["source"] = f"file {path}"
    if "test" not in splits:
        x, y = splits["train"]
        (x_train, y_train), (x_test, y_test) = carve_test(x, y, test_fraction, path)
        splits["train"], splits["test"] = (x_train, y_train), (x_test, y_test)
        info["test_source"] = (
            f"carved from the file (test_fraction={test_fraction}, seed {TEST_SPLIT_SEED})"
        )
    raw = {"kind": kind, "num_classes": num_classes, "info": info}
    for split, (x, y) in splits.items():
        raw[f"x_{split}"], raw[f"y_{split}"] = x, y
    return raw


def class_indices(
    labels: dict[str, Any], path: pathlib.Path
) -> tuple[dict[str, np.ndarray], list[str] | None]:
    """Every split's labels as class indices, and the class names when they had to be mapped
    (strings, negative numbers); integers >= 0 are class indices already."""
    arrays = {s: np.asarray(y) for s, y in labels.items()}
    for split, y in arrays.items():
        if y.ndim != 1:
            raise UsageError(
                f"{_name(path)}: y_{split} has shape {y.shape}; labels must be one class "
                "per example, shaped (N,) (multi-label targets: --config.task=multilabel; several "
                "float targets: --config.task=regression)"
            )
    joined = np.concatenate(list(arrays.values()))
    if joined.dtype.kind in "f":
        fractional = joined[np.isfinite(joined) & (np.floor(joined) != joined)]
        if (~np.isfinite(joined)).any():
            raise UsageError(f"{_name(path)}: the labels have missing or non-finite values")
        if fractional.size:
            shown = ", ".join(f"{v:g}" for v in np.unique(fractional)[:3])
            raise UsageError(
                f"{_name(path)}: the labels are not classes (non-integer values such as "
                f"{shown}); for float targets use --config.task=regression"
            )
    if joined.dtype.kind in "biuf" and (joined.size == 0 or joined.min() >= 0):
        return {s: y.astype(np.int64) for s, y in arrays.items()}, None
    names = np.unique(joined)
    mapped = {s: np.searchsorted(names, y).astype(np.int64) for s, y in arrays.items()}
    return mapped, [_label_name(n) for n in names]


def _label_name(value: Any) -> str:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def carve_test(
    x: np.ndarray, y: np.ndarray, test_fraction: float, path: pathlib.Path
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x, y) train, (x, y) test): `test_fraction` of the examples, stratified by class, by
    the fixed TEST_SPLIT_SEED."""
    n_test = int(round(test_fraction * len(y)))
    if not 1 <= n_test < len(y):
        raise UsageError(
            f"{_name(path)}: dataset.test_fraction={test_fraction} leaves {n_test} test "
            f"and {len(y) - n_test} training examples of {len(y)}; pick a fraction that keeps "
            "both >= 1, or give a test split"
        )
    order = stratified_order(np.asarray(y), rng_for(TEST_SPLIT_SEED, 103))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    x, y = (x if is_lazy(x) else np.asarray(x)), np.asarray(y)
    # A lazy training split stays lazy; the test split is read (it is held in memory).
    return (rows(x, train), y[train]), (x[test], y[test])


def _name(where: pathlib.Path | str) -> str:
    """How an error names the data: a file by its path, in-memory arrays by their label."""
    return where if isinstance(where, str) else f"data file '{where}'"


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


# Each format's reader and the dataset.kwargs it accepts.
READERS: dict[str, tuple[Callable[..., dict[str, Any]], tuple[str, ...]]] = {
    ".npz": (read_npz, ("kind", "num_classes")),
    ".npy": (read_npy, ("labels", "kind", "num_classes")),
    ".csv": (read_table, ("label_column", "one_hot", "num_classes")),
    ".parquet": (read_table, ("label_column", "one_hot", "num_classes")),
    "folder": (read_image_folder, ("image_size", "num_classes")),
    ARRAY_RECORD: (read_array_record, ("kind", "num_classes")),
}
# The formats whose training split can be read lazily (dataset.pipeline="grain").
LAZY_READERS = ("folder", ARRAY_RECORD)
