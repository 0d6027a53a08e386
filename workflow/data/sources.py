"""Where raw data comes from: MNIST-1D, digits, TFDS and user loaders, with the cache."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from workflow.data.batching import stratified_order
from workflow.data.cache import cache_dir, read_cache, write_cache
from workflow.data.lazy import LazyInputs
from workflow.data.shards import SplitPlan
from workflow.data.synthetic import rng_for
from workflow.data.text import TEXT_OPTIONS, build_vocabulary, encode_tokens, tokenize
from workflow.data.validation import check_train_size, val_count
from workflow.errors import UsageError, UserCodeError, one_line, user_code

# Fixed so the digits test split never changes with the run seed.
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2


def _mnist1d_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    defaults = get_dataset_args(as_dict=True)
    defaults.pop("url", None)  # only used by the download path, which we never take
    unknown = sorted(set(kwargs) - set(defaults))
    if unknown:
        raise UsageError(
            f"unknown mnist1d option(s) {', '.join(unknown)}; valid: {', '.join(sorted(defaults))}"
        )
    args = dict(defaults)
    for key, value in kwargs.items():
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:  # list such as padding=[36, 60]
            ok = isinstance(value, list | tuple) and len(value) == len(default)
            value = list(value) if ok else value
        if not ok:
            raise UsageError(
                f"mnist1d option {key}={value!r} has the wrong type; expected something like "
                f"{default!r}"
            )
        args[key] = value
    if args["num_samples"] < 20:
        raise UsageError(f"mnist1d num_samples={args['num_samples']} must be >= 20")
    if not 0.0 < args["train_split"] < 1.0:
        raise UsageError(f"mnist1d train_split={args['train_split']} must be in (0, 1)")
    return args


def mnist1d_arrays(kwargs: dict[str, Any]) -> dict[str, Any]:
    args = _mnist1d_args(kwargs)
    version = metadata.version("mnist1d")
    key_src = json.dumps({**args, "mnist1d_version": version}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir() / f"mnist1d-{key}.npz"
    arrays = read_cache(path)
    cached = arrays is not None
    if arrays is None:
        arrays = _generate_mnist1d(args)
        write_cache(path, arrays, key_src)
    return {
        "x_train": arrays["x_train"][..., None],
        "y_train": arrays["y_train"],
        "x_test": arrays["x_test"][..., None],
        "y_test": arrays["y_test"],
        "kind": "sequence",
        "num_classes": 10,
        "info": {
            "source": f"mnist1d {version} generator (make_dataset, never downloaded)",
            "generator_args": args,
            "cache_file": str(path),
            "from_cache": cached,
            "note": "mnist1d standardizes x over all examples (train+test) before splitting",
        },
    }


def _generate_mnist1d(args: dict[str, Any]) -> dict[str, np.ndarray]:
    import random

    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset reseeds the global RNGs; restore them so loading has no side effects.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(dict(args)))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x_train": np.asarray(data["x"], np.float32),
        "y_train": np.asarray(data["y"], np.int32),
        "x_test": np.asarray(data["x_test"], np.float32),
        "y_test": np.asarray(data["y_test"], np.int32),
    }


# ----------------------------------------------------------------------------- digits


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as (images (N, 8, 8) in 0..16, labels (N,)).

    Read from the CSV that scikit-learn ships, as load_digits does, without importing
    scikit-learn: that import alone is a large part of a cold debug run (benchmarks/
    compile_cache.py --setup times it).
    """
    spec = importlib.util.find_spec("sklearn")
    roots = spec.submodule_search_locations if spec else None
    path = Path(roots[0], "datasets", "data", "digits.csv.gz") if roots else None
    if path is None or not path.is_file():  # another layout: let scikit-learn find it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)


def digits_arrays() -> dict[str, Any]:
    images, labels = _read_digits()
    x = (images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    y = labels.astype(np.int32)
    n_test = int(round(_DIGITS_TEST_FRACTION * len(y)))
    order = stratified_order(y, rng_for(_DIGITS_SPLIT_SEED, 7))
    test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    return {
        "x_train": x[train_idx],
        "y_train": y[train_idx],
        "x_test": x[test_idx],
        "y_test": y[test_idx],
        "kind": "image",
        "num_classes": 10,
        "info": {
            "source": "sklearn.datasets.load_digits (pixels scaled from 0..16 to 0..1)",
            "test_split": f"fixed stratified {_DIGITS_TEST_FRACTION:.0%} (seed "
            f"{_DIGITS_SPLIT_SEED}, independent of the run seed)",
        },
    }


# ----------------------------------------------------------------------------- tfds


def tfds_arrays(
    tfds_name: str,
    kwargs: dict[str, Any],
    data_dir: str | None,
    plan: SplitPlan | None = None,
    lazy: bool = False,
) -> dict[str, Any]:
    """The raw splits of a TFDS classification dataset (images, or text as token ids), read
    through `tfds.data_source`; per host, only this process's training records. `lazy` (the
    grain pipeline): an image dataset's training split as data.lazy.LazyInputs over the data
    source (TfdsRecords), its records decoded as batches are read; only its labels are read
    here (a pass over the records that keeps nothing else)."""
    options = _tfds_options(tfds_name, kwargs)

    import tensorflow_datasets as tfds  # lazy: only tfds users pay for importing it

    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise UsageError(f"tfds dataset {tfds_name!r} does not exist in tfds catalog") from e

    features = builder.info.features
    text_key = _tfds_text_key(tfds, tfds_name, features, options, set(kwargs))
    num_classes = _tfds_num_classes(tfds_name, features, options, text_key)
    wanted = _tfds_splits(tfds_name, builder, options)

    raw: dict[str, Any] = {}
    token_lists = {}
    lazy = lazy and not text_key  # text's vocabulary needs every training example's words
    if plan is not None and plan.shard is not None and not text_key and not lazy:
        # Per-host: this process reads only its training records (and the carved val).
        source = _tfds_source(builder, tfds_name, wanted["train"], data_dir)
        raw.update(_read_tfds_train_shard(source, options, plan, f"tfds:{tfds_name}", wanted))
        wanted = {role: split for role, split in wanted.items() if role != "train"}
    for role, split in wanted.items():
        source = _tfds_source(builder, tfds_name, split, data_dir)
        if text_key:
            token_lists[role], raw[f"y_{role}"] = _read_tfds_text(
                source, text_key, options["label_key"]
            )
        elif lazy and role == "train":
            records = TfdsRecords(source, f"tfds:{tfds_name}", split, options["image_key"])
            raw["x_train"], raw["y_train"] = _lazy_tfds_split(records, options["label_key"])
        else:
            x, y = _read_tfds_source(source, options["image_key"], options["label_key"])
            raw[f"x_{role}"], raw[f"y_{role}"] = x, y
    info = {
        "source": f"tfds {builder.info.full_name} via tfds.data_source",
        "splits_used": {"train": options["train_split"], **wanted},
        "data_dir": str(builder.data_dir),
    }
    if text_key:
        raw.update(_token_id_splits(token_lists, options))
        info["text_key"] = text_key
    raw.update(kind="sequence" if text_key else "image", num_classes=int(num_classes), info=info)
    return raw


def _tfds_options(tfds_name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The tfds loader's options: its defaults updated by `kwargs`, each checked."""
    options = {
        "image_key": "image",
        "label_key": "label",
        "train_split": "train",
        "val_split": "validation",
        "test_split": "test",
        **TEXT_OPTIONS,
    }
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise UsageError(
            f"unknown tfds option(s) {', '.join(unknown)}; valid: {', '.join(sorted(options))}"
        )
    options.update(kwargs)
    if not tfds_name:
        raise UsageError("dataset name 'tfds:' lacks the tfds name; e.g. tfds:mnist")
    for key in ("vocab_size", "max_length"):
        value, low = options[key], 3 if key == "vocab_size" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UsageError(f"tfds option {key}={value!r} must be an integer >= {low}")
    return options


def _tfds_num_classes(
    tfds_name: str, features: Any, options: dict[str, Any], text_key: str | None
) -> int:
    """The classes of the label feature, once the input and label features are found."""
    for role in ("label_key",) if text_key else ("image_key", "label_key"):
        if options[role] not in features:
            raise UsageError(
                f"tfds:{tfds_name} has no feature {role.split('_')[0]} "
                f"{options[role]!r}; features: {', '.join(features.keys())} (set kwargs.{role})"
            )
    label_feature = features[options["label_key"]]
    num_classes = getattr(label_feature, "num_classes", None)
    if not num_classes:
        raise UsageError(
            f"tfds:{tfds_name} feature {options['label_key']!r} is not a ClassLabel with "
            "num_classes; pick a classification label via kwargs.label_key"
        )
    return num_classes


def _tfds_splits(tfds_name: str, builder: Any, options: dict[str, Any]) -> dict[str, str]:
    """The tfds split of each role ("train", "test" and, when the dataset has it, "val")."""
    # Splits are unknown until the dataset is prepared (and under tfds.testing.mock_data); then
    # assume the usual train/test and no validation split.
    known = set(builder.info.splits.keys())
    wanted = {"train": options["train_split"], "test": options["test_split"]}
    if options["val_split"] and options["val_split"] in known:
        wanted["val"] = options["val_split"]
    for role in ("train", "test"):
        if known and wanted[role] not in known:
            raise UsageError(
                f"tfds:{tfds_name} has no split {wanted[role]!r}; splits: "
                f"{', '.join(sorted(known))} (set kwargs.{role}_split)"
            )
    return wanted


def _token_id_splits(token_lists: dict[str, list], options: dict[str, Any]) -> dict[str, Any]:
    """Each split's token lists as ids (x_<role>, (N, max_length, 1)) and "token_ids": the
    words of the train split by frequency, the vocabulary size and truncation per split."""
    # Every word of the train split, by frequency: load_dataset keeps the vocab_size - 2
    # most frequent among the examples that are trained on (restrict_vocabulary).
    words = build_vocabulary(token_lists["train"])
    max_length = options["max_length"]
    out: dict[str, Any] = {
        f"x_{role}": encode_tokens(tokens, words, max_length)[..., None]
        for role, tokens in token_lists.items()
    }
    out["token_ids"] = {
        "words": words,
        "vocab_size": options["vocab_size"],
        "max_length": max_length,
        "truncated": {
            role: round(float(np.mean([len(t) > max_length for t in tokens])), 4)
            for role, tokens in token_lists.items()
        },
    }
    return out


def _tfds_text_key(
    tfds: Any, tfds_name: str, features: Any, options: dict[str, Any], given: set[str]
) -> str | None:
    """The string feature to tokenize: kwargs.text_key, or the one Text feature of a dataset
    without an image feature; None for image datasets."""
    key = options["text_key"]
    if key is None and options["image_key"] not in features:
        texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
        key = texts[0] if len(texts) == 1 else None
    if key is not None and key not in features:
        raise UsageError(
            f"tfds:{tfds_name} has no feature text {key!r}; features: "
            f"{', '.join(features.keys())} (set kwargs.text_key)"
        )
    if key is None and given & {"vocab_size", "max_length"}:
        raise UsageError(
            f"tfds options vocab_size and max_length apply to text features only, and "
            f"tfds:{tfds_name} has none; set kwargs.text_key to a string feature"
        )
    return key


def _read_tfds_text(source: Any, text_key: str, label_key: str) -> tuple[list, np.ndarray]:
    """Token lists (``tokenize``) and labels of every example of a data source."""
    tokens, labels = [], []
    for i in range(len(source)):  # per item, as _read_tfds_source (mock_data's batch reads)
        example = source[i]
        tokens.append(tokenize(example[text_key]))
        labels.append(example[label_key])
    return tokens, np.asarray(labels, np.int64).reshape(-1)


def _tfds_source(builder: Any, tfds_name: str, split: str, data_dir: str | None) -> Any:
    try:
        return builder.as_data_source(split=split)
    except Exception as e:
        searched = data_dir or "the tfds default ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
        if not builder.is_prepared():
            raise UsageError(
                f"tfds dataset {tfds_name!r} is not available offline: not prepared in "
                f"data_dir={searched} (looked for {builder.data_dir}); on a connected machine run "
                f"`tfds build {tfds_name} --data_dir=DIR --file_format=array_record`, copy DIR "
                f"here and pass --config.dataset.data_dir=DIR"
            ) from e
        if isinstance(e, NotImplementedError):
            raise UsageError(
                f"tfds dataset {tfds_name!r} in {builder.data_dir} is not in a random-access "
                f"format; rebuild it with `tfds build {tfds_name} --data_dir=DIR "
                f"--file_format=array_record`"
            ) from e
        raise


@dataclasses.dataclass(frozen=True)
class TfdsRecords:
    """A TFDS split's records as data.lazy's reader: record i is `source[i]`'s image, decoded
    when read (uint8 pixels scaled to [0, 1], as the memory pipeline's arrays); the data
    source (random access over ArrayRecord files) is picklable, so grain's workers read it."""

    source: Any  # tfds.data_source(...) of the split
    dataset: str  # tfds:<name>, for errors
    split: str
    image_key: str

    def __len__(self) -> int:
        return len(self.source)

    def read(self, record: int) -> np.ndarray:
        """Record `record`'s image as float32."""
        try:
            image = np.asarray(self.source[record][self.image_key])
        except Exception as e:  # noqa: BLE001 - a record that cannot be decoded is the data's
            raise UsageError(f"{self.name(record)} cannot be read ({one_line(e)})") from None
        if image.dtype == np.uint8:
            return image.astype(np.float32) / 255.0
        return image.astype(np.float32)

    def name(self, record: int) -> str:
        """How an error names the record."""
        return f"{self.dataset} {self.split} record {record}"

    def describe(self) -> dict:
        """The reader in brief (dataset.info, the fingerprint)."""
        return {"format": "tfds.data_source", "dataset": self.dataset, "split": self.split}

    def identity(self) -> bytes:
        """What the fingerprint hashes of the records: their count (the files are TFDS's)."""
        return str(len(self.source)).encode()


def _lazy_tfds_split(records: TfdsRecords, label_key: str) -> tuple[LazyInputs, np.ndarray]:
    """(lazy inputs, labels) of a TFDS split: every record's label, one at a time (per-item
    reads, as _read_tfds_source), and the first record's image shape as every example's."""
    if not len(records):
        raise UsageError(f"{records.dataset} split {records.split!r} has no records")
    labels = np.asarray([records.source[i][label_key] for i in range(len(records))])
    shape = records.read(0).shape
    return LazyInputs(records, np.arange(len(records)), tuple(shape)), labels.reshape(-1)


def _read_tfds_source(
    source: Any, image_key: str, label_key: str, indices: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """(images, labels) of the records at `indices` of a data source (None: all of them)."""
    indices = range(len(source)) if indices is None else indices
    # Per-item reads: ArrayRecord is random access, and batched __getitems__ is broken under
    # tfds.testing.mock_data in tfds 4.9.10.
    examples = [source[int(i)] for i in indices]
    if not examples:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    shapes = {np.shape(ex[image_key]) for ex in examples}
    if len(shapes) > 1:
        raise UsageError(
            f"tfds feature {image_key!r} has examples of {len(shapes)} different shapes (e.g. "
            f"{', '.join(map(str, sorted(shapes)[:3]))}); only fixed-size images are supported"
        )
    images = np.stack([np.asarray(ex[image_key]) for ex in examples])
    labels = np.asarray([ex[label_key] for ex in examples])
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    return images, labels


def _read_tfds_train_shard(
    source: Any, options: dict[str, Any], plan: SplitPlan, name: str, wanted: dict[str, str]
) -> dict[str, Any]:
    """This process's training records of a TFDS source, with val carved by index first.

    Every process computes the same carve and subset from the source's length alone (labels of
    other hosts' records are never read, so neither is stratified), then reads its own range,
    the few dropped records (the normalization statistics count them) and, without a val split
    of the dataset's own, the carved val records.
    """
    shard, n = plan.shard, len(source)
    order = np.arange(n)
    val_idx = None
    if "val" not in wanted:
        n_val = val_count(plan.val_fraction, n, name)
        perm = rng_for(plan.seed, 101).permutation(n)
        val_idx, order = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if plan.train_size is not None:
        check_train_size(plan.train_size, len(order), name)
        # Prefixes of one permutation: a smaller train_size is a subset of a larger one.
        order = np.sort(order[rng_for(plan.seed, 102).permutation(len(order))[: plan.train_size]])
    start, stop, kept = shard.plan(len(order))
    keys = (options["image_key"], options["label_key"])
    out: dict[str, Any] = {}
    out["x_train"], out["y_train"] = _read_tfds_source(source, *keys, indices=order[start:stop])
    out["x_train_rest"], _ = _read_tfds_source(source, *keys, indices=order[kept:])
    read = stop - start + len(order) - kept
    if val_idx is not None:
        out["x_val"], out["y_val"] = _read_tfds_source(source, *keys, indices=val_idx)
        read += len(val_idx)
        val_source = (
            f"carved from train by index (val_fraction={plan.val_fraction}, seed={plan.seed}; "
            "per-host data: not stratified by class)"
        )
    else:
        val_source = "dataset's own validation split"
    out["shard"] = {
        "start": start,
        "stop": stop,
        "global_size": kept,
        "dropped": len(order) - kept,
        "read": f"{read} of the {n} records of the training split (tfds.data_source)",
        "val_source": val_source,
        "val_carved": val_idx is not None,
        "raw_sizes": {"train": n},
    }
    return out


# ----------------------------------------------------------------------------- custom loader


def custom_arrays(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    module_name, _, func_name = name.partition(":")
    if not module_name or not func_name:
        raise UsageError(f"dataset name={name!r} is unknown; valid: {VALID_NAMES}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(
            f"dataset loader {name!r}: cannot import module {module_name!r} ({e}); "
            f"valid: {VALID_NAMES}"
        ) from e
    except Exception as e:  # the module's own code raising as it is imported
        raise UserCodeError(f"dataset loader {name!r}: importing it raised {one_line(e)}") from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(
            f"dataset loader {name!r}: module {module_name!r} has no function {func_name!r}"
        )
    return call_loader(name, func, kwargs)


def call_loader(name: str, func: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The raw dict the user's loader `func(**kwargs)` returns, checked to be a mapping; its
    raising is one line naming it (a UserCodeError)."""
    try:
        inspect.signature(func).bind(**kwargs)
    except TypeError as e:
        raise UsageError(f"dataset loader {name!r} does not accept kwargs {kwargs}: {e}") from e
    except ValueError:
        pass  # no introspectable signature (some builtins): let the call itself decide
    with user_code(f"dataset loader {name!r}", func):
        raw = func(**kwargs)
    if not isinstance(raw, Mapping):
        raise UsageError(
            f"dataset loader {name!r} returned {type(raw).__name__}; it must return a dict "
            "with x_train, y_train, x_test, y_test, kind, num_classes"
        )
    raw = dict(raw)
    info = dict(raw.get("info") or {})
    info.setdefault("source", f"custom loader {name}")
    raw["info"] = info
    return raw


# Data handed over in Python (workflow.api): dataset name -> fn(kwargs, test_fraction) -> raw.
# Process-local: a run directory names them, but only this process can load them again.
IN_MEMORY: dict[str, Any] = {}


def register_in_memory(name: str, load: Any) -> str:
    """Make dataset name `name` load through `load(kwargs, test_fraction)`; returns the name."""
    IN_MEMORY[name] = load
    return name


VALID_NAMES = (
    "mnist1d, digits, synthetic, tfds:<name>, module:function, or a data file or folder "
    "(.npz, .npy, .csv, .parquet, a folder of images <class>/*.png)"
)
