"""Text as token ids: the tokenizer, the vocabulary and its file."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from workflow.data.cache import cache_dir
from workflow.files import write_atomically

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
        write_atomically(path, "w", lambda f: f.write(text))
    except OSError as e:
        warnings.warn(f"could not write vocabulary file {path}: {e}", stacklevel=3)
        return None, digest
    return str(path), digest
