"""Datasets for the workflow: loading, validation, splits, normalization and batch order.

Modules: `dataset` (the Dataset and the loading pipeline), `sources` (MNIST-1D, digits, TFDS, user
loaders, data handed over in Python), `readers` (a user's files: .npz, .npy, CSV, Parquet, image
folders), `text` (tokens and vocabulary), `validation`, `normalization`, `batching` (example
order), `shards` (per-host data), `synthetic` (generators with a known irreducible error),
`pipeline` (config.dataset.pipeline="grain": training batches read on the host and streamed),
`lazy` (with the grain pipeline, a training split of files or records read when indexed).

Input conventions: images (N, H, W, C), sequences (N, T, F), tabular (N, D); x is float32 and y
int32 class indices. ``load_dataset`` runs: raw load -> validate -> carve val -> subset train ->
normalize all splits with train statistics.

Per-host data (config.parallel.data="per_host", the default with several processes; see
workflow/engine/distributed.py): ``load_dataset(..., shard=Shard(...))`` carves val from the whole
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

from workflow.data.batching import batch_indices, block_batch_indices
from workflow.data.cache import CACHE_ENV, cache_dir
from workflow.data.dataset import Dataset, default_config, load_dataset
from workflow.data.lazy import LazyInputs, bounded, is_lazy
from workflow.data.normalization import (
    STD_FLOOR,
    apply_normalization,
    combined_normalization,
    compute_normalization,
)
from workflow.data.shards import Shard, process_shard
from workflow.data.text import build_vocabulary, encode_tokens, tokenize
from workflow.data.validation import KINDS

__all__ = [
    "CACHE_ENV",
    "KINDS",
    "STD_FLOOR",
    "Dataset",
    "LazyInputs",
    "Shard",
    "apply_normalization",
    "batch_indices",
    "block_batch_indices",
    "bounded",
    "build_vocabulary",
    "cache_dir",
    "combined_normalization",
    "compute_normalization",
    "default_config",
    "encode_tokens",
    "is_lazy",
    "load_dataset",
    "process_shard",
    "tokenize",
]
