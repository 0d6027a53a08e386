"""Datasets for the workflow: loading, validation, splits, normalization and batch order.

Input conventions: images (N, H, W, C), sequences (N, T, F), tabular (N, D); x is float32 and y
int32 class indices. ``load_dataset`` runs: raw load -> validate -> carve val -> subset train ->
normalize all splits with train statistics.

Per-host data (config.parallel.data="per_host", the default with several processes; see
workflow/distributed.py): ``load_dataset(..., shard=Shard(...))`` carves val from the whole
training set first (every process carves the same), keeps val and test whole, drops the last
few training examples so `processes x devices` divide the rest, and keeps only this process's
contiguous range of it. TFDS reads only those records (and the dropped ones, for the
statistics); since the labels of other hosts' records are never read, its val carve and
train_size subset are then drawn by index, not stratified by class. The in-memory loaders
(mnist1d, digits, synthetic, custom) generate or load everything anyway and keep the slice.
Normalization statistics and the class counts are combined over the processes, so every host
normalizes with the full training split's statistics. Text falls back to loading the whole
split on every host (its vocabulary needs every word) and slicing it.

Text (a TFDS string feature, e.g. imdb_reviews' 'text') is kind "sequence" with integer inputs:
token ids shaped (N, T, 1), int32, one feature per step like MNIST-1D's (N, 40, 1), so every part
of the workflow keyed on the data kind (augmentation, remedies, error analysis) works unchanged;
a model embeds them (the LSTM's and the transformer's `vocab_size` option). Ids: 0 padding,
1 unknown, 2.. the vocabulary's words by frequency. The vocabulary is a statistic of the training
examples, like the normalization statistics: built after the val carve and the train_size subset
(``restrict_vocabulary``), applied to every split, never normalized.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import numbers
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from workflow.errors import UsageError
from workflow.synthetic import make_synthetic, rng_for

KINDS = ("image", "sequence", "tabular")
_EXPECTED_SHAPE = {"image": "(N, H, W, C)", "sequence": "(N, T, F)", "tabular": "(N, D)"}
_NDIM = {"image": 4, "sequence": 3, "tabular": 2}
_VALID_NAMES = "mnist1d, digits, synthetic, tfds:<name>, module:function"
CACHE_ENV = "DNN_TROUBLESHOOTING_CACHE"
STD_FLOOR = 1e-8
# Fixed so the digits test split never changes with the run seed.
_DIGITS_SPLIT_SEED = 0
_DIGITS_TEST_FRACTION = 0.2


@dataclasses.dataclass(eq=False)
class Dataset:
    """A classification dataset split into train/val/test numpy arrays."""

    name: str
    kind: str
    num_classes: int
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_val: np.ndarray = dataclasses.field(repr=False)
    y_val: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    irreducible_error: float | None = None
    normalization: dict | None = None
    info: dict = dataclasses.field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch axis."""
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) arrays of split 'train', 'val' or 'test'."""
        if name not in ("train", "val", "test"):
            raise UsageError(f"split {name!r} is unknown; valid: train, val, test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description for reports: sizes, shapes and class counts per split."""
        splits = {}
        for split in ("train", "val", "test"):
            x, y = self.split(split)
            counts = np.bincount(y, minlength=self.num_classes) if y.size else []
            splits[split] = {
                "size": int(x.shape[0]),
                "x_shape": list(x.shape),
                "class_counts": [int(c) for c in counts],
            }
        out = {
            "name": self.name,
            "kind": self.kind,
            "num_classes": int(self.num_classes),
            "input_shape": list(self.input_shape),
            "splits": splits,
            "irreducible_error": self.irreducible_error,
            "normalized": self.normalization is not None,
        }
        shard = self.info.get("shard")
        if shard:  # per-host data: the training set is every process's shard together
            splits["train"] = {
                "size": int(shard["global_size"]),
                "x_shape": [int(shard["global_size"]), *self.input_shape],
                "class_counts": [int(c) for c in shard["class_counts"]],
            }
            out["shard"] = {k: v for k, v in shard.items() if k != "class_counts"}
        vocab = self.info.get("vocabulary")
        if vocab:  # token-id inputs: the vocabulary's size, file and coverage, not its words
            out["vocabulary"] = {k: v for k, v in vocab.items() if k != "words"}
        return out


def default_config() -> ml_collections.ConfigDict:
    """A dataset ConfigDict with every field ``load_dataset`` reads (defaults filled in)."""
    cfg = ml_collections.ConfigDict()
    cfg.name = "mnist1d"
    cfg.train_size = ml_collections.config_dict.placeholder(int)
    cfg.val_fraction = 0.1
    cfg.normalize = True
    cfg.kwargs = ml_collections.ConfigDict()
    cfg.data_dir = ml_collections.config_dict.placeholder(str)
    return cfg


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of the training split in per-host data mode."""

    index: int  # this process, in [0, count)
    count: int  # processes, each holding one equal part
    blocks: int = 1  # equal device blocks each part splits into (the process's data devices)

    def plan(self, num_examples: int) -> tuple[int, int, int]:
        """(start, stop, kept): this process's range of the first `kept` examples, the most
        that count x blocks divide; the rest are dropped."""
        multiple = self.count * self.blocks
        kept = num_examples - num_examples % multiple
        if kept == 0:
            raise UsageError(
                f"per-host data needs at least {multiple} training examples ({self.count} "
                f"processes x {self.blocks} devices each), the dataset has {num_examples}; use "
                "more data or --config.parallel.data=replicated"
            )
        size = kept // self.count
        return self.index * size, (self.index + 1) * size, kept


def process_shard(config: ml_collections.ConfigDict | None = None) -> Shard | None:
    """This process's Shard under config.parallel (None: the config's defaults), or None where
    every process loads the training split whole (parallel.data resolves to "replicated")."""
    import jax

    from workflow import distributed

    parallel = (config.get("parallel") if config is not None else None) or {}
    if distributed.data_layout(parallel.get("data", "auto")) != "per_host":
        return None
    count = jax.process_count()
    devices = parallel.get("data_devices", 0) or jax.device_count()
    return Shard(jax.process_index(), count, max(1, devices // count))


def load_dataset(
    cfg: ml_collections.ConfigDict, *, seed: int, shard: Shard | None | str = "auto"
) -> Dataset:
    """Load, validate, split and normalize the dataset that ``cfg`` names.

    `shard`: this process's part of the training split (per-host data), None to load it whole,
    or "auto": ``process_shard()``, i.e. per-host exactly when several processes run.
    """
    name = _get(cfg, "name", None)
    if not isinstance(name, str) or not name:
        raise UsageError(f"dataset name={name!r} is invalid; valid: {_VALID_NAMES}")
    val_fraction = _get(cfg, "val_fraction", 0.1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise UsageError(f"val_fraction={val_fraction!r} must be a number in (0, 1)")
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction={val_fraction} must be in (0, 1)")
    train_size = _get(cfg, "train_size", None)
    if train_size is not None and (
        isinstance(train_size, bool)
        or not isinstance(train_size, int | np.integer)
        or train_size < 1
    ):
        raise UsageError(f"train_size={train_size!r} must be a positive integer or None")
    kwargs = _get(cfg, "kwargs", None)
    kwargs = {} if kwargs is None else _to_dict(kwargs)
    data_dir = _get(cfg, "data_dir", None)
    if isinstance(shard, str):
        shard = process_shard()
    split_plan = _SplitPlan(seed, val_fraction, train_size, shard)

    raw = _load_raw(name, kwargs, seed=seed, data_dir=data_dir, plan=split_plan)
    # Recorded before _validate casts to float32/int32, which would hide them from the checks.
    source_dtypes = _source_dtypes(raw)
    raw = _validate(raw, name)
    info = {**raw.get("info", {})}
    info.setdefault("source", name)
    info["source_dtypes"] = source_dtypes
    info["raw_sizes"] = {
        s: int(raw[f"y_{s}"].shape[0]) for s in ("train", "val", "test") if f"y_{s}" in raw
    }
    read_shard = raw.get("shard")  # set by a loader that read only this process's records

    x_train, y_train = raw["x_train"], raw["y_train"]
    if read_shard is not None:
        x_val, y_val = raw["x_val"], raw["y_val"]
        info["raw_sizes"].update(read_shard.pop("raw_sizes"))
        if read_shard.pop("val_carved"):
            info["raw_sizes"].pop("val", None)
        info["val_source"] = read_shard.pop("val_source")
    elif "x_val" in raw:
        x_val, y_val = raw["x_val"], raw["y_val"]
        info["val_source"] = "dataset's own validation split"
    else:
        n_val = _val_count(val_fraction, len(y_train), name)
        order = _stratified_order(y_train, rng_for(seed, 101))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        x_val, y_val = x_train[val_idx], y_train[val_idx]
        x_train, y_train = x_train[train_idx], y_train[train_idx]
        info["val_source"] = f"carved from train (val_fraction={val_fraction}, seed={seed})"

    if train_size is not None and read_shard is None:
        _check_train_size(train_size, len(y_train), name)
        # Prefixes of one stratified order: a smaller train_size is a subset of a larger one.
        keep = np.sort(_stratified_order(y_train, rng_for(seed, 102))[:train_size])
        x_train, y_train = x_train[keep], y_train[keep]
    info["train_size"] = train_size

    normalization = None
    x_test = raw["x_test"]
    if raw.get("token_ids") is not None:
        # Token ids are categories, not quantities: they get a vocabulary, never normalization.
        # Built from the whole training split (text is never read per host), before any slice.
        vocab = restrict_vocabulary(x_train, raw["token_ids"])
        x_train, x_val, x_test = (apply_vocabulary(x, vocab) for x in (x_train, x_val, x_test))
        splits = {"train": x_train, "val": x_val, "test": x_test}
        info["vocabulary"] = vocabulary_info(vocab, splits)
        info["normalize"] = "skipped: inputs are token ids"
    x_rest = None  # the dropped training examples, which the statistics still count
    if shard is not None:
        if read_shard is None:
            start, stop, kept = shard.plan(len(y_train))
            x_rest = x_train[kept:]
            read_shard = {
                "start": start,
                "stop": stop,
                "global_size": kept,
                "dropped": len(y_train) - kept,
                "read": "the whole training split (generated or loaded in memory), sliced",
            }
            x_train, y_train = x_train[start:stop], y_train[start:stop]
        else:
            x_rest = _as_inputs(raw["x_train_rest"], name, "train")
        info["shard"] = _shard_info(shard, read_shard, y_train, raw["num_classes"])
    if raw.get("token_ids") is None and _get(cfg, "normalize", False):
        if shard is None:
            normalization = compute_normalization(x_train)
        else:
            normalization = combined_normalization(x_train, x_rest)
        x_train, x_val, x_test = (
            apply_normalization(x, normalization) for x in (x_train, x_val, x_test)
        )
    info["sizes"] = {"train": len(y_train), "val": len(y_val), "test": len(raw["y_test"])}

    return Dataset(
        name=name,
        kind=raw["kind"],
        num_classes=raw["num_classes"],
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=raw["y_test"],
        irreducible_error=raw.get("irreducible_error"),
        normalization=normalization,
        info=info,
    )


@dataclasses.dataclass(frozen=True)
class _SplitPlan:
    """What a loader that reads per host needs to carve val and pick its records itself."""

    seed: int
    val_fraction: float
    train_size: int | None
    shard: Shard | None


def _val_count(val_fraction: float, num_train: int, name: str) -> int:
    n_val = int(round(val_fraction * num_train))
    if not 1 <= n_val < num_train:
        raise UsageError(
            f"val_fraction={val_fraction} leaves {n_val} val and {num_train - n_val} "
            f"train examples of {num_train} in {name}; pick a fraction that keeps both >= 1"
        )
    return n_val


def _check_train_size(train_size: int, num_train: int, name: str) -> None:
    if train_size > num_train:
        raise UsageError(
            f"train_size={train_size} exceeds the {num_train} training examples of "
            f"{name} (after carving val); use train_size <= {num_train} or None"
        )


def _shard_info(shard: Shard, read: dict, y_train: np.ndarray, num_classes: int) -> dict:
    """dataset.info["shard"]: this process's range, and every process's as it loaded it
    (gathered: collective, so every process calls it at the same point)."""
    from workflow import distributed

    mine = np.asarray([read["start"], read["stop"], len(y_train)], np.int64)
    hosts = [
        {"process": i, "start": int(a), "stop": int(b), "examples": int(n)}
        for i, (a, b, n) in enumerate(distributed.allgather(mine))
    ]
    counts = np.bincount(y_train, minlength=num_classes).astype(np.int64)
    return {
        "process": shard.index,
        "processes": shard.count,
        "devices_per_process": shard.blocks,
        "start": int(read["start"]),
        "stop": int(read["stop"]),
        "size": len(y_train),
        "global_size": int(read["global_size"]),
        "dropped": int(read["dropped"]),
        "read": read["read"],
        "hosts": hosts,
        "class_counts": [int(c) for c in distributed.sum_over_processes(counts)],
    }


def _source_dtypes(raw: Any) -> dict[str, str]:
    """The dtype of each array as the loader returned it: {'x_train': 'float64', ...}."""
    dtypes = {}
    if not isinstance(raw, Mapping):
        return dtypes
    for key in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        value = raw.get(key)
        if value is not None:
            dtype = getattr(value, "dtype", None)
            dtypes[key] = str(dtype if dtype is not None else np.asarray(value).dtype)
    return dtypes


def _get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def _to_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    if isinstance(value, Mapping):
        return dict(value)
    raise UsageError(f"dataset kwargs={value!r} must be a mapping of loader options")


def _load_raw(
    name: str, kwargs: dict[str, Any], *, seed: int, data_dir: str | None, plan: _SplitPlan
) -> dict:
    if name == "mnist1d":
        return _load_mnist1d(kwargs)
    if name == "digits":
        _reject_kwargs(name, kwargs)
        return _load_digits()
    if name == "synthetic":
        return make_synthetic(kwargs, seed=seed)
    if name.startswith("tfds:"):
        return _load_tfds(name[len("tfds:") :], kwargs, data_dir, plan)
    if ":" in name:
        return _load_custom(name, kwargs)
    raise UsageError(f"dataset name={name!r} is unknown; valid: {_VALID_NAMES}")


def _reject_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise UsageError(f"dataset {name} takes no kwargs, got {', '.join(sorted(kwargs))}")


# ----------------------------------------------------------------------------- mnist1d


def cache_dir() -> Path:
    """Where generated arrays are cached: $DNN_TROUBLESHOOTING_CACHE or ~/.cache/..."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "dnn-troubleshooting"


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


def _load_mnist1d(kwargs: dict[str, Any]) -> dict[str, Any]:
    args = _mnist1d_args(kwargs)
    version = metadata.version("mnist1d")
    key_src = json.dumps({**args, "mnist1d_version": version}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir() / f"mnist1d-{key}.npz"
    arrays = _read_cache(path)
    cached = arrays is not None
    if arrays is None:
        arrays = _generate_mnist1d(args)
        _write_cache(path, arrays, key_src)
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


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable or partial: regenerate and overwrite


def _write_atomically(path: Path, mode: str, write: Callable[[Any], None]) -> None:
    """write(file) into a temporary file beside `path`, then rename it to `path`.

    Concurrent runs sharing the cache never read a half-written file; OSError propagates.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_cache(path: Path, arrays: dict[str, np.ndarray], key_src: str) -> None:
    try:
        _write_atomically(path, "wb", lambda f: np.savez(f, **arrays, args_json=np.array(key_src)))
    except OSError as e:
        # A read-only cache only costs regeneration time next run; say so rather than fail.
        warnings.warn(f"could not write dataset cache {path}: {e}", stacklevel=3)


# ----------------------------------------------------------------------------- digits


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as (images (N, 8, 8) in 0..16, labels (N,)).

    Read from the CSV that scikit-learn ships, as load_digits does, without importing
    scikit-learn: that import alone is 2.4 s of a cold debug run on the 2-core CPU.
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


def _load_digits() -> dict[str, Any]:
    images, labels = _read_digits()
    x = (images / 16.0).astype(np.float32)[..., None]  # pixel values are 0..16
    y = labels.astype(np.int32)
    n_test = int(round(_DIGITS_TEST_FRACTION * len(y)))
    order = _stratified_order(y, rng_for(_DIGITS_SPLIT_SEED, 7))
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


def _load_tfds(
    tfds_name: str, kwargs: dict[str, Any], data_dir: str | None, plan: _SplitPlan | None = None
) -> dict[str, Any]:
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

    import tensorflow_datasets as tfds  # lazy: costs ~1 s, only tfds users pay it

    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise UsageError(f"tfds dataset {tfds_name!r} does not exist in tfds catalog") from e

    features = builder.info.features
    text_key = _tfds_text_key(tfds, tfds_name, features, options, set(kwargs))
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

    raw: dict[str, Any] = {}
    token_lists = {}
    if plan is not None and plan.shard is not None and not text_key:
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
        else:
            x, y = _read_tfds_source(source, options["image_key"], options["label_key"])
            raw[f"x_{role}"], raw[f"y_{role}"] = x, y
    info = {
        "source": f"tfds {builder.info.full_name} via tfds.data_source",
        "splits_used": {"train": options["train_split"], **wanted},
        "data_dir": str(builder.data_dir),
    }
    if text_key:
        # Every word of the train split, by frequency: load_dataset keeps the vocab_size - 2
        # most frequent among the examples that are trained on (restrict_vocabulary).
        words = build_vocabulary(token_lists["train"])
        max_length = options["max_length"]
        for role, tokens in token_lists.items():
            raw[f"x_{role}"] = encode_tokens(tokens, words, max_length)[..., None]
        raw["token_ids"] = {
            "words": words,
            "vocab_size": options["vocab_size"],
            "max_length": max_length,
            "truncated": {
                role: round(float(np.mean([len(t) > max_length for t in tokens])), 4)
                for role, tokens in token_lists.items()
            },
        }
        info["text_key"] = text_key
    raw.update(kind="sequence" if text_key else "image", num_classes=int(num_classes), info=info)
    return raw


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


# ----------------------------------------------------------------------------- text

# Lower-cased words: runs of letters and digits, with an inner apostrophe kept ("don't").
TOKEN_PATTERN = r"[a-z0-9]+(?:'[a-z0-9]+)*"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
# HTML tags (IMDB reviews hold <br /> line breaks) are markup, not words.
_TAG_RE = re.compile(r"<[^>]*>")
PAD_ID, UNKNOWN_ID = 0, 1
PAD, UNKNOWN = "<pad>", "<unk>"
TEXT_OPTIONS = {"text_key": None, "vocab_size": 20000, "max_length": 256}


def tokenize(text: str | bytes) -> list[str]:
    """Lower-case word tokens of `text` (HTML tags dropped), by TOKEN_PATTERN."""
    if isinstance(text, bytes | np.bytes_):
        text = text.decode("utf-8", errors="replace")
    return _TOKEN_RE.findall(_TAG_RE.sub(" ", str(text)).lower())


def build_vocabulary(token_lists: list[list[str]], vocab_size: int | None = None) -> list[str]:
    """[PAD, UNKNOWN, words...]: the `vocab_size - 2` most frequent words (all when None),
    ties in alphabetical order so the vocabulary is a function of the words alone."""
    counts: dict[str, int] = {}
    for tokens in token_lists:
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
    ranked = sorted(counts, key=lambda w: (-counts[w], w))
    if vocab_size is not None:
        ranked = ranked[: max(0, vocab_size - 2)]
    return [PAD, UNKNOWN, *ranked]


def encode_tokens(
    token_lists: list[list[str]], vocabulary: list[str], max_length: int
) -> np.ndarray:
    """(N, max_length) int32 ids: the first `max_length` tokens of each example (later ones are
    cut), words outside `vocabulary` as UNKNOWN_ID, padded at the end with PAD_ID."""
    index = {word: i for i, word in enumerate(vocabulary)}
    out = np.full((len(token_lists), max_length), PAD_ID, np.int32)
    for row, tokens in zip(out, token_lists, strict=True):
        ids = [index.get(t, UNKNOWN_ID) for t in tokens[:max_length]]
        row[: len(ids)] = ids
    return out


def restrict_vocabulary(x_train: np.ndarray, token_ids: Mapping[str, Any]) -> dict[str, Any]:
    """The vocabulary of the training inputs: the `vocab_size - 2` ids most frequent in x_train
    (ties keep the loader's order), renumbered from 2; ids never trained on become UNKNOWN_ID.

    `token_ids` is what the loader returns beside its ids: the words those ids index
    ("words", with PAD and UNKNOWN first), "vocab_size" and "max_length".
    """
    words = list(token_ids["words"])
    counts = np.bincount(np.asarray(x_train).ravel(), minlength=len(words))[: len(words)]
    counts[[PAD_ID, UNKNOWN_ID]] = 0
    order = np.argsort(-counts, kind="stable")
    keep = order[: max(0, int(token_ids["vocab_size"]) - 2)]
    keep = keep[counts[keep] > 0]
    lookup = np.full(len(words), UNKNOWN_ID, np.int32)
    lookup[PAD_ID] = PAD_ID
    lookup[keep] = np.arange(2, 2 + len(keep), dtype=np.int32)
    vocab = {
        "words": [PAD, UNKNOWN, *(words[i] for i in keep)],
        "lookup": lookup,
        "max_length": int(token_ids["max_length"]),
        "truncated": dict(token_ids.get("truncated") or {}),
    }
    vocab["file"], vocab["sha256"] = save_vocabulary(vocab["words"], vocab["max_length"])
    return vocab


def apply_vocabulary(x: np.ndarray, vocab: Mapping[str, Any]) -> np.ndarray:
    """Loader ids renumbered by ``restrict_vocabulary`` (ids it has never seen: UNKNOWN_ID)."""
    lookup, x = vocab["lookup"], np.asarray(x)
    out = np.full(x.shape, UNKNOWN_ID, np.int32)
    known = x < len(lookup)
    out[known] = lookup[x[known]]
    return out


def vocabulary_info(vocab: Mapping[str, Any], splits: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """dataset.info["vocabulary"]: size, file, coverage per split (unknown share of the tokens,
    share of examples cut at max_length) and the words themselves."""
    unknown = {}
    for split, x in splits.items():
        tokens = int(np.count_nonzero(x != PAD_ID))
        unknown[split] = round(int(np.count_nonzero(x == UNKNOWN_ID)) / max(1, tokens), 4)
    return {
        "size": len(vocab["words"]),
        "max_length": vocab["max_length"],
        "pad_id": PAD_ID,
        "unknown_id": UNKNOWN_ID,
        "tokenizer": f"lower-case regex {TOKEN_PATTERN} (HTML tags dropped)",
        "file": vocab["file"],
        "sha256": vocab["sha256"],
        "unknown_rate": unknown,
        "truncated": vocab["truncated"],
        "words": vocab["words"],
    }


def save_vocabulary(words: list[str], max_length: int) -> tuple[str | None, str]:
    """Write the vocabulary (id i is words[i]) to the cache, named by its hash; (path, sha256).

    Every stage that loads the same data rebuilds the same vocabulary and finds the same file:
    the hash in summary.json's dataset block names the exact vocabulary a run used.
    """
    text = json.dumps({"words": words, "max_length": max_length, "tokenizer": TOKEN_PATTERN})
    digest = hashlib.sha256(text.encode()).hexdigest()
    path = cache_dir() / f"vocabulary-{digest[:16]}.json"
    if path.exists():
        return str(path), digest
    try:
        _write_atomically(path, "w", lambda f: f.write(text))
    except OSError as e:
        warnings.warn(f"could not write vocabulary file {path}: {e}", stacklevel=3)
        return None, digest
    return str(path), digest


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
    source: Any, options: dict[str, Any], plan: _SplitPlan, name: str, wanted: dict[str, str]
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
        n_val = _val_count(plan.val_fraction, n, name)
        perm = rng_for(plan.seed, 101).permutation(n)
        val_idx, order = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if plan.train_size is not None:
        _check_train_size(plan.train_size, len(order), name)
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


def _load_custom(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    module_name, _, func_name = name.partition(":")
    if not module_name or not func_name:
        raise UsageError(f"dataset name={name!r} is unknown; valid: {_VALID_NAMES}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(
            f"dataset loader {name!r}: cannot import module {module_name!r} ({e}); "
            f"valid: {_VALID_NAMES}"
        ) from e
    func = getattr(module, func_name, None)
    if not callable(func):
        raise UsageError(
            f"dataset loader {name!r}: module {module_name!r} has no function {func_name!r}"
        )
    try:
        inspect.signature(func).bind(**kwargs)
    except TypeError as e:
        raise UsageError(f"dataset loader {name!r} does not accept kwargs {kwargs}: {e}") from e
    except ValueError:
        pass  # no introspectable signature (some builtins): let the call itself decide
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


# ----------------------------------------------------------------------------- validation


def _validate(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """Reject raw data that cannot be trained on; return it converted to float32/int32."""
    required = ("x_train", "y_train", "x_test", "y_test", "kind", "num_classes")
    missing = [k for k in required if k not in raw or raw[k] is None]
    if missing:
        raise UsageError(
            f"dataset {name} lacks {', '.join(missing)}; required: {', '.join(required)}"
        )
    if (raw.get("x_val") is None) != (raw.get("y_val") is None):
        raise UsageError(f"dataset {name} gives only one of x_val, y_val; give both or neither")

    kind = raw["kind"]
    if kind not in KINDS:
        raise UsageError(f"dataset {name} kind={kind!r} is unknown; valid: {', '.join(KINDS)}")
    c = raw["num_classes"]
    if isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 2:
        raise UsageError(f"dataset {name} num_classes={c!r} must be an integer >= 2")
    c = int(c)
    irreducible = raw.get("irreducible_error")
    if irreducible is not None:
        if not isinstance(irreducible, numbers.Real) or not 0.0 <= irreducible <= 1.0:
            raise UsageError(
                f"dataset {name} irreducible_error={irreducible!r} must be in [0, 1] or None"
            )
        irreducible = float(irreducible)

    splits = ["train", "val", "test"] if raw.get("x_val") is not None else ["train", "test"]
    out = dict(raw, kind=kind, num_classes=c, irreducible_error=irreducible)
    if "val" not in splits:  # explicit x_val=None means "no val split": carve one
        out.pop("x_val", None)
        out.pop("y_val", None)
    feature_shape = None
    for split in splits:
        x = _as_inputs(raw[f"x_{split}"], name, split, tokens=raw.get("token_ids") is not None)
        y = _as_labels(raw[f"y_{split}"], name, split)
        if x.ndim != _NDIM[kind]:
            raise UsageError(
                f"dataset {name} x_{split} has shape {x.shape} but kind={kind!r} needs "
                f"{_EXPECTED_SHAPE[kind]} ({_NDIM[kind]} dims)"
            )
        if x.shape[0] != y.shape[0]:
            raise UsageError(
                f"dataset {name} {split} split has {x.shape[0]} inputs but {y.shape[0]} labels"
            )
        if x.shape[0] == 0:
            raise UsageError(f"dataset {name} {split} split is empty")
        if feature_shape is None:
            feature_shape = x.shape[1:]
        elif x.shape[1:] != feature_shape:
            raise UsageError(
                f"dataset {name} x_{split} examples have shape {x.shape[1:]} but x_train "
                f"examples have {feature_shape}"
            )
        bad = ~np.isfinite(x)
        if bad.any():
            n_nan = int(np.isnan(x).sum())
            raise UsageError(
                f"dataset {name} x_{split} has {int(bad.sum())} non-finite values "
                f"({n_nan} NaN, {int(bad.sum()) - n_nan} inf) in "
                f"{int(bad.reshape(len(x), -1).any(1).sum())} examples; inputs must be finite"
            )
        outside = (y < 0) | (y >= c)
        if outside.any():
            values = np.unique(y[outside])
            shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
            raise UsageError(
                f"dataset {name} y_{split} has {int(outside.sum())} labels outside "
                f"[0, {c}) (values: {shown}); labels must be class indices 0..{c - 1}"
            )
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def _as_inputs(x: Any, name: str, split: str, tokens: bool = False) -> np.ndarray:
    x = np.asarray(x)
    if tokens:
        # Kept integer: config.dtype=bfloat16 casts floating inputs, and bfloat16 holds integers
        # exactly only up to 256, so float token ids would be merged into their neighbours.
        if not np.issubdtype(x.dtype, np.integer) or (x.size and x.min() < 0):
            raise UsageError(
                f"dataset {name} x_{split} holds token ids, which must be integers >= 0 "
                f"(0 padding, 1 unknown); got dtype {x.dtype}"
            )
        return x.astype(np.int32, copy=False)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise UsageError(f"dataset {name} x_{split} has dtype {x.dtype}; inputs must be numeric")
    if np.issubdtype(x.dtype, np.complexfloating):
        raise UsageError(f"dataset {name} x_{split} is complex; inputs must be real")
    # Checked after the cast so values that overflow float32 are caught as inf.
    return x.astype(np.float32, copy=False)


def _as_labels(y: Any, name: str, split: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        hint = " (one-hot? pass class indices, e.g. y.argmax(-1))" if y.ndim == 2 else ""
        raise UsageError(
            f"dataset {name} y_{split} has shape {y.shape}; labels must be class indices "
            f"shaped (N,){hint}"
        )
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int32, copy=False)
    if np.issubdtype(y.dtype, np.floating):
        finite = np.isfinite(y)
        fractional = ~finite | (np.floor(np.where(finite, y, 0)) != y)
        if fractional.any():
            examples = ", ".join(str(v) for v in np.unique(y[fractional])[:5])
            raise UsageError(
                f"dataset {name} y_{split} has {int(fractional.sum())} non-integer labels "
                f"(e.g. {examples}); labels must be integer class indices"
            )
        return y.astype(np.int32)
    raise UsageError(
        f"dataset {name} y_{split} has dtype {y.dtype}; labels must be integer class indices"
    )


def _stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of indices whose every prefix holds the classes in proportion to y."""
    perm = rng.permutation(len(y))
    ys = y[perm]
    order = np.argsort(ys, kind="stable")
    counts = np.bincount(ys)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(y), np.int64)
    rank[order] = np.arange(len(y)) - starts[ys[order]]
    # Fractional position inside its class; ties (same position) keep the random order.
    position = (rank + 0.5) / counts[ys]
    return perm[np.argsort(position, kind="stable")]


# ----------------------------------------------------------------------------- normalization


def compute_normalization(x_train: np.ndarray) -> dict[str, Any]:
    """Per-channel (last axis) mean and std of the training inputs."""
    axes = tuple(range(x_train.ndim - 1))
    mean = x_train.mean(axis=axes, dtype=np.float64)
    std = x_train.std(axis=axes, dtype=np.float64)
    return _normalization(mean, std)


def combined_normalization(x_shard: np.ndarray, x_rest: np.ndarray | None = None) -> dict:
    """compute_normalization of every process's `x_shard` and the `x_rest` rows they all hold
    (counted once), without moving the data: the two passes of mean and std over per-host
    float64 sums, added in process order, so every host gets the same statistics (collective).
    """
    from workflow import distributed

    axes = tuple(range(x_shard.ndim - 1))
    parts = [x_shard] + ([x_rest] if x_rest is not None and x_rest.size else [])
    count = distributed.sum_over_processes(np.asarray(x_shard.size // x_shard.shape[-1]))
    count = count + sum(x.size // x.shape[-1] for x in parts[1:])
    total = distributed.sum_over_processes(x_shard.sum(axis=axes, dtype=np.float64))
    mean = (total + sum(x.sum(axis=axes, dtype=np.float64) for x in parts[1:])) / count

    def squares(x):
        return np.square(x.astype(np.float64) - mean).sum(axis=axes)

    spread = distributed.sum_over_processes(squares(x_shard))
    spread = spread + sum(squares(x) for x in parts[1:])
    return _normalization(mean, np.sqrt(spread / count))


def _normalization(mean: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    constant = std < STD_FLOOR
    # Dividing a constant channel by ~0 would blow up any other value seen at eval; leave it at 1.
    std = np.where(constant, 1.0, std)
    return {
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "axis": "per-channel",
        "constant_channels": [int(i) for i in np.flatnonzero(constant)],
    }


def apply_normalization(x: np.ndarray, normalization: dict | None) -> np.ndarray:
    """(x - mean) / std per channel with saved statistics; identity when normalization is None."""
    if normalization is None:
        return x
    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[-1] != mean.shape[0]:
        raise UsageError(
            f"inputs with shape {x.shape} have {x.shape[-1] if x.ndim else 0} channels but the "
            f"normalization statistics have {mean.shape[0]}"
        )
    return ((x.astype(np.float32, copy=False) - mean) / std).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- batch order


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = rng_for(seed, epoch, 0xBA7C).permutation(num_examples)
    perm.flags.writeable = False  # cached and shared between calls
    return perm


def batch_indices(
    num_examples: int, batch_size: int, seed: int, step: int, num_steps: int
) -> np.ndarray:
    """Example indices (num_steps, batch_size) for steps [step, step + num_steps); pure."""
    _check_index_args(num_examples, batch_size, seed, step, num_steps)
    if batch_size > num_examples:
        raise UsageError(
            f"batch_size={batch_size} exceeds the {num_examples} training examples; "
            f"use batch_size <= {num_examples}"
        )
    return _epoch_rows(
        num_examples,
        batch_size,
        step,
        num_steps,
        lambda epoch: _epoch_permutation(int(num_examples), int(seed), epoch),
    )


def block_batch_indices(
    block_size: int, num_blocks: int, batch_size: int, seed: int, step: int, num_steps: int
) -> np.ndarray:
    """Per-host data's indices (num_steps, batch_size) for steps [step, step + num_steps): the
    columns of block d (batch_size / num_blocks of them, one device's part of each batch) index
    into that block's own `block_size` examples, which it visits in epoch permutations of its
    own, a function of (seed, epoch, d) alone; pure."""
    _check_index_args(block_size, batch_size, seed, step, num_steps)
    if num_blocks < 1 or batch_size % num_blocks:
        raise UsageError(
            f"batch_size={batch_size} must be a multiple of the {num_blocks} device blocks"
        )
    part = batch_size // num_blocks
    if part > block_size:
        raise UsageError(
            f"batch_size={batch_size} asks {part} examples per device of blocks that hold "
            f"{block_size} (per-host data: the training set split over {num_blocks} devices); "
            f"use batch_size <= {block_size * num_blocks}"
        )
    return np.concatenate(
        [
            _epoch_rows(
                block_size,
                part,
                step,
                num_steps,
                lambda epoch, d=d: _block_permutation(int(block_size), int(seed), epoch, d),
            )
            for d in range(num_blocks)
        ],
        axis=1,
    )


@functools.lru_cache(maxsize=64)
def _block_permutation(block_size: int, seed: int, epoch: int, block: int) -> np.ndarray:
    perm = rng_for(seed, epoch, 0xB10C, block).permutation(block_size)
    perm.flags.writeable = False  # cached and shared between calls
    return perm


def _check_index_args(
    num_examples: int, batch_size: int, seed: int, step: int, num_steps: int
) -> None:
    for label, value, low in (
        ("seed", seed, None),
        ("num_examples", num_examples, 1),
        ("batch_size", batch_size, 1),
        ("step", step, 0),
        ("num_steps", num_steps, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise UsageError(f"{label}={value!r} must be an integer")
        if low is not None and value < low:
            raise UsageError(f"{label}={value!r} must be an integer >= {low}")


def _epoch_rows(
    num_examples: int,
    batch_size: int,
    step: int,
    num_steps: int,
    permutation: Callable[[int], np.ndarray],
) -> np.ndarray:
    """Rows of `batch_size` indices for steps [step, step + num_steps), each epoch one
    `permutation(epoch)` of range(num_examples) cut into full batches (the remainder dropped)."""
    steps_per_epoch = num_examples // batch_size  # drop remainder: every batch is full
    out = np.empty((num_steps, batch_size), np.int64)
    done = 0
    while done < num_steps:
        epoch, offset = divmod(step + done, steps_per_epoch)
        take = min(num_steps - done, steps_per_epoch - offset)
        perm = permutation(int(epoch))
        chunk = perm[offset * batch_size : (offset + take) * batch_size]
        out[done : done + take] = chunk.reshape(take, batch_size)
        done += take
    return out
