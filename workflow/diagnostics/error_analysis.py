"""Error analysis: which classes the model gets wrong, what it takes them for, and its most
confident mistakes, on the train and the validation split side by side.

The functions below take numpy arrays (labels, predicted probabilities) and return numbers, so
each is tested on hand-made arrays; `analyze` runs them on a trained state, `findings` says what
the errors suggest (a class the model fails, a class with too few examples, label noise), and
the plot functions draw what a person would look at.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from workflow import reporting
from workflow.diagnostics.findings import Finding

# At most this many examples of a split are analyzed (a seeded random subset of larger splits):
# enough for per-class errors to a few points on ten classes, cheap on the CPU.
MAX_EXAMPLES = 4000
# Examples in each split's worst-examples grid, and confusions listed per split.
WORST_EXAMPLES = 16
TOP_CONFUSIONS = 5
# Worst examples per split in the tabular table, and features shown of each.
TABLE_EXAMPLES = 8
TABLE_FEATURES = 8
# summary.json keeps (and the plot draws) the confusion matrix up to this many classes: C^2
# numbers, 40 kB of JSON a split at 100 classes; beyond, the top confusions stand for it.
MAX_MATRIX_CLASSES = 100

# Thresholds of the findings. A class is "concentrated" when a one-sided Fisher exact test
# (hypergeometric tail) of its rate against the other classes' is significant at ALPHA,
# Bonferroni-corrected over every test of its detector (classes x splits x groupings by label
# and by prediction): a model whose classes truly share one error rate trips a detector by
# chance in at most 1 run in 100.
ALPHA = 0.01
FAMILIES = 4  # test families per detector: two splits, each grouped by label and by prediction
# Effect-size floors on top of significance: classes differ in difficulty, and a difference a
# person would not act on (under twice the overall rate, or under 5 points above it) stays in
# the per-class table rather than becoming a finding, however large the split.
MIN_RATIO = 2.0
MIN_GAP = 0.05
MIN_ERRORS = 3  # fewer errors than this are never a pattern
# "Far fewer training examples": at most half the median class's count.
FEW_RATIO = 0.5
# A confident error gives the wrong class at least this probability: a calibrated model is
# wrong at 90% confidence at most 1 time in 10, so many of them point at the labels. A model
# that is rarely that sure (early in training) is judged against itself instead: the threshold
# drops to the 25th percentile of its correct predictions' confidence.
CONFIDENCE = 0.9
CORRECT_QUANTILE = 0.25
# Label noise: at least this many confident errors in the class, their share of its examples
# at least 2 points above the split's, and at least a third of the class's errors confident:
# mislabelled examples look like their true class and are predicted about as surely as correct
# ones, while a hard class fails near the boundary, less sure than its typical correct answer.
MIN_CONFIDENT = 5
CONFIDENT_GAP = 0.02
CONFIDENT_SHARE = 1 / 3

# "Inputs of one kind that fail": each example is described by a few scalars of its inputs as
# the model sees them, each split into INPUT_BINS equal-count bins, and a bin whose error is
# far above the split's is tested like a class (flagged_classes, the same ALPHA and floors).
INPUT_BINS = 4
INPUT_DESCRIPTORS = ("mean", "std", "max_abs")
SPLITS = ("train", "val")
# Data kinds whose worst examples are drawn (image tiles, sequence plots); others get a table.
DRAWN_KINDS = ("image", "sequence")


# ----------------------------------------------------------------------------- predictions


def make_predict(task, probabilities: bool = True) -> Callable:
    """A jitted (params, model_state, x) -> the model's outputs in eval mode, as class
    probabilities (softmax) or raw (a regression's or multi-label task's)."""

    def predict(params, model_state, x):
        outputs = nnx.merge(task.eval_graphdef, params, model_state)(x).astype(jnp.float32)
        return jax.nn.softmax(outputs, axis=-1) if probabilities else outputs

    return jax.jit(predict)


def predict_in_batches(predict: Callable, state, x: np.ndarray, batch_size: int) -> np.ndarray:
    """`predict`'s (N, K) outputs over `x` in batches all padded to `batch_size` (one
    compile)."""
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        n = len(xb)
        if n < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - n, *xb.shape[1:]), xb.dtype)])
        out.append(np.asarray(predict(state.params, state.model_state, xb))[:n])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def subset_indices(n: int, max_examples: int = MAX_EXAMPLES, seed: int = 0) -> np.ndarray:
    """All of 0..n-1, or a sorted seeded random `max_examples` of them."""
    if n <= max_examples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))


# ----------------------------------------------------------------------------- numbers


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    flat = np.asarray(labels, np.int64) * num_classes + np.asarray(predicted, np.int64)
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_error(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(error rate, example count) of each true class; NaN error for a class with no examples."""
    counts = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        errors = 1.0 - np.diag(matrix) / counts
    return np.where(counts > 0, errors, np.nan), counts


def top_confusions(matrix: np.ndarray, k: int = TOP_CONFUSIONS) -> list[dict]:
    """The `k` most frequent (true, predicted) mistakes, with their share of the true class."""
    off = np.array(matrix, copy=True)
    np.fill_diagonal(off, 0)
    counts = matrix.sum(axis=1)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = []
    for flat in order:
        true, predicted = divmod(int(flat), matrix.shape[1])
        if off[true, predicted] == 0:
            break
        pairs.append(
            {
                "true": true,
                "predicted": predicted,
                "count": int(off[true, predicted]),
                "rate": float(off[true, predicted] / counts[true]),
            }
        )
    return pairs


def most_confident_errors(
    labels: np.ndarray, probs: np.ndarray, k: int = WORST_EXAMPLES
) -> np.ndarray:
    """Positions of the `k` wrong predictions with the highest predicted-class probability."""
    predicted = probs.argmax(axis=-1)
    confidence = probs.max(axis=-1)
    wrong = np.flatnonzero(predicted != labels)
    return wrong[np.argsort(-confidence[wrong], kind="stable")[:k]]


def excess_test(hits: np.ndarray, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class: its hit rate and the one-sided Fisher exact p-value of it exceeding the rest's.

    The p-value is P(X >= hits[c]) for X hypergeometric: the class's examples drawn from the
    whole split, with the split's hits fixed (NaN for a class with no examples).
    """
    from scipy.stats import hypergeom

    hits, totals = np.asarray(hits, np.int64), np.asarray(totals, np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(totals > 0, hits / totals, np.nan)
    p = hypergeom.sf(hits - 1, totals.sum(), hits.sum(), totals)
    return rates, np.where(totals > 0, p, np.nan)


def flagged_classes(
    hits: np.ndarray, totals: np.ndarray, min_hits: int, min_gap: float, families: int = 1
) -> list[int]:
    """Classes whose rate is significantly (ALPHA, Bonferroni over the classes and `families`
    such tests) and materially above the split's: at least MIN_RATIO times and `min_gap` above
    the overall rate, with `min_hits` hits."""
    hits, totals = np.asarray(hits), np.asarray(totals)
    tested = int(np.sum(totals > 0))
    if tested < 2 or totals.sum() == 0:
        return []
    overall = hits.sum() / totals.sum()
    rates, p = excess_test(hits, totals)
    flagged = (
        (totals > 0)
        & (hits >= min_hits)
        & (p <= ALPHA / (tested * families))
        & (rates >= MIN_RATIO * overall)
        & (rates - overall >= min_gap)
    )
    # The most significant first: the finding's message names the first.
    return [int(c) for c in np.flatnonzero(flagged)[np.argsort(p[flagged], kind="stable")]]


def confidence_threshold(correct_confidence: np.ndarray) -> float:
    """The probability from which a wrong prediction counts as confident: CONFIDENCE, or lower
    for a model that is less sure of most of its correct predictions."""
    if not len(correct_confidence):
        return CONFIDENCE
    return min(CONFIDENCE, float(np.quantile(correct_confidence, CORRECT_QUANTILE)))


def split_analysis(
    labels: np.ndarray,
    probs: np.ndarray,
    num_classes: int,
    indices: np.ndarray | None = None,
    total: int | None = None,
) -> dict:
    """The JSON numbers of one split: error, per-class error and counts, confusions, worst.

    `indices` are the analyzed examples' positions in the split (for a subset), `total` the
    split's size; worst examples are named by their position in the split.
    """
    labels = np.asarray(labels)
    indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
    predicted = probs.argmax(axis=-1) if len(labels) else np.zeros(0, np.int64)
    confidence = probs.max(axis=-1) if len(labels) else np.zeros(0)
    matrix = confusion_matrix(labels, predicted, num_classes)
    errors, counts = per_class_error(matrix)
    wrong = predicted != labels
    threshold = confidence_threshold(confidence[~wrong])
    sure = wrong & (confidence >= threshold)
    predicted_counts = matrix.sum(axis=0)
    worst = most_confident_errors(labels, probs) if len(labels) else np.zeros(0, np.int64)
    return {
        "examples": int(len(labels)),
        "total": int(len(labels) if total is None else total),
        "error": float(wrong.mean()) if len(labels) else None,
        "confidence_threshold": threshold,
        "class_counts": [int(c) for c in counts],
        "class_errors": [None if math.isnan(e) else float(e) for e in errors],
        "class_error_counts": [int(c) for c in counts - np.diag(matrix)],
        # Confident errors by label and by prediction: noise that gives other classes' examples
        # label c shows in the first, noise that scatters class c's labels in the second.
        "confident_errors": [int(c) for c in np.bincount(labels[sure], minlength=num_classes)],
        "predicted_counts": [int(c) for c in predicted_counts],
        "predicted_error_counts": [int(c) for c in predicted_counts - np.diag(matrix)],
        "confident_errors_by_prediction": [
            int(c) for c in np.bincount(predicted[sure], minlength=num_classes)
        ],
        "confusion_matrix": matrix.tolist() if num_classes <= MAX_MATRIX_CLASSES else None,
        "top_confusions": top_confusions(matrix),
        "worst_examples": [
            {
                "index": int(indices[i]),
                "true": int(labels[i]),
                "predicted": int(predicted[i]),
                "confidence": float(confidence[i]),
                "true_probability": float(probs[i, labels[i]]),
            }
            for i in worst
        ],
    }


# ----------------------------------------------------------------------------- findings


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _main_confusion(split: dict, cls: int, by: str = "label") -> int | None:
    """The class that examples labelled `cls` are most often predicted as (by="label"), or the
    label most often carried by examples predicted as `cls` (by="prediction")."""
    if split["confusion_matrix"] is not None:
        matrix = np.array(split["confusion_matrix"])
        line = matrix[cls] if by == "label" else matrix[:, cls]
        line[cls] = 0
        return int(line.argmax()) if line.any() else None
    mine, other = ("true", "predicted") if by == "label" else ("predicted", "true")
    pairs = [p for p in split["top_confusions"] if p[mine] == cls]
    return pairs[0][other] if pairs else None


# Per grouping: the split's keys of (errors, examples) per class. By label: the class's
# examples are misclassified; by prediction: what the model calls the class is often another.
ERROR_GROUPINGS = {
    "label": ("class_error_counts", "class_counts"),
    "prediction": ("predicted_error_counts", "predicted_counts"),
}


def _concentrated(split: dict, grouping: str) -> list[int]:
    errors_key, totals_key = ERROR_GROUPINGS[grouping]
    return flagged_classes(
        np.asarray(split[errors_key]), np.asarray(split[totals_key]), MIN_ERRORS, MIN_GAP, FAMILIES
    )


def _group_rate(split: dict, grouping: str, cls: int) -> float | None:
    """The error rate of one class in a grouping (None without examples)."""
    errors_key, totals_key = ERROR_GROUPINGS[grouping]
    n = split[totals_key][cls]
    return split[errors_key][cls] / n if n else None


# Per grouping: the split's keys of (confident errors, examples, errors) per class.
NOISE_GROUPINGS = {
    "label": ("confident_errors", "class_counts", "class_error_counts"),
    "prediction": ("confident_errors_by_prediction", "predicted_counts", "predicted_error_counts"),
}


def _label_noise(split: dict) -> list[tuple[str, int]]:
    """(grouping, class) pairs whose confident errors are concentrated, most significant first
    within a grouping, examples grouped by label first."""
    out = []
    for grouping, (hits_key, totals_key, errors_key) in NOISE_GROUPINGS.items():
        confident, errors = np.asarray(split[hits_key]), np.asarray(split[errors_key])
        flagged = flagged_classes(
            confident, np.asarray(split[totals_key]), MIN_CONFIDENT, CONFIDENT_GAP, FAMILIES
        )
        out += [(grouping, c) for c in flagged if confident[c] >= CONFIDENT_SHARE * errors[c]]
    return out


def _rate(hits: Sequence[int], totals: Sequence[int]) -> float:
    return float(sum(hits) / sum(totals)) if sum(totals) else 0.0


def findings(
    analysis: dict, train_class_counts: Sequence[int], underfit: bool = False
) -> list[Finding]:
    """What the errors suggest: label noise, a class with too few examples, a failing class.

    Each class is explained once, by the most specific finding: label noise, then too few
    training examples, then "the model fails this class" (class_error_concentrated). With
    `underfit` (the model does not fit its training data: the evaluate stage's verdict), the
    confident errors read as label noise may be the model's own confusions: at most `info`.
    """
    splits = {s: analysis["splits"][s] for s in SPLITS if analysis["splits"].get(s)}
    out: list[Finding] = []
    explained: set[int] = set()

    noisy = {s: _label_noise(split) for s, split in splits.items()}
    noisy_classes = list(dict.fromkeys(c for s in SPLITS for _, c in noisy.get(s, [])))
    if noisy_classes:
        noise = _label_noise_finding(splits, noisy, noisy_classes)
        if underfit:
            noise = dataclasses.replace(
                noise,
                severity="info",
                message=noise.message + " (the model underfits: these confident errors may be "
                "its own confusions of similar classes, not wrong labels)",
            )
        out.append(noise)
        explained.update(noisy_classes)

    concentrated = {
        (s, grouping): _concentrated(split, grouping)
        for s, split in splits.items()
        for grouping in ERROR_GROUPINGS
    }

    def failing_classes(grouping: str) -> list[int]:
        found = (c for s in ("val", "train") for c in concentrated.get((s, grouping), []))
        return [c for c in dict.fromkeys(found) if c not in explained]

    counts = np.asarray(train_class_counts)
    median = float(np.median(counts[counts > 0])) if np.any(counts > 0) else 0.0
    few = [c for c in failing_classes("label") if counts[c] <= FEW_RATIO * median]
    if few:
        out.append(_few_examples_finding(splits, concentrated, few, counts, median))
        explained.update(few)

    for grouping in ERROR_GROUPINGS:
        failing = failing_classes(grouping)
        if failing:
            out.append(_failing_class_finding(splits, concentrated, grouping, failing))
            break
    inputs = input_finding(splits)
    return out + ([inputs] if inputs else [])


def _label_noise_finding(
    splits: dict[str, dict], noisy: dict[str, list], noisy_classes: list[int]
) -> Finding:
    """`label_noise_suspected`, shown on the first noisy class of train (else val)."""
    split_name = "train" if noisy.get("train") else "val"
    split = splits[split_name]
    grouping, cls = noisy[split_name][0]
    hits_key, totals_key, errors_key = NOISE_GROUPINGS[grouping]
    k, n = split[hits_key][cls], split[totals_key][cls]
    rest = _rate(
        [h for i, h in enumerate(split[hits_key]) if i != cls],
        [t for i, t in enumerate(split[totals_key]) if i != cls],
    )
    other = _main_confusion(split, cls, grouping)
    sure = f">= {split['confidence_threshold']:.0%}"
    if grouping == "label":
        message = (
            f"{k} of {n} {split_name} examples labelled class {cls} ({_pct(k / n)}) are "
            f"predicted as another class with {sure} confidence"
            + (f", most often class {other}" if other is not None else "")
            + f", against {_pct(rest)} of the other classes' examples: examples of other "
            f"classes may carry the label {cls}"
        )
        look = f"the {split_name} examples labelled {cls} that the model assigns elsewhere"
    else:
        message = (
            f"{k} of the {n} {split_name} examples the model predicts as class {cls} "
            f"({_pct(k / n)}) carry another label while it is {sure} sure"
            + (f", most often {other}" if other is not None else "")
            + f", against {_pct(rest)} for the other predicted classes: examples of class "
            f"{cls} may carry other classes' labels"
        )
        look = f"the {split_name} examples the model confidently calls {cls}"
    return Finding(
        id="label_noise_suspected",
        severity="warning",
        message=message,
        evidence={
            "class": cls,
            "grouped_by": grouping,
            "split": split_name,
            "confident_errors": k,
            "examples": n,
            "rate": k / n,
            "other_classes_rate": rest,
            "errors": split[errors_key][cls],
            "confidence_threshold": split["confidence_threshold"],
            "other_class": other,
            "classes": noisy_classes,
        },
        suggestions=[
            f"look at {look} (plots/worst_examples.png; summary.json error_analysis "
            "worst_examples gives their indices) and relabel or drop the wrong ones",
            "if the labels come from a rule or a source that confuses these classes, fix it there",
            "while labels stay noisy: label smoothing or a noise-robust loss, and stop "
            "early before the model memorizes the wrong labels",
        ],
    )


def _few_examples_finding(
    splits: dict[str, dict],
    concentrated: dict,
    few: list[int],
    counts: np.ndarray,
    median: float,
) -> Finding:
    """`class_too_few_examples`, shown on the failing class with the fewest training examples."""
    cls = min(few, key=lambda c: counts[c])
    split_name = "val" if cls in concentrated.get(("val", "label"), []) else "train"
    split = splits[split_name]
    return Finding(
        id="class_too_few_examples",
        severity="warning",
        message=(
            f"class {cls} has {int(counts[cls]):,} training examples against a median "
            f"of {median:,.0f} per class, and its {split_name} error is "
            f"{_pct(split['class_errors'][cls])} against {_pct(split['error'])} overall"
        ),
        evidence={
            "class": cls,
            "train_examples": int(counts[cls]),
            "median_train_examples": median,
            "split": split_name,
            "class_error": split["class_errors"][cls],
            "overall_error": split["error"],
            "classes": few,
        },
        suggestions=[
            f"collect more examples of class {cls} (about {median:,.0f}, the median class's count)",
            f"oversample class {cls} or weight its loss by the inverse class frequency",
            f"augment class {cls}'s examples to multiply the few there are",
        ],
    )


def describe_inputs(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per example, the INPUT_DESCRIPTORS of its inputs as fed: level, spread and extremes."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    return {
        "mean": flat.mean(axis=1),
        "std": flat.std(axis=1),
        "max_abs": np.abs(flat).max(axis=1),
    }


def input_bins(x: np.ndarray, wrong: np.ndarray, bins: int = INPUT_BINS) -> dict[str, dict]:
    """For each descriptor: bin edges (quantiles), examples and errors per equal-count bin."""
    out = {}
    wrong = np.asarray(wrong, bool)
    if len(wrong) < 2 * bins:
        return out
    for name, values in describe_inputs(x).items():
        # Rank-based bins: equal counts even when many examples share a value.
        order = np.argsort(values, kind="stable")
        bin_of = np.empty(len(values), np.int64)
        bin_of[order] = np.arange(len(values)) * bins // len(values)
        edges = [float(values[order[(len(values) * b) // bins]]) for b in range(1, bins)]
        out[name] = {
            "edges": edges,
            "examples": [int(v) for v in np.bincount(bin_of, minlength=bins)],
            "errors": [int(v) for v in np.bincount(bin_of[wrong], minlength=bins)],
        }
    return out


def input_finding(splits: dict[str, dict]) -> Finding | None:
    """`input_errors_concentrated`: the errors of a split pile up in inputs of one kind."""
    flagged = []
    families = len(splits) * len(INPUT_DESCRIPTORS)
    for split_name in ("val", "train"):
        for name, table in (splits.get(split_name, {}).get("input_bins") or {}).items():
            hits, totals = np.asarray(table["errors"]), np.asarray(table["examples"])
            for b in flagged_classes(hits, totals, MIN_ERRORS, MIN_GAP, families):
                flagged.append((split_name, name, b, hits[b] / totals[b]))
    if not flagged:
        return None
    split_name, name, b, rate = flagged[0]
    split, table = splits[split_name], splits[split_name]["input_bins"][name]
    edges, last = table["edges"], len(table["examples"]) - 1
    where = (
        f"below {edges[0]:.3g}"
        if b == 0
        else f"above {edges[-1]:.3g}"
        if b == last
        else f"between {edges[b - 1]:.3g} and {edges[b]:.3g}"
    )
    quarter = {0: "lowest", last: "highest"}.get(b, f"bin {b + 1} of {last + 1}")
    return Finding(
        id="input_errors_concentrated",
        severity="info",
        message=(
            f"{split_name} inputs whose per-example {name} lies {where} (the {quarter} "
            f"{1 / (last + 1):.0%} of the split) have {_pct(rate)} error against "
            f"{_pct(split['error'])} overall: the model fails inputs of one kind"
        ),
        evidence={
            "split": split_name,
            "descriptor": name,
            "bin": int(b),
            "bin_error": float(rate),
            "overall_error": split["error"],
            "edges": edges,
            "flagged": [
                {"split": s, "descriptor": d, "bin": int(k), "error": float(r)}
                for s, d, k, r in flagged
            ],
        },
        suggestions=[
            f"look at the {split_name} examples with {name} {where}: what they share (lighting, "
            "scale, length, a sensor or source) is the kind the model fails",
            "collect or augment more training examples of that kind",
            "if such inputs are out of scope (corrupt, blank, mis-scaled), filter them in the "
            "data pipeline",
        ],
    )


def _failing_class_finding(
    splits: dict, concentrated: dict, grouping: str, failing: list[int]
) -> Finding:
    """class_error_concentrated for the first of `failing`, grouped by label or prediction."""
    cls = failing[0]
    split_name = "val" if cls in concentrated.get(("val", grouping), []) else "train"
    split, train = splits[split_name], splits.get("train")
    on_train = train is not None and cls in concentrated.get(("train", grouping), [])
    other = _main_confusion(split, cls, grouping)
    rate = _group_rate(split, grouping, cls)
    seen = (
        f"; on the training data {_pct(_group_rate(train, grouping, cls))}"
        f" against {_pct(train['error'])}"
        if train is not None and split_name == "val"
        else ""
    )
    errors_key, totals_key = ERROR_GROUPINGS[grouping]
    if grouping == "label":
        message = (
            f"class {cls}'s {split_name} error is {_pct(rate)} against {_pct(split['error'])} "
            f"overall{seen}"
            + (f"; it is most often taken for class {other}" if other is not None else "")
        )
        if on_train:
            suggestions = [
                f"the model fails class {cls} on data it has seen too: look at its worst "
                "examples (plots/worst_examples.png) for inputs of one kind (lighting, length, "
                "a value range) or labels that look wrong",
                f"if class {cls}'s inputs are hard to tell from "
                + (f"class {other}'s" if other is not None else "another class's")
                + ", a bigger model or an architecture that sees the difference",
            ]
        else:
            suggestions = [
                f"the model fits class {cls}'s training examples but not new ones: collect more "
                f"varied examples of class {cls}, or augment them",
                "compare the train and val worst examples (plots/worst_examples.png) for a kind "
                "of input the training set lacks",
            ]
        suggestions.append(f"weight class {cls}'s loss higher if its mistakes cost more")
    else:
        message = (
            f"{_pct(rate)} of the {split_name} examples the model predicts as class {cls} "
            f"belong to another class, against {_pct(split['error'])} overall{seen}"
            + (f"; most often class {other}" if other is not None else "")
            + f": the model takes other classes' inputs for class {cls}"
        )
        suggestions = [
            f"look at the examples predicted as {cls} but labelled otherwise (column {cls} of "
            "the confusion matrix, plots/confusion_matrix.png) for what draws them there",
            f"if class {cls} is much larger than the others, the model leans on its prior: "
            "balance the classes or weight the loss by the inverse class frequency",
            "if those inputs look like class "
            f"{cls}, their labels may be wrong; if not, a bigger model or more training",
        ]
    return Finding(
        id="class_error_concentrated",
        severity="info",
        message=message,
        evidence={
            "class": cls,
            "grouped_by": grouping,
            "split": split_name,
            "class_error": rate,
            "overall_error": split["error"],
            "examples": split[totals_key][cls],
            "errors": split[errors_key][cls],
            "also_on_train": on_train,
            "other_class": other,
            "classes": failing,
        },
        suggestions=suggestions,
    )


# ----------------------------------------------------------------------------- running


def analyze(
    task, state, dataset, batch_size: int, max_examples: int = MAX_EXAMPLES
) -> tuple[dict, dict[str, np.ndarray]]:
    """The train and val analyses of `state`, and each split's worst examples' raw inputs.

    Predictions run in eval mode, jitted once (every batch padded to one shape). The second
    value maps split -> inputs (normalization undone) aligned with its worst_examples; for
    tabular data each worst example also keeps its first TABLE_FEATURES values, so a report
    can show them from summary.json alone.
    """
    predict = make_predict(task)
    sizes = [min(len(dataset.split(s)[1]), max_examples) for s in SPLITS]
    batch = max(1, min(batch_size, max(sizes)))
    splits, worst_inputs = {}, {}
    for split in SPLITS:
        x, y = dataset.split(split)
        if not len(y):
            continue
        idx = subset_indices(len(y), max_examples)
        probs = predict_in_batches(predict, state, x[idx], batch)
        result = split_analysis(y[idx], probs, dataset.num_classes, idx, len(y))
        result["input_bins"] = input_bins(x[idx], probs.argmax(axis=-1) != y[idx])
        positions = [w["index"] for w in result["worst_examples"]]
        raw = raw_inputs(x[positions], dataset.normalization)
        if dataset.kind == "tabular":
            for w, values in zip(result["worst_examples"], raw, strict=True):
                w["inputs"] = [float(v) for v in np.ravel(values)[:TABLE_FEATURES]]
        splits[split], worst_inputs[split] = result, raw
    analysis = {
        "max_examples": max_examples,
        "num_features": int(np.prod(dataset.input_shape)),
        "splits": splits,
    }
    return analysis, worst_inputs


def raw_inputs(x: np.ndarray, normalization: dict | None) -> np.ndarray:
    """Inputs as the data holds them: the per-channel normalization undone."""
    if not normalization:
        return np.asarray(x, np.float32)
    mean = np.asarray(normalization["mean"], np.float32)
    std = np.asarray(normalization["std"], np.float32)
    return np.asarray(x, np.float32) * std + mean


# ----------------------------------------------------------------------------- plots


def plot_confusion(analysis: dict, title: str = ""):
    """Row-normalized confusion matrices, train | val, counts written in small matrices."""
    from workflow.reporting.plots import plt

    splits = [(s, analysis["splits"][s]) for s in SPLITS if s in analysis["splits"]]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 4.6), squeeze=False)
    for ax, (name, split) in zip(axes[0], splits, strict=True):
        if split["confusion_matrix"] is None:
            ax.text(0.5, 0.5, "too many classes to draw", ha="center", va="center")
            ax.set_axis_off()
            ax.set_title(f"{name}: error {_pct(split['error'])}", fontsize=10)
            continue
        matrix = np.asarray(split["confusion_matrix"], np.float64)
        counts = matrix.sum(axis=1, keepdims=True)
        rates = np.divide(matrix, counts, out=np.zeros_like(matrix), where=counts > 0)
        image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        c = len(matrix)
        if c <= 12:
            for i in range(c):
                for j in range(c):
                    if matrix[i, j]:
                        ax.text(
                            j,
                            i,
                            f"{int(matrix[i, j])}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black",
                        )
        if c <= 30:
            ax.set_xticks(range(c))
            ax.set_yticks(range(c))
            ax.tick_params(labelsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(
            f"{name}: error {_pct(split['error'])} on {split['examples']:,} examples", fontsize=10
        )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if title:
        fig.suptitle(title)
    return fig


def _tile(example: np.ndarray) -> np.ndarray:
    """One image (H, W, C) as an (H, W) or (H, W, 3) array in [0, 1] for display."""
    image = example if example.shape[-1] == 3 else example[..., 0]
    lo, hi = float(image.min()), float(image.max())
    return (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)


def _grid_axes(ax, rows: int, cols: int) -> None:
    """Set up one axes as a grid of rows x cols unit cells, row 0 at the top."""
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def plot_worst_examples(
    analysis: dict, worst_inputs: dict[str, np.ndarray], kind: str, title: str = ""
):
    """The most confidently wrong examples of train | val, drawn for their kind: image tiles or
    sequence line plots, each with its true and predicted class (kinds in DRAWN_KINDS; tabular
    data gets a table in the report instead).

    `worst_inputs` maps split -> the inputs of its worst_examples, in their order."""
    from workflow.reporting.plots import plt

    cols = 4
    splits = [s for s in SPLITS if s in analysis["splits"]]
    rows = max(
        [math.ceil(len(analysis["splits"][s]["worst_examples"]) / cols) for s in splits] + [1]
    )
    fig, axes = plt.subplots(
        1, len(splits), figsize=(4.6 * len(splits), 1.35 * rows + 0.9), squeeze=False
    )
    # One axes per split, cells laid out inside it: 32 small axes would be slow to draw.
    for ax, name in zip(axes[0], splits, strict=True):
        worst = analysis["splits"][name]["worst_examples"]
        _grid_axes(ax, rows, cols)
        ax.set_title(
            f"{name}: most confident mistakes\ntrue → predicted (confidence), #example",
            fontsize=9,
        )
        if not worst:
            ax.text(cols / 2, 0.5, "no mistakes", ha="center", va="center")
        for k, w in enumerate(worst):
            r, c = divmod(k, cols)
            example = worst_inputs[name][k]
            # Each cell spans [c, c+1) x [r, r+1); the drawing keeps 0.3 of it for its caption.
            if kind == "image":
                ax.imshow(
                    _tile(example),
                    cmap="gray",
                    extent=(c + 0.1, c + 0.9, r + 0.72, r + 0.05),
                    interpolation="nearest",
                    aspect="auto",
                )
            else:
                seq = np.asarray(example, np.float64).reshape(len(example), -1)[:, :4]
                lo, hi = float(seq.min()), float(seq.max())
                scaled = (seq - lo) / (hi - lo) if hi > lo else np.full_like(seq, 0.5)
                t = np.linspace(c + 0.08, c + 0.92, len(seq))
                for f in range(seq.shape[1]):  # one colour per feature, the same in every cell
                    ax.plot(t, r + 0.7 - 0.62 * scaled[:, f], linewidth=0.8, color=f"C{f}")
                ax.add_patch(
                    plt.Rectangle((c + 0.05, r + 0.04), 0.9, 0.7, fill=False, lw=0.4, ec="0.7")
                )
            ax.text(
                c + 0.5,
                r + 0.87,
                f"true {w['true']} → {w['predicted']} ({w['confidence']:.0%})\n#{w['index']}",
                ha="center",
                va="center",
                fontsize=6.5,
            )
    if title:
        fig.suptitle(title)
    return fig


# ----------------------------------------------------------------------------- report


def worst_table(analysis: dict) -> tuple[list[str], list[list]]:
    """(headers, rows) of the most confidently wrong tabular examples with their feature values."""
    width = min(TABLE_FEATURES, analysis.get("num_features", TABLE_FEATURES))
    more = analysis.get("num_features", 0) > width
    headers = ["split", "example", "true", "predicted", "confidence"]
    headers += [f"x{j}" for j in range(width)] + (["…"] if more else [])
    rows = []
    for name in SPLITS:
        for w in analysis["splits"].get(name, {}).get("worst_examples", [])[:TABLE_EXAMPLES]:
            rows.append(
                [name, w["index"], w["true"], w["predicted"], f"{w['confidence']:.0%}"]
                + [f"{v:.3g}" for v in w.get("inputs", [])[:width]]
                + (["…"] if more else [])
            )
    return headers, rows


def report_blocks(analysis: dict, kind: str) -> list:
    """The section's text and tables as blocks: ("text", str) | ("table", headers, rows)."""
    splits = analysis["splits"]
    train, val = splits.get("train"), splits.get("val")
    sampled = [
        f"a random {s['examples']:,} of {s['total']:,} {name} examples"
        for name, s in splits.items()
        if s["examples"] < s["total"]
    ]
    blocks = [
        (
            "text",
            "Which classes the model gets wrong, on data it was trained on (train) and on data "
            "it has not seen (val): a mistake made on both is one the model cannot fit; one "
            "made only on val, one it does not generalize."
            + (f" Analyzed: {'; '.join(sampled)}." if sampled else ""),
        )
    ]
    num_classes = len((val or train)["class_counts"])
    headers = ["class"]
    for name, s in (("train", train), ("val", val)):
        if s:
            headers += [f"{name} examples", f"{name} error"]
    rows = []
    for c in range(num_classes):
        row = [str(c)]
        for s in (train, val):
            if s:
                row += [f"{s['class_counts'][c]:,}", _pct(s["class_errors"][c])]
        rows.append(row)
    overall = ["all"]
    for s in (train, val):
        if s:
            overall += [f"{s['examples']:,}", f"**{_pct(s['error'])}**"]
    blocks.append(("table", headers, rows + [overall]))

    # The most-confused pairs of val (of train when val has none), with the same pair on the
    # other split: the same mistake on seen data says the model cannot fit it.
    lead = "val" if val and val["top_confusions"] else "train"
    other = "train" if lead == "val" else "val"
    pairs = splits[lead]["top_confusions"] if splits.get(lead) else []
    if pairs:
        headers = ["true → predicted", f"{lead} mistakes"]
        if splits.get(other):
            headers.append(f"{other} mistakes")
        rows = []
        for p in pairs:
            row = [
                f"{p['true']} → {p['predicted']}",
                f"{p['count']:,} ({_pct(p['rate'])} of class {p['true']})",
            ]
            o = splits.get(other)
            if o:
                matrix = o["confusion_matrix"]
                n = o["class_counts"][p["true"]]
                if matrix is not None and n:
                    k = matrix[p["true"]][p["predicted"]]
                    row.append(f"{k:,} ({_pct(k / n)})")
                else:
                    row.append("-")
            rows.append(row)
        blocks.append(("text", "The classes the model confuses most:"))
        blocks.append(("table", headers, rows))
    else:
        blocks.append(("text", f"No mistakes on {' or '.join(splits)}."))
    if kind == "tabular":
        headers, rows = worst_table(analysis)
        if rows:
            blocks.append(
                ("text", "The most confidently wrong examples (feature values before normalizing):")
            )
            blocks.append(("table", headers, rows))
    return blocks


def blocks_markdown(blocks: list) -> str:
    """Text and table blocks as markdown."""
    parts = []
    for block in blocks:
        if block[0] == "text":
            parts.append(block[1])
        elif block[0] == "table":
            parts.append(reporting.markdown_table(block[1], block[2]))
    return "\n\n".join(parts)
