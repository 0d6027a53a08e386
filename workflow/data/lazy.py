"""A training split read lazily: its inputs decoded when indexed, never all at once.

With dataset.pipeline="grain", the training split of an image folder, a TFDS dataset or an
array_record file is loaded as a `LazyInputs` in Dataset.x_train (its labels, small, stay an
array in y_train): the records (image files, TFDS records, array_record records) and the
example shape are kept, and an example is read, decoded, resized and normalized only when
indexed. Indexing reads like an array's: `x[i]` is one decoded example, `x[a:b]`, `x[indices]`
or `x[mask]` the stacked examples; `take(indices)` is the lazy subset (val carving, the
train_size subset and per-host shards pick records without decoding them); `sample(n)` a
seeded, bounded sample of decoded examples (what the normalization statistics and the input
checks read).

Everything that reads the training split does so by slices or index batches (the grain
pipeline's workers, the evaluator's batches, layer statistics, probes), so memory stays one
batch. Where a whole array is asked for (`np.asarray(x)`, as the lr range test and batched
trials do, which place the split on the devices), it is decoded whole, as the memory
pipeline would hold it.

A reader (`ExampleReader`) says how one record is read: it is picklable (grain's worker
processes read with it) and every problem with a record is a UsageError naming it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

# Examples the normalization statistics of a lazy training split are computed from: a seeded
# sample, so they never need the split decoded whole (the memory pipeline uses every example).
NORMALIZATION_SAMPLE = 2048
# Examples of a lazy training split the input checks (diagnostics) read.
CHECK_SAMPLE = 1024


class ExampleReader(Protocol):
    """How one record of a lazy split is read: `read(record)`, its decoded (float32) input."""

    def __len__(self) -> int: ...

    def read(self, record: int) -> np.ndarray: ...

    def describe(self) -> dict: ...


@dataclasses.dataclass(frozen=True, eq=False)
class LazyInputs:
    """Array-like inputs (N, *example_shape) float32 whose examples are read when indexed."""

    reader: Any  # ExampleReader
    records: np.ndarray  # the reader's record of each example, in order
    example_shape: tuple[int, ...]
    normalization: dict | None = None  # applied to every example as it is read

    # --------------------------------------------------------------------- array-like

    def __len__(self) -> int:
        return len(self.records)

    @property
    def shape(self) -> tuple[int, ...]:
        """(examples, *example_shape), as the decoded array's."""
        return (len(self.records), *self.example_shape)

    @property
    def dtype(self) -> np.dtype:
        """float32, as every decoded example."""
        return np.dtype(np.float32)

    @property
    def ndim(self) -> int:
        """Dims of the decoded array."""
        return 1 + len(self.example_shape)

    @property
    def size(self) -> int:
        """Values of the decoded array."""
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes the decoded array would take (it is never held)."""
        return self.size * self.dtype.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        """The decoded example at an int; the stacked examples of a slice, indices or mask."""
        if isinstance(key, int | np.integer):
            return self._read(int(self.records[key]))
        records = self.records[key]
        if records.ndim != 1:
            raise IndexError(f"a lazy split is indexed by an int, a slice or 1-d indices: {key!r}")
        out = np.empty((len(records), *self.example_shape), np.float32)
        for i, record in enumerate(records):
            out[i] = self._read(int(record))
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every example decoded (what the memory pipeline would hold)."""
        x = self[:]
        return x if dtype is None else x.astype(dtype)

    def _read(self, record: int) -> np.ndarray:
        x = np.asarray(self.reader.read(record), np.float32)
        if x.shape != self.example_shape:
            raise _shape_error(self.reader, record, x.shape, self.example_shape)
        if self.normalization is not None:
            mean = np.asarray(self.normalization["mean"], np.float32)
            std = np.asarray(self.normalization["std"], np.float32)
            x = (x - mean) / std
        return x

    # --------------------------------------------------------------------- lazy

    def take(self, indices: Any) -> LazyInputs:
        """The examples at `indices` (or a slice), still lazy: nothing is read."""
        return dataclasses.replace(self, records=np.asarray(self.records[indices], np.int64))

    def sample_indices(self, n: int, seed: int = 0) -> np.ndarray:
        """All of 0..len-1, or a sorted seeded `n` of them."""
        if len(self) <= n:
            return np.arange(len(self))
        return np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """At most `n` examples, decoded: a sorted seeded sample (all of them when fewer)."""
        return self[self.sample_indices(n, seed)]

    def normalized(self, normalization: dict | None) -> LazyInputs:
        """These inputs with `normalization` ((x - mean) / std per channel) applied as read."""
        return dataclasses.replace(self, normalization=normalization)

    def describe(self) -> dict:
        """What the split reads, for dataset.info and the fingerprint (JSON)."""
        return {**self.reader.describe(), "examples": len(self)}

    def fingerprint_bytes(self) -> bytes:
        """What identifies these inputs without reading them: the reader's records (names,
        sizes), this split's choice of them and the example shape."""
        described = repr((self.reader.describe(), self.example_shape)).encode()
        identity = getattr(self.reader, "identity", None)
        extra = identity() if identity is not None else b""
        return described + extra + np.ascontiguousarray(self.records).tobytes()


def is_lazy(x: Any) -> bool:
    """Whether `x` is a lazy split's inputs (not an array)."""
    return isinstance(x, LazyInputs)


def rows(x: Any, indices: Any) -> Any:
    """x's examples at `indices`: a lazy subset of lazy inputs, else the indexed array."""
    return x.take(indices) if is_lazy(x) else x[indices]


def bounded(x: Any, n: int = CHECK_SAMPLE, seed: int = 0) -> np.ndarray:
    """x itself (an array), or a decoded sample of `n` of a lazy split's examples."""
    return x.sample(n, seed) if is_lazy(x) else x


def _shape_error(reader: Any, record: int, got: tuple, expected: tuple) -> Exception:
    from workflow.errors import UsageError

    name = reader.name(record) if hasattr(reader, "name") else f"record {record}"
    return UsageError(
        f"{name} has shape {got} but the training split's examples have {expected}; every "
        "example must have the same shape"
    )
