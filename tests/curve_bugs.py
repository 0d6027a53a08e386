"""Broken pieces for the loss-curve tests, plugged in through the public extension points."""

import jax
import numpy as np
import optax

from workflow.data.synthetic import make_synthetic, synthetic_options


def negated_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy with its sign flipped: the 'flipped sign of the loss' bug."""
    # The optimizer maximizes the real loss; the loss it reports falls below zero without bound.
    return -optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def ascended_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Cross-entropy with its gradient's sign flipped: the 'flipped sign of the gradient' bug."""
    # The value is the real loss (stop_gradient(2 ce) - ce == ce), the gradient -d ce: as if a
    # hand-written update added the gradient, so the optimizer climbs the loss it reports.
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jax.lax.stop_gradient(2.0 * ce) - ce


def random_labels(num_train: int = 600, num_test: int = 200, seed: int = 0) -> dict:
    """Synthetic tabular data whose labels are replaced by uniform noise (labels corrupted)."""
    options = {**synthetic_options("tabular"), "num_train": num_train, "num_test": num_test}
    raw = make_synthetic(options, seed=seed)
    rng = np.random.default_rng(seed)
    c = raw["num_classes"]
    raw["y_train"] = rng.integers(0, c, len(raw["y_train"])).astype(np.int32)
    raw["y_test"] = rng.integers(0, c, len(raw["y_test"])).astype(np.int32)
    raw.pop("irreducible_error", None)  # no longer known: the labels carry no signal
    raw["info"] = {"source": "synthetic tabular with uniformly random labels"}
    return raw
