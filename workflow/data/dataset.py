"""The Dataset and `load_dataset`: raw load -> validate -> carve val -> subset -> normalize."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

import models
from workflow.data import readers
from workflow.data.batching import stratified_order
from workflow.data.lazy import NORMALIZATION_SAMPLE, LazyInputs, is_lazy, rows
from workflow.data.normalization import (
    apply_normalization,
    combined_normalization,
    compute_normalization,
)
from workflow.data.shards import TARGET_COUNTS, Shard, SplitPlan, process_shard, shard_info
from workflow.data.sources import (
    IN_MEMORY,
    VALID_NAMES,
    custom_arrays,
    digits_arrays,
    mnist1d_arrays,
    tfds_arrays,
)
from workflow.data.synthetic import make_synthetic, rng_for
from workflow.data.text import apply_vocabulary, restrict_vocabulary, vocabulary_info
from workflow.data.validation import as_inputs, check_train_size, val_count, validate_raw
from workflow.engine import tasks
from workflow.errors import UsageError
from workflow.files import to_jsonable

# The whole training split's target counts a shard's description carries (shards.shard_info).
WHOLE_COUNTS = tuple(TARGET_COUNTS.values())


@dataclasses.dataclass(eq=False)
class Dataset:
    """A dataset split into train/val/test numpy arrays: class labels (N,), or regression /
    multi-label targets (N, K) for the task `task` names (regression's standardized).

    With dataset.pipeline="grain", x_train may be lazy (data.lazy.LazyInputs: an image
    folder's files, TFDS or array_record records, decoded when indexed); y_train, val and test
    are arrays."""

    name: str
    kind: str
    num_classes: int  # classes; a regression's or multi-label task's targets per example
    x_train: np.ndarray | LazyInputs = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_val: np.ndarray = dataclasses.field(repr=False)
    y_val: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    irreducible_error: float | None = None
    normalization: dict | None = None
    info: dict = dataclasses.field(default_factory=dict)
    # The task (engine/tasks.py); a regression's carries the targets' training statistics.
    task: tasks.TaskKind = tasks.Classification()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch axis."""
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The (x, y) arrays of split 'train', 'val' or 'test'."""
        if name not in ("train", "val", "test"):
            raise UsageError(f"split {name!r} is unknown; valid: train, val, test")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def fingerprint(self) -> str:
        """SHA-256 of what training reads: the arrays of every split, the classes and the
        normalization. With per-host data, this process holds only its shard of the training
        split; its place is taken by the shard's description (sizes, class counts), the same on
        every process, and the statistics of the whole split (normalization)."""
        h = hashlib.sha256()
        shard = self.info.get("shard")
        # Of the shard, what every process knows alike: every process's range, the class counts.
        keys = ("hosts", "global_size", *WHOLE_COUNTS)
        whole = {k: shard[k] for k in keys if k in shard} if shard else None
        described = [self.kind, int(self.num_classes), whole, self.normalization]
        if self.task.name != tasks.CLASSIFICATION:  # classification's fingerprints unchanged
            described.append(self.task.describe())
        h.update(json.dumps(to_jsonable(described), sort_keys=True).encode())
        splits = ("val", "test") if shard else ("train", "val", "test")
        for split in splits:
            for array in self.split(split):
                h.update(f"{split}|{array.dtype.str}|{array.shape}|".encode())
                if is_lazy(array):  # its records, not its decoded examples
                    h.update(array.fingerprint_bytes())
                else:
                    h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description for reports: sizes, shapes and class counts per split."""
        splits = {}
        for split in ("train", "val", "test"):
            x, y = self.split(split)
            splits[split] = {"size": int(x.shape[0]), "x_shape": list(x.shape), **self._targets(y)}
        out = {
            "name": self.name,
            "kind": self.kind,
            "num_classes": int(self.num_classes),
            "input_shape": list(self.input_shape),
            "splits": splits,
            "irreducible_error": self.irreducible_error,
            "normalized": self.normalization is not None,
        }
        if is_lazy(self.x_train):  # read by the grain pipeline's workers, never held whole
            out["train_inputs"] = {
                "read": "lazily, decoded as batches are read",
                **self.x_train.describe(),
            }
        shard = self.info.get("shard")
        if shard:  # per-host data: the training set is every process's shard together
            splits["train"] = {
                "size": int(shard["global_size"]),
                "x_shape": [int(shard["global_size"]), *self.input_shape],
                **{k: shard[k] for k in WHOLE_COUNTS if k in shard},
            }
            if self.task.name == tasks.REGRESSION:  # its statistics are the whole split's
                splits["train"]["target_mean"] = list(self.task.mean)
                splits["train"]["target_std"] = list(self.task.std)
            out["shard"] = {k: v for k, v in shard.items() if k not in WHOLE_COUNTS}
        if self.task.name != tasks.CLASSIFICATION:
            out["task"] = self.task.describe()
        vocab = self.info.get("vocabulary")
        if vocab:  # token-id inputs: the vocabulary's size, file and coverage, not its words
            out["vocabulary"] = {k: v for k, v in vocab.items() if k != "words"}
        return out

    def _targets(self, y: np.ndarray) -> dict[str, list]:
        """A split's targets in brief: class counts; label counts (multilabel); the targets'
        mean and standard deviation in their own units (regression)."""
        if self.task.name == tasks.CLASSIFICATION:
            counts = np.bincount(y, minlength=self.num_classes) if y.size else []
            return {"class_counts": [int(c) for c in counts]}
        if self.task.name == tasks.MULTILABEL:
            return {"label_counts": [int(c) for c in np.sum(y, 0)]}
        values = self.task.to_target_units(y) if y.size else np.zeros((0, self.num_classes))
        return {
            "target_mean": [float(v) for v in np.mean(values, 0)] if y.size else [],
            "target_std": [float(v) for v in np.std(values, 0)] if y.size else [],
        }


def default_config() -> ml_collections.ConfigDict:
    """A dataset ConfigDict with every field ``load_dataset`` reads (defaults filled in)."""
    cfg = ml_collections.ConfigDict()
    cfg.name = "mnist1d"
    cfg.train_size = ml_collections.config_dict.placeholder(int)
    cfg.val_fraction = 0.1
    cfg.test_fraction = readers.DEFAULT_TEST_FRACTION
    cfg.normalize = True
    cfg.kwargs = ml_collections.ConfigDict()
    cfg.data_dir = ml_collections.config_dict.placeholder(str)
    return cfg


def load_dataset(
    cfg: ml_collections.ConfigDict,
    *,
    seed: int,
    shard: Shard | None | str = "auto",
    task: str = tasks.CLASSIFICATION,
) -> Dataset:
    """Load, validate, split and normalize the dataset that ``cfg`` names, with targets for
    `task` (config.task); a regression's targets standardized with the training split's
    statistics (Dataset.task keeps them to report in the targets' units).

    `shard`: this process's part of the training split (per-host data), None to load it whole,
    or "auto": ``process_shard()``, i.e. per-host exactly when several processes run.
    """
    name, val_fraction, train_size = _checked_options(cfg)
    kwargs = _get(cfg, "kwargs", None)
    kwargs = {} if kwargs is None else _to_dict(kwargs)
    if isinstance(shard, str):
        shard = process_shard()
    split_plan = SplitPlan(seed, val_fraction, train_size, shard)
    # The grain pipeline reads the training split of files lazily: decoded as it is read.
    lazy = _get(cfg, "pipeline", "memory") == "grain"

    raw = _load_raw(
        name,
        kwargs,
        seed=seed,
        data_dir=_get(cfg, "data_dir", None),
        plan=split_plan,
        test_fraction=_test_fraction(cfg),
        task=tasks.check_task_name(task),
        lazy=lazy,
    )
    # Recorded before validate_raw casts to float32/int32, which would hide them from the checks.
    source_dtypes = _source_dtypes(raw)
    rounding = float32_rounding(raw)
    raw = validate_raw(raw, name, task)
    info = _source_info(raw, name, source_dtypes)
    if rounding is not None:
        info["float32_rounding"] = rounding
    read_shard = raw.get("shard")  # set by a loader that read only this process's records
    (x_train, y_train), (x_val, y_val) = _train_and_val(
        raw, read_shard, val_fraction, seed, name, info
    )
    if train_size is not None and read_shard is None:
        x_train, y_train = _train_subset(x_train, y_train, train_size, seed, name)
    info["train_size"] = train_size
    x_test = raw["x_test"]
    token_ids = raw.get("token_ids")
    if token_ids is not None:
        x_train, x_val, x_test = _as_vocabulary_ids(token_ids, x_train, x_val, x_test, info)
    x_rest = None  # the dropped training examples, which the statistics still count
    task_kind = tasks.KINDS[task]()
    if task == tasks.REGRESSION:
        # Every host holds the whole training split here unless its loader read only a part,
        # so the targets' statistics are the whole split's and the same on every host.
        if read_shard is not None:
            raise UsageError(
                f"task={task} with a loader that reads only this host's records ({name}) is "
                "not supported: the targets' statistics need every host's; use "
                "--config.parallel.data=replicated"
            )
        task_kind = target_statistics(y_train, name)
    if shard is not None:
        x_train, y_train, x_rest = _this_process_part(
            shard, read_shard, raw, x_train, y_train, name, info, task
        )

    normalization = None
    if token_ids is None and _get(cfg, "normalize", False):
        if is_lazy(x_train):
            normalization = _sampled_normalization(x_train, shard, seed, info)
            x_train = x_train.normalized(normalization)
        else:
            if shard is None:
                normalization = compute_normalization(x_train)
            else:
                normalization = combined_normalization(x_train, x_rest)
            x_train = apply_normalization(x_train, normalization)
        x_val, x_test = (apply_normalization(x, normalization) for x in (x_val, x_test))
    info["sizes"] = {"train": len(y_train), "val": len(y_val), "test": len(raw["y_test"])}
    y_test = raw["y_test"]
    if task == tasks.REGRESSION:
        y_train, y_val, y_test = (standardized(y, task_kind) for y in (y_train, y_val, y_test))

    return Dataset(
        name=name,
        kind=raw["kind"],
        num_classes=raw["num_classes"],
        x_train=x_train,
        y_train=y_train,
        x_val=x_val,
        y_val=y_val,
        x_test=x_test,
        y_test=y_test,
        irreducible_error=raw.get("irreducible_error"),
        normalization=normalization,
        info=info,
        task=task_kind,
    )


def _sampled_normalization(
    x_train: LazyInputs, shard: Shard | None, seed: int, info: dict
) -> dict[str, Any]:
    """A lazy training split's statistics, from a seeded sample of NORMALIZATION_SAMPLE
    examples (of each process's shard, combined, with per-host data) instead of every one."""
    sample = x_train.sample(NORMALIZATION_SAMPLE, rng_for(seed, 104).integers(2**31))
    info["normalization_sample"] = len(sample)
    if shard is None:
        return compute_normalization(sample)
    return combined_normalization(sample)


def target_statistics(y_train: np.ndarray, name: str) -> tasks.Regression:
    """The regression task with the training targets' mean and standard deviation per output;
    a constant target (nothing to learn, and nothing to divide by) is refused."""
    mean, std = np.mean(y_train, 0, dtype=np.float64), np.std(y_train, 0, dtype=np.float64)
    constant = np.flatnonzero(~(std > 0))
    if constant.size:
        raise UsageError(
            f"dataset {name}: regression target {int(constant[0])} has the same value "
            f"{mean[constant[0]]:g} in every training example; there is nothing to learn"
        )
    return tasks.Regression(mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def standardized(y: np.ndarray, task: tasks.Regression) -> np.ndarray:
    """Targets in standardized units (the training split's mean 0, standard deviation 1)."""
    return ((y - np.asarray(task.mean)) / np.asarray(task.std)).astype(np.float32)


def _checked_options(cfg: Any) -> tuple[str, float, int | None]:
    """The dataset's name, val_fraction and train_size, each checked (UsageError naming it)."""
    name = _get(cfg, "name", None)
    if not isinstance(name, str) or not name:
        raise UsageError(f"dataset name={name!r} is invalid; valid: {VALID_NAMES}")
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
    return name, val_fraction, train_size


def _test_fraction(cfg: Any) -> float:
    """dataset.test_fraction: the share of a data file's examples carved as its test split."""
    value = _get(cfg, "test_fraction", readers.DEFAULT_TEST_FRACTION)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise UsageError(f"dataset.test_fraction={value!r} must be a number in (0, 1)")
    return float(value)


def _source_info(raw: dict, name: str, source_dtypes: dict[str, str]) -> dict:
    """dataset.info as the loader left it: its own info, the source, dtypes and split sizes."""
    info = {**raw.get("info", {})}
    info.setdefault("source", name)
    info["source_dtypes"] = source_dtypes
    info["raw_sizes"] = {
        s: int(raw[f"y_{s}"].shape[0]) for s in ("train", "val", "test") if f"y_{s}" in raw
    }
    return info


def _train_and_val(
    raw: dict, read_shard: dict | None, val_fraction: float, seed: int, name: str, info: dict
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x, y) train, (x, y) val): the loader's validation split, or one carved from train
    (stratified, by the seed); records where val came from in info["val_source"]."""
    x_train, y_train = raw["x_train"], raw["y_train"]
    if read_shard is not None:  # the loader carved val itself, reading per host
        info["raw_sizes"].update(read_shard.pop("raw_sizes"))
        if read_shard.pop("val_carved"):
            info["raw_sizes"].pop("val", None)
        info["val_source"] = read_shard.pop("val_source")
        return (x_train, y_train), (raw["x_val"], raw["y_val"])
    if "x_val" in raw:
        info["val_source"] = "dataset's own validation split"
        return (x_train, y_train), (raw["x_val"], raw["y_val"])
    n_val = val_count(val_fraction, len(y_train), name)
    order = stratified_order(y_train, rng_for(seed, 101))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    info["val_source"] = f"carved from train (val_fraction={val_fraction}, seed={seed})"
    # A lazy training split stays lazy; val is read (it is held in memory).
    train = (rows(x_train, train_idx), y_train[train_idx])
    return train, (x_train[val_idx], y_train[val_idx])


def _train_subset(
    x: np.ndarray, y: np.ndarray, train_size: int, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """`train_size` training examples, stratified by class."""
    check_train_size(train_size, len(y), name)
    # Prefixes of one stratified order: a smaller train_size is a subset of a larger one.
    keep = np.sort(stratified_order(y, rng_for(seed, 102))[:train_size])
    return rows(x, keep), y[keep]


def _as_vocabulary_ids(
    token_ids: Any, x_train: np.ndarray, x_val: np.ndarray, x_test: np.ndarray, info: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every split's token ids in the vocabulary of the training split; its description goes
    to info["vocabulary"].

    Token ids are categories, not quantities: they get a vocabulary, never normalization. It is
    built from the whole training split (text is never read per host), before any slice.
    """
    vocab = restrict_vocabulary(x_train, token_ids)
    x_train, x_val, x_test = (apply_vocabulary(x, vocab) for x in (x_train, x_val, x_test))
    info["vocabulary"] = vocabulary_info(vocab, {"train": x_train, "val": x_val, "test": x_test})
    info["normalize"] = "skipped: inputs are token ids"
    return x_train, x_val, x_test


def _this_process_part(
    shard: Shard,
    read_shard: dict | None,
    raw: dict,
    x_train: np.ndarray,
    y_train: np.ndarray,
    name: str,
    info: dict,
    task: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, x_rest): this process's part of the training split (sliced here unless the
    loader read only it) and the dropped examples, which the statistics still count;
    info["shard"] describes every process's part (a collective)."""
    if read_shard is None:
        start, stop, kept = shard.plan(len(y_train))
        x_rest = None if is_lazy(x_train) else x_train[kept:]
        read_shard = {
            "start": start,
            "stop": stop,
            "global_size": kept,
            "dropped": len(y_train) - kept,
            "read": "the whole training split (generated or loaded in memory), sliced",
        }
        x_train, y_train = rows(x_train, slice(start, stop)), y_train[start:stop]
    else:
        x_rest = as_inputs(raw["x_train_rest"], name, "train")
    info["shard"] = shard_info(shard, read_shard, y_train, raw["num_classes"], task)
    return x_train, y_train, x_rest


# The training rows float32_rounding reads: enough to meet every feature's range.
ROUNDING_SAMPLE = 10_000


def float32_rounding(raw: Any) -> float | None:
    """For float64 training inputs: the largest change casting them to float32 makes, as a
    share of the feature's spread (standard deviation over the examples); None otherwise.
    Values far from zero that vary little (timestamps, coordinates) lose their variation."""
    x = raw.get("x_train") if isinstance(raw, Mapping) else None
    if not isinstance(x, np.ndarray) or x.dtype != np.float64 or not x.size:
        return None
    x = x[:ROUNDING_SAMPLE].reshape(min(len(x), ROUNDING_SAMPLE), -1)
    spread = np.nanstd(x, axis=0)
    change = np.nanmax(np.abs(x - x.astype(np.float32)), axis=0)
    ratio = np.where(spread > 0, change / np.where(spread > 0, spread, 1.0), 0.0)
    return float(np.max(ratio))


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
    name: str,
    kwargs: dict[str, Any],
    *,
    seed: int,
    data_dir: str | None,
    plan: SplitPlan,
    test_fraction: float = readers.DEFAULT_TEST_FRACTION,
    task: str = tasks.CLASSIFICATION,
    lazy: bool = False,
) -> dict:
    if name in IN_MEMORY:
        return IN_MEMORY[name](kwargs, test_fraction, task)
    if name.endswith(models.IN_PROCESS_SUFFIX):
        raise UsageError(models.in_process_only("data", name))
    if name == "mnist1d":
        return mnist1d_arrays(kwargs)
    if name == "digits":
        _reject_kwargs(name, kwargs)
        return digits_arrays()
    if name == "synthetic":
        return make_synthetic(kwargs, seed=seed, task=task)
    if name.startswith("tfds:"):
        return tfds_arrays(name[len("tfds:") :], kwargs, data_dir, plan, lazy=lazy)
    if readers.is_path(name):
        return readers.read_path(name, kwargs, test_fraction, task, lazy=lazy)
    if ":" in name:
        return custom_arrays(name, kwargs)
    raise UsageError(f"dataset name={name!r} is unknown; valid: {VALID_NAMES}")


def _reject_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise UsageError(f"dataset {name} takes no kwargs, got {', '.join(sorted(kwargs))}")
