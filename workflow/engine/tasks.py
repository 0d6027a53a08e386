"""What the model is asked to do (config.task): single-label classification, regression or
multi-label classification. The one home of what differs between them: the targets' form, the
losses, the metrics and the error measure, and the initial loss an untrained model should show.

Every stage reads a task's error through the same three numbers: `summarize` turns the sums of
`batch_sums` over a split into metrics, of which `error` is the task's error measure (lower is
better: 1 - accuracy, RMSE in the targets' units, the per-label error rate) and `accuracy` is
its score, `1 - error`, which the training loop, early stopping, trials and the search maximize
(engine metric `accuracy`, records' `val_accuracy`). A summary's metrics name what a person
reads: `{split}_error` and the task's `metric_names` (`accuracy`; `rmse`, `mae`, `r2`;
`accuracy`, `macro_f1`).

Regression targets are standardized with the training split's mean and standard deviation
(data.load_dataset): the model predicts standardized values, the loss is computed on them, and
every metric is reported in the targets' own units.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workflow.errors import UsageError

CLASSIFICATION, REGRESSION, MULTILABEL = "classification", "regression", "multilabel"
TASKS = (CLASSIFICATION, REGRESSION, MULTILABEL)

LossFn = Any  # (outputs, targets) -> one loss per example


# ----------------------------------------------------------------------------- losses


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy of integer labels against logits, one value per example."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def squared_error(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Squared error against one-hot labels, one value per example."""
    targets = jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype)
    return jnp.sum((outputs - targets) ** 2, axis=-1)


def mse(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean squared error over the outputs, one value per example."""
    return jnp.mean((outputs - targets) ** 2, axis=-1)


def huber(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Huber loss (delta 1, in standardized target units) averaged over the outputs."""
    return jnp.mean(optax.huber_loss(outputs, targets, delta=1.0), axis=-1)


def absolute_error(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean absolute error over the outputs, one value per example."""
    return jnp.mean(jnp.abs(outputs - targets), axis=-1)


def sigmoid_binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Binary cross-entropy of multi-hot targets against per-label logits, averaged over labels."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, targets), axis=-1)


# ----------------------------------------------------------------------------- task kinds


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """The interface every task implements; the subclasses are the three tasks."""

    name: ClassVar[str]
    losses: ClassVar[dict[str, LossFn]]
    default_loss: ClassVar[str]
    metric_names: ClassVar[tuple[str, ...]]  # per split in a summary, besides loss and error
    error_name: ClassVar[str]  # what the error measure is called in reports
    error_is_rate: ClassVar[bool]  # a rate in [0, 1] (shown as %), or a value in target units
    score_label: ClassVar[str] = "accuracy"  # what the score (1 - error) is, on plots
    # What the initial loss is compared with (initial_loss_reference), in a report's words.
    initial_loss_reference_text: ClassVar[str] = (
        "the entropy of the labels, ln C for balanced classes"
    )
    # The debug checklist's rows (findings.CHECKLIST_ROWS) in this task's words, and the rows
    # that do not apply to it with the reason (debug/report.py shows them "not applicable").
    checklist_terms: ClassVar[dict[str, str]] = {}
    not_applicable: ClassVar[dict[str, str]] = {}

    def batch_sums(self, outputs: jax.Array, y: jax.Array, mask: jax.Array) -> dict:
        """The additive statistics of one padded batch (`mask` marks its real rows)."""
        raise NotImplementedError

    def summarize(self, sums: dict, n: int) -> dict[str, float]:
        """{'error', 'accuracy' (1 - error), *metric_names} from the sums over n examples."""
        raise NotImplementedError

    def batch_score(self, outputs: jax.Array, y: jax.Array) -> jax.Array:
        """The score (1 - error) of one training batch: the train step's `accuracy`."""
        raise NotImplementedError

    def reference_outputs(self, y: np.ndarray, num_outputs: int) -> np.ndarray:
        """The outputs of a model that knows only the training targets' distribution."""
        raise NotImplementedError

    def example_errors(self, outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each example's error, whose mean over a split is the task's error (a rate), or for
        regression its square (the mean squared error in target units)."""
        raise NotImplementedError

    def memorized(self, scores: np.ndarray) -> np.ndarray:
        """Which batch scores mean every training example of the batch is right."""
        return scores >= 1.0

    def initial_loss_range(self, reference: float) -> tuple[float, float]:
        """The initial losses the debug check accepts, given the reference (the loss of
        predicting the targets' distribution, initial_loss_reference)."""
        return reference - 0.5, math.log(2.0) + 0.5

    def error_variance(self, error: float, n: int) -> float:
        """The sampling variance of the error measured on n examples."""
        return error * (1.0 - error) / n

    def format_error(self, value: float) -> str:
        """An error as a person reads it: a rate as %, a value in target units as a number."""
        if value is None or not math.isfinite(value):
            return str(value)
        if self.error_is_rate:
            return f"{value:.2%}"
        return f"{value:.4g}"

    def shown_score(self, score: float) -> tuple[str, float]:
        """A val score (1 - error: what the search ranks trials by) as a person reads it, as
        (name, value): the accuracy for an error rate, the error itself for an error in the
        targets' units (`rmse`, never "1 - RMSE")."""
        if self.error_is_rate:
            return "accuracy", score
        return self.error_name.lower(), 1.0 - score

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for a dataset's summary."""
        return {"name": self.name}

    @classmethod
    def loss(cls, name: str) -> LossFn | None:
        """This task's loss `name`, None when the name is not one of its losses."""
        return cls.losses.get(name)


@dataclasses.dataclass(frozen=True)
class Classification(TaskKind):
    """One class per example: integer labels, softmax cross-entropy, accuracy."""

    name: ClassVar[str] = CLASSIFICATION
    losses: ClassVar[dict[str, LossFn]] = {
        "softmax_cross_entropy": softmax_cross_entropy,
        "squared_error": squared_error,
    }
    default_loss: ClassVar[str] = "softmax_cross_entropy"
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy",)
    error_name: ClassVar[str] = "error"
    error_is_rate: ClassVar[bool] = True

    def batch_sums(self, outputs, y, mask):
        """Correct predictions (arg-max) among the real rows."""
        return {"correct": jnp.sum((jnp.argmax(outputs, -1) == y) * mask)}

    def summarize(self, sums, n):
        """Accuracy and its complement."""
        accuracy = float(sums["correct"]) / max(n, 1)
        return {"error": 1.0 - accuracy, "accuracy": accuracy}

    def batch_score(self, outputs, y):
        """Arg-max accuracy of the batch."""
        return jnp.mean(jnp.argmax(outputs, -1) == y)

    def example_errors(self, outputs, y):
        """1 where the arg-max is not the label."""
        return (np.argmax(outputs, -1) != np.asarray(y)).astype(np.float64)

    def reference_outputs(self, y, num_outputs):
        """Log class frequencies: the prior, whose cross-entropy is the labels' entropy."""
        freq = np.bincount(np.asarray(y, np.int64), minlength=num_outputs) / max(len(y), 1)
        logits = np.log(np.maximum(freq, 1e-12))
        return np.broadcast_to(logits, (len(y), num_outputs)).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Regression(TaskKind):
    """Float targets, one or more outputs, standardized with the training split's statistics:
    `mean` and `std` per output put predictions back into the targets' units."""

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    name: ClassVar[str] = REGRESSION
    losses: ClassVar[dict[str, LossFn]] = {
        "mse": mse,
        "huber": huber,
        "absolute_error": absolute_error,
    }
    default_loss: ClassVar[str] = "mse"
    metric_names: ClassVar[tuple[str, ...]] = ("rmse", "mae", "r2")
    error_name: ClassVar[str] = "RMSE"
    error_is_rate: ClassVar[bool] = False
    score_label: ClassVar[str] = "1 − RMSE (target units)"
    initial_loss_reference_text: ClassVar[str] = "the loss of predicting the training targets' mean"
    checklist_terms: ClassVar[dict[str, str]] = {
        "outputs are logits, not probabilities": "outputs unbounded (no sigmoid/tanh/relu head)",
        "initial loss near ln C": "initial loss near that of predicting the mean",
        # Finite and not constant is checked as the targets load (exit 2 otherwise).
        "labels in range and informative": "training targets fit like unseen test targets",
    }

    def batch_sums(self, outputs, y, mask):
        """Per output: squared and absolute errors, and the targets' sum and sum of squares
        (all in standardized units, which keeps float32 sums accurate)."""
        m = mask[:, None]
        diff = (outputs - y) * m
        return {
            "sse": jnp.sum(diff**2, 0),
            "sae": jnp.sum(jnp.abs(diff), 0),
            "sy": jnp.sum(y * m, 0),
            "syy": jnp.sum(y**2 * m, 0),
        }

    def summarize(self, sums, n):
        """RMSE and MAE in target units (averaged over outputs), R² averaged over outputs."""
        std = np.asarray(self.std, np.float64)
        n = max(n, 1)
        sse, sae = np.asarray(sums["sse"], np.float64), np.asarray(sums["sae"], np.float64)
        sy, syy = np.asarray(sums["sy"], np.float64), np.asarray(sums["syy"], np.float64)
        rmse = float(np.sqrt(np.mean(sse * std**2) / n))
        mae = float(np.mean(sae * std) / n)
        total = syy - sy**2 / n
        r2 = float(np.mean(1.0 - sse / np.where(total > 0, total, np.nan)))
        return {"error": rmse, "accuracy": 1.0 - rmse, "rmse": rmse, "mae": mae, "r2": r2}

    def batch_score(self, outputs, y):
        """1 - the batch's RMSE in target units."""
        std = jnp.asarray(self.std, jnp.float32)
        return 1.0 - jnp.sqrt(jnp.mean(((outputs - y) * std) ** 2))

    def example_errors(self, outputs, y):
        """The squared error in target units, averaged over the outputs."""
        diff = (np.asarray(outputs, np.float64) - np.asarray(y)) * np.asarray(self.std)
        return np.mean(diff**2, axis=-1)

    def reference_outputs(self, y, num_outputs):
        """The training mean: zero in standardized units."""
        return np.zeros((len(y), num_outputs), np.float32)

    def memorized(self, scores):
        """A regression batch is never exactly right: the loss criterion alone decides."""
        return np.ones_like(scores, dtype=bool)

    def initial_loss_range(self, reference):
        """From a quarter of predicting the mean (lower: the targets leak into the inputs) to
        three times it plus 0.5 (higher: outputs starting far larger than the targets' spread;
        outputs of standard deviation 1 make mean squared error 2)."""
        return reference / 4.0, 3.0 * reference + 0.5

    def error_variance(self, error, n):
        """RMSE's sampling variance for Gaussian residuals: RMSE² / (2n)."""
        return error**2 / (2.0 * n)

    def to_target_units(self, standardized: np.ndarray) -> np.ndarray:
        """Standardized values (targets or predictions) in the targets' own units."""
        return np.asarray(standardized) * np.asarray(self.std) + np.asarray(self.mean)

    def describe(self):
        """The task and the training split's target statistics used to standardize."""
        return {"name": self.name, "target_mean": list(self.mean), "target_std": list(self.std)}


@dataclasses.dataclass(frozen=True)
class MultiLabel(TaskKind):
    """Several yes/no labels per example: multi-hot targets, sigmoid binary cross-entropy,
    the per-label error rate and macro F1."""

    name: ClassVar[str] = MULTILABEL
    losses: ClassVar[dict[str, LossFn]] = {
        "sigmoid_binary_cross_entropy": sigmoid_binary_cross_entropy,
    }
    default_loss: ClassVar[str] = "sigmoid_binary_cross_entropy"
    metric_names: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1")
    error_name: ClassVar[str] = "per-label error"
    error_is_rate: ClassVar[bool] = True
    score_label: ClassVar[str] = "per-label accuracy"
    initial_loss_reference_text: ClassVar[str] = "the loss of predicting each label's base rate"
    checklist_terms: ClassVar[dict[str, str]] = {
        "outputs are logits, not probabilities": "outputs are logits, not sigmoid probabilities",
        "initial loss near ln C": "initial loss near the per-label base rates' entropy",
        # Finite and 0/1 is checked as the targets load (exit 2 otherwise).
        "labels in range and informative": "training labels fit like unseen test labels",
    }

    def batch_sums(self, outputs, y, mask):
        """Per label: true positives, false positives, false negatives (logit > 0 is yes)."""
        m = mask[:, None]
        predicted = (outputs > 0).astype(jnp.float32)
        return {
            "tp": jnp.sum(predicted * y * m, 0),
            "fp": jnp.sum(predicted * (1 - y) * m, 0),
            "fn": jnp.sum((1 - predicted) * y * m, 0),
        }

    def summarize(self, sums, n):
        """The per-label error rate, its complement and the macro F1 (labels averaged)."""
        tp, fp, fn = (np.asarray(sums[k], np.float64) for k in ("tp", "fp", "fn"))
        error = float(np.sum(fp + fn) / max(n * len(tp), 1))
        return {"error": error, "accuracy": 1.0 - error, "macro_f1": macro_f1(tp, fp, fn)}

    def initial_loss_range(self, reference):
        """From the base rates' entropy (less 0.5) to ln 2 (logits near 0) plus 0.5: the
        classification check's band, per label."""
        return reference - 0.5, math.log(2.0) + 0.5

    def batch_score(self, outputs, y):
        """The share of the batch's labels predicted right."""
        return jnp.mean((outputs > 0) == (y > 0.5))

    def example_errors(self, outputs, y):
        """The share of the example's labels predicted wrong."""
        return np.mean((np.asarray(outputs) > 0) != (np.asarray(y) > 0.5), axis=-1)

    def reference_outputs(self, y, num_outputs):
        """The logits of each label's base rate."""
        rate = np.clip(np.mean(np.asarray(y, np.float64), 0), 1e-6, 1 - 1e-6)
        logits = np.log(rate / (1 - rate))
        return np.broadcast_to(logits, (len(y), num_outputs)).astype(np.float32)


def macro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """The mean over labels of F1 = 2tp / (2tp + fp + fn); a label never present nor predicted
    counts as 1 (nothing to get wrong)."""
    denominator = 2 * tp + fp + fn
    f1 = np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), 1.0)
    return float(np.mean(f1))


KINDS: dict[str, type[TaskKind]] = {
    CLASSIFICATION: Classification,
    REGRESSION: Regression,
    MULTILABEL: MultiLabel,
}


def kind_of(config: Any) -> type[TaskKind]:
    """The task class a config (or a summary's config dict) names; classification by default."""
    return KINDS[config.get("task", CLASSIFICATION) or CLASSIFICATION]


def split_metric_names(config: Any) -> tuple[str, ...]:
    """The per-split metrics a summary of this task reports: loss, error, the task's own."""
    return ("loss", "error", *kind_of(config).metric_names)


def check_task_name(name: Any) -> str:
    """config.task, checked: one line naming the valid tasks otherwise."""
    if name not in KINDS:
        raise UsageError(f"invalid value task={name!r}; valid: {', '.join(TASKS)}")
    return name


def initial_loss_reference(
    kind: TaskKind, loss_fn: LossFn, y: np.ndarray, num_outputs: int
) -> float:
    """The loss of a model that predicts only the targets' distribution (the class prior, the
    mean, the base rates): what an untrained model with a well-set output layer starts near."""
    if len(y) == 0:
        return math.nan
    outputs = kind.reference_outputs(y, num_outputs)
    return float(np.mean(np.asarray(loss_fn(jnp.asarray(outputs), jnp.asarray(y)))))
