"""Broken pieces of the zoo that tests/check_bugs.py and tests/curve_bugs.py lack."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from workflow.data.synthetic import make_synthetic, synthetic_options


def expected_class_regression(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Squared error of the expected class index: predictions (N,) against targets (N, 1).

    The targets keep a trailing axis, so `prediction - target` broadcasts to (N, N) and the mean
    over the last axis silently averages every example's error against every other target.
    """
    classes = jnp.arange(outputs.shape[-1], dtype=outputs.dtype)
    prediction = jax.nn.softmax(outputs) @ classes  # (N,)
    target = labels.astype(outputs.dtype).reshape(-1, 1)  # (N, 1): the bug
    return jnp.mean((prediction - target) ** 2, axis=-1)


def _training_labels_replaced(share: float, seed: int = 0) -> dict:
    """Synthetic tabular data (small_config's sizes) with `share` of the training labels
    replaced by uniformly random classes, as a buggy preprocessing step does; test untouched."""
    options = {**synthetic_options("tabular"), "num_train": 600, "num_test": 200}
    raw = make_synthetic(options, seed=seed)
    rng = np.random.default_rng(seed + 1)
    y = raw["y_train"].copy()
    hit = rng.random(len(y)) < share
    y[hit] = rng.integers(0, raw["num_classes"], int(hit.sum()))
    raw["y_train"] = y.astype(np.int32)
    raw.pop("irreducible_error", None)  # no longer the generator's: the training labels differ
    raw["info"] = {"source": f"synthetic tabular, {share:.0%} of training labels randomized"}
    return raw


def noisy_labels_10() -> dict:
    """10% of the training labels replaced by random classes."""
    return _training_labels_replaced(0.1)


def noisy_labels_30() -> dict:
    """30% of the training labels replaced by random classes."""
    return _training_labels_replaced(0.3)


def _tabular(seed: int = 0) -> dict:
    """small_config's synthetic tabular data, as a loader returns it."""
    options = {**synthetic_options("tabular"), "num_train": 600, "num_test": 200}
    return make_synthetic(options, seed=seed)


def leaked_test_split() -> dict:
    """Bug: the test examples were concatenated into the training split (a leak)."""
    raw = _tabular()
    raw["x_train"] = np.concatenate([raw["x_train"], raw["x_test"]])
    raw["y_train"] = np.concatenate([raw["y_train"], raw["y_test"]])
    raw.pop("irreducible_error", None)
    return raw


def label_column_in_inputs() -> dict:
    """Bug: the label column left among the features (a table's target not dropped)."""
    raw = _tabular()
    for split in ("train", "test"):
        label = raw[f"y_{split}"].astype(raw[f"x_{split}"].dtype)[:, None]
        raw[f"x_{split}"] = np.concatenate([raw[f"x_{split}"], label], axis=1)
    raw.pop("irreducible_error", None)  # the leaked column makes the problem trivial
    return raw


def duplicated_train() -> dict:
    """Bug: the training split appended to itself twice (every example three times)."""
    raw = _tabular()
    raw["x_train"] = np.concatenate([raw["x_train"]] * 3)
    raw["y_train"] = np.concatenate([raw["y_train"]] * 3)
    return raw


def imbalanced_1_to_50() -> dict:
    """Class 0 kept whole, every other class cut to 1/50 of it in train (test untouched)."""
    raw = _tabular()
    y = raw["y_train"]
    rng = np.random.default_rng(1)
    keep = (y == 0) | (rng.random(len(y)) < 0.02)
    raw["x_train"], raw["y_train"] = raw["x_train"][keep], y[keep]
    raw.pop("irreducible_error", None)
    return raw


def log_of_softmax(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Bug: cross-entropy written as log(softmax(x)): a probability that underflows to 0 gives
    log(0) = -inf where log_softmax stays finite."""
    probs = jax.nn.softmax(outputs)
    picked = jnp.take_along_axis(probs, labels[:, None], axis=-1)[:, 0]
    return -jnp.log(picked)


def one_based_labels() -> dict:
    """Bug: labels 1..C from a source that counts from 1, with num_classes C: class C indexes
    past the logits, which a JAX gather clamps silently instead of raising."""
    raw = _tabular()
    for split in ("y_train", "y_test"):
        raw[split] = (raw[split] + 1).astype(np.int32)
    raw.pop("irreducible_error", None)
    return raw


def transposed_test_images() -> dict:
    """Bug: the test images transposed (W, H) where the training images are (H, W)."""
    options = {**synthetic_options("image"), "num_train": 600, "num_test": 200}
    raw = make_synthetic(options, seed=0)
    raw["x_test"] = np.swapaxes(raw["x_test"], 1, 2).copy()
    raw.pop("irreducible_error", None)
    return raw


def digits_28x28() -> dict:
    """scikit-learn's 8x8 digits upscaled to MNIST's 28x28 (each pixel 3x3, 2 pixels of
    border), the input the Flax MNIST example's CNN is written for."""
    from workflow.data.sources import digits_arrays

    raw = digits_arrays()
    for split in ("x_train", "x_test"):
        x = np.asarray(raw[split])
        big = np.repeat(np.repeat(x, 3, axis=1), 3, axis=2)
        pad = [(0, 0), (2, 2), (2, 2)] + [(0, 0)] * (x.ndim - 3)
        raw[split] = np.pad(big, pad).astype(np.float32)
    raw.pop("irreducible_error", None)
    return raw


# Class weights for small_config's 10 classes, written out by hand: one class forgotten.
CLASS_WEIGHTS = (1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0)


def class_weighted_cross_entropy(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Bug: cross-entropy weighted per class by a table of 9 weights for 10 classes: JAX clamps
    the weight index of class 9 to the last entry instead of raising."""
    weights = jnp.asarray(CLASS_WEIGHTS)[labels]
    log_probs = jax.nn.log_softmax(outputs)
    return -weights * jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def _standardized(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`x` standardized per feature with the mean and std of `reference`."""
    return ((x - reference.mean(axis=0)) / reference.std(axis=0)).astype(np.float32)


def normalized_per_split() -> dict:
    """Bug: each split standardized with its own statistics (fit_transform on the test split)."""
    raw = _tabular()
    for split in ("x_train", "x_test"):
        raw[split] = _standardized(raw[split], raw[split])
    return raw


def normalized_with_test_statistics() -> dict:
    """Bug: both splits standardized with the test split's statistics (the scaler fit on the
    wrong split); run with dataset.normalize=False, as the loader normalizes itself."""
    raw = _tabular()
    test = raw["x_test"].copy()
    for split in ("x_train", "x_test"):
        raw[split] = _standardized(raw[split], test)
    return raw


def normalized_with_train_statistics() -> dict:
    """Both splits standardized with the training split's statistics (correct)."""
    raw = _tabular()
    train = raw["x_train"].copy()
    for split in ("x_train", "x_test"):
        raw[split] = _standardized(raw[split], train)
    return raw


def _by_class(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


def sorted_then_split() -> dict:
    """Bug: every example sorted by class (a file grouped by label) and the first 75% taken as
    train, the rest as test, never shuffled: the test split holds the last classes only."""
    raw = _tabular()
    x, y = _by_class(
        np.concatenate([raw["x_train"], raw["x_test"]]),
        np.concatenate([raw["y_train"], raw["y_test"]]),
    )
    n_train = 3 * len(y) // 4
    raw["x_train"], raw["y_train"] = x[:n_train], y[:n_train]
    raw["x_test"], raw["y_test"] = x[n_train:], y[n_train:]
    raw.pop("irreducible_error", None)
    return raw


def sorted_by_class() -> dict:
    """The training split returned in class order (read class by class, as from image
    folders), the splits themselves drawn at random: harmless, the workflow shuffles."""
    raw = _tabular()
    raw["x_train"], raw["y_train"] = _by_class(raw["x_train"], raw["y_train"])
    return raw


TOPIC_CLASSES = 4
TOPIC_WORDS = 200  # the vocabulary: PAD, UNK and these words, 202 ids


def token_topics(seed: int = 0) -> dict:
    """Token-id sequences (N, 20, 1) of 4 topics: half of each example's words come from its
    topic's band of 50 words, half from the whole vocabulary; a loader's "token_ids" beside."""
    rng = np.random.default_rng(seed)
    words = ["<pad>", "<unk>", *(f"w{i}" for i in range(TOPIC_WORDS))]
    band = TOPIC_WORDS // TOPIC_CLASSES

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, TOPIC_CLASSES, n)
        topical = 2 + y[:, None] * band + rng.integers(0, band, (n, 20))
        anywhere = rng.integers(2, 2 + TOPIC_WORDS, (n, 20))
        ids = np.where(rng.random((n, 20)) < 0.5, topical, anywhere)
        return ids[..., None].astype(np.int32), y.astype(np.int32)

    (x_train, y_train), (x_test, y_test) = split(800), split(200)
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "kind": "sequence",
        "num_classes": TOPIC_CLASSES,
        "token_ids": {"words": words, "vocab_size": len(words), "max_length": 20},
        "info": {"source": "synthetic topics of token ids"},
    }


def accumulate_never_reset(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """Bug: gradients added into a running sum that is passed to `inner` at every step and never
    cleared (a hand-written accumulation without its reset: JAX's forgotten zero_grad)."""

    def init(params):
        return jax.tree.map(jnp.zeros_like, params), inner.init(params)

    def update(grads, state, params=None):
        total = jax.tree.map(jnp.add, state[0], grads)
        updates, inner_state = inner.update(total, state[1], params)
        return updates, (total, inner_state)

    return optax.GradientTransformation(init, update)


def adam_accumulating_never_reset(learning_rate) -> optax.GradientTransformation:
    """A user's optimizer (--config.optimizer.name=module:function): Adam over gradients summed
    by hand across steps and never cleared."""
    return accumulate_never_reset(optax.adam(learning_rate))


def adam_by_hand(learning_rate) -> optax.GradientTransformation:
    """A user's optimizer written correctly: Adam with its own epsilon."""
    return optax.adam(learning_rate, eps=1e-7)


def warmup_decay_sized_to_the_warmup(num_steps: int) -> optax.Schedule:
    """Bug: a user's warm-up then cosine decay whose decay_steps was sized as if it counted from
    the end of the warm-up of a shorter run; optax counts the warm-up inside decay_steps, so the
    rate reaches 0 at a fifth of the run and stays there."""
    warmup = max(1, num_steps // 10)
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=warmup, decay_steps=2 * warmup)


def warmup_then_cosine_over_the_run(num_steps: int) -> optax.Schedule:
    """The same schedule sized right: the decay ends with the run."""
    warmup = max(1, num_steps // 10)
    return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=warmup, decay_steps=num_steps)


def diabetes_targets_shuffled() -> dict:
    """Bug: the training targets shuffled apart from their inputs (one array permuted)."""
    from workflow.data.examples import diabetes

    raw = diabetes()
    raw["y_train"] = np.random.default_rng(0).permutation(raw["y_train"])
    return raw


def diabetes_missing_target_code() -> dict:
    """Bug: a few training targets are a code for "missing" (99999), never replaced."""
    from workflow.data.examples import diabetes

    raw = diabetes()
    raw["y_train"] = raw["y_train"].copy()
    raw["y_train"][::60] = 99999.0
    return raw
