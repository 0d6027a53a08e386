"""Synthetic classification data whose irreducible (Bayes) error is known in closed form.

Every generator draws class-conditional inputs whose classes barely overlap (the "clean" Bayes
error is bounded above by a tiny union bound and must stay below ``MAX_CLEAN_ERROR``), then
replaces each label, with probability ``label_noise``, by a class drawn uniformly from all C
classes (possibly the same one). Symmetric noise keeps the clean arg-max as the Bayes classifier,
so with clean error ``e0`` the Bayes error on the noisy labels is exactly

    label_noise * (C - 1) / C  +  e0 * (1 - label_noise)

and, with ``e0`` replaced by its upper bound, that is what ``irreducible_error`` records. Noise is
applied to every split, so test accuracy can approach but not beat ``1 - irreducible_error``.

Kinds (x conventions as in ``workflow.data``):

* ``tabular`` (N, D): isotropic Gaussian (std ``noise``) around C orthogonal class means that are
  ``separation * noise`` apart; pairwise error is Phi(-separation / 2).
* ``image`` (N, S, S, channels): the same Gaussian model with smooth random class templates
  (orthonormalised, so again ``separation * noise`` apart) as means: fixed pattern + pixel noise.
* ``sequence`` (N, T, 1): a sinusoid with ``c + 1`` cycles per sequence for class c, amplitude
  ``amplitude``, uniformly random phase (a random circular shift), plus white noise of std
  ``noise``. The Bayes classifier is the envelope (Fourier-magnitude) detector, whose pairwise
  error is exactly ``exp(-amplitude**2 * T / (8 * noise**2)) / 2`` (non-coherent orthogonal FSK).

* ``regression`` (N, D), for ``task=regression``: Gaussian inputs (standard normal, ``dims`` of
  them) and a float target ``y = f(x) + target_noise * e`` with e standard normal and ``f`` a
  fixed smooth function (a linear part plus ``num_waves`` sinusoids of random projections, from
  ``task_seed``). The best possible predictor is ``f`` itself, so the irreducible error is the
  noise's standard deviation: ``irreducible_error = target_noise``, an RMSE in target units.

The class means / templates come from ``task_seed`` (default 0) and the samples from the run seed,
so different run seeds give fresh samples of the same task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from workflow.errors import UsageError

KINDS = ("image", "sequence", "tabular", "regression")

# Above this the clean overlap would dominate the label-noise term and the recorded Bayes error
# would be a loose bound rather than a known value.
MAX_CLEAN_ERROR = 1e-3

_COMMON = {
    "kind": "tabular",
    "num_train": 2000,
    "num_test": 500,
    "num_classes": 10,
    "label_noise": 0.1,
    "noise": 1.0,
    "task_seed": 0,
}
_PER_KIND = {
    "tabular": {"dims": 20, "separation": 10.0},
    "image": {"image_size": 12, "channels": 1, "separation": 10.0},
    "sequence": {"length": 64, "amplitude": 2.0},
}
# The regression kind shares only the sizes and seeds: it has no classes.
_REGRESSION = {
    "kind": "regression",
    "num_train": 2000,
    "num_test": 500,
    "dims": 8,
    "num_waves": 4,
    "target_noise": 0.3,
    "task_seed": 0,
}


def rng_for(*keys: int) -> np.random.Generator:
    """A numpy Generator that is a pure function of the integer keys (negative keys allowed)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) % 2**64 for k in keys]))


def synthetic_options(kind: str) -> dict[str, Any]:
    """The default generator options for one synthetic kind."""
    if kind == "regression":
        return dict(_REGRESSION)
    if kind not in _PER_KIND:
        raise UsageError(f"synthetic kind={kind!r} is unknown; valid kinds: {', '.join(KINDS)}")
    return {**_COMMON, "kind": kind, **_PER_KIND[kind]}


def _normal_tail(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _resolve(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    kind = kwargs.get("kind", _COMMON["kind"])
    opts = synthetic_options(kind)
    unknown = sorted(set(kwargs) - set(opts))
    if unknown:
        raise UsageError(
            f"unknown synthetic option(s) {', '.join(unknown)} for kind={kind!r}; "
            f"valid: {', '.join(sorted(opts))}"
        )
    opts.update(kwargs)
    for key in ("num_train", "num_test", "num_classes", "task_seed") + tuple(
        k for k in ("dims", "image_size", "channels", "length") if k in opts
    ):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise UsageError(f"synthetic {key}={value!r} must be an integer")
    for key in ("num_train", "num_test", "dims", "image_size", "channels", "length"):
        if key in opts and opts[key] < 1:
            raise UsageError(f"synthetic {key}={opts[key]} must be >= 1")
    if opts["num_classes"] < 2:
        raise UsageError(f"synthetic num_classes={opts['num_classes']} must be >= 2")
    for key in ("label_noise", "noise", "separation", "amplitude"):
        if key in opts and not isinstance(opts[key], int | float):
            raise UsageError(f"synthetic {key}={opts[key]!r} must be a number")
    if not 0.0 <= opts["label_noise"] < 1.0:
        raise UsageError(f"synthetic label_noise={opts['label_noise']} must be in [0, 1)")
    for key in ("noise", "separation", "amplitude"):
        if key in opts and opts[key] <= 0:
            raise UsageError(f"synthetic {key}={opts[key]} must be > 0")
    return opts


def _orthogonal_means(
    raw: np.ndarray, separation: float, noise: float, what: str, hint: str
) -> np.ndarray:
    """Orthonormalise C raw patterns (C, ...) and scale them to be separation*noise apart."""
    c = raw.shape[0]
    flat = raw.reshape(c, -1)
    if flat.shape[1] < c:
        raise UsageError(
            f"synthetic {what} has {flat.shape[1]} input dims, fewer than num_classes={c}; "
            f"{hint} so the class means can be orthogonal"
        )
    q, _ = np.linalg.qr(flat.T)  # (D, C) orthonormal columns
    # Orthonormal means of norm r are r*sqrt(2) apart.
    radius = separation * noise / math.sqrt(2.0)
    return (q.T * radius).reshape(raw.shape)


def _smooth(fields: np.ndarray, axes: tuple[int, int], passes: int = 2) -> np.ndarray:
    """Cheap circular 3-tap box blur so templates look like blobs, not pixel noise."""
    for _ in range(passes):
        for ax in axes:
            fields = (fields + np.roll(fields, 1, ax) + np.roll(fields, -1, ax)) / 3.0
    return fields


def _noisy_labels(
    y: np.ndarray, num_classes: int, rate: float, rng: np.random.Generator
) -> np.ndarray:
    replace = rng.random(y.shape[0]) < rate
    random_labels = rng.integers(0, num_classes, size=y.shape[0])
    return np.where(replace, random_labels, y)


def _class_structure(opts: Mapping[str, Any], noise: float) -> tuple[np.ndarray | None, float]:
    """(class means, pairwise error bound): the task's classes, drawn from task_seed alone.

    Tabular and image classes are Gaussian means (images smoothed over space); sequence
    classes are frequencies 1..C (means None), told apart up to the bound given noise.
    """
    kind, c = opts["kind"], opts["num_classes"]
    task_rng = rng_for(opts["task_seed"], 0)
    if kind == "tabular":
        raw = task_rng.standard_normal((c, opts["dims"]))
        means = _orthogonal_means(raw, opts["separation"], noise, "tabular", "raise dims")
        return means, _normal_tail(opts["separation"] / 2.0)
    if kind == "image":
        s, ch = opts["image_size"], opts["channels"]
        raw = _smooth(task_rng.standard_normal((c, s, s, ch)), axes=(1, 2))
        means = _orthogonal_means(raw, opts["separation"], noise, "image", "raise image_size")
        return means, _normal_tail(opts["separation"] / 2.0)
    length, amp = opts["length"], float(opts["amplitude"])
    if c > (length - 1) // 2:
        # Frequencies 1..C must stay strictly below Nyquist to be distinct, phase-free bins.
        raise UsageError(
            f"synthetic sequence length={length} is too short for num_classes={c}; "
            f"need length >= {2 * c + 1}"
        )
    return None, 0.5 * math.exp(-(amp**2) * length / (8.0 * noise**2))


def _resolve_regression(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The regression kind's options, each checked (one line naming it)."""
    opts = dict(_REGRESSION)
    unknown = sorted(set(kwargs) - set(opts))
    if unknown:
        raise UsageError(
            f"unknown synthetic option(s) {', '.join(unknown)} for kind='regression'; "
            f"valid: {', '.join(sorted(opts))}"
        )
    opts.update(kwargs)
    for key in ("num_train", "num_test", "dims", "num_waves", "task_seed"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise UsageError(f"synthetic {key}={value!r} must be an integer")
        if key != "task_seed" and value < (0 if key == "num_waves" else 1):
            raise UsageError(f"synthetic {key}={value} must be >= {int(key != 'num_waves')}")
    noise = opts["target_noise"]
    if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
        raise UsageError(f"synthetic target_noise={noise!r} must be a number >= 0")
    return opts


def make_regression(kwargs: Mapping[str, Any], *, seed: int) -> dict[str, Any]:
    """Synthetic regression data whose irreducible RMSE is `target_noise` (module docstring)."""
    opts = _resolve_regression(kwargs)
    d, waves, noise = opts["dims"], opts["num_waves"], float(opts["target_noise"])
    task_rng = rng_for(opts["task_seed"], 7)
    linear = task_rng.standard_normal(d) / math.sqrt(d)
    projections = task_rng.standard_normal((d, waves)) / math.sqrt(d) * 2.0
    offsets = task_rng.uniform(0.0, 2.0 * np.pi, waves)
    weights = task_rng.standard_normal(waves) / math.sqrt(max(waves, 1))

    def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((n, d))
        clean = x @ linear + np.sin(x @ projections + offsets) @ weights
        y = clean + noise * rng.standard_normal(n)
        return x.astype(np.float32), y.astype(np.float32)

    x_train, y_train = draw(opts["num_train"], rng_for(seed, 1))
    x_test, y_test = draw(opts["num_test"], rng_for(seed, 2))
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "kind": "tabular",
        "irreducible_error": noise,
        "info": {
            "source": "synthetic regression (workflow.data.synthetic)",
            "options": dict(opts),
            "irreducible_error_formula": "target_noise (the RMSE of the true function)",
        },
    }


def make_synthetic(
    kwargs: Mapping[str, Any], *, seed: int, task: str = "classification"
) -> dict[str, Any]:
    """Generate a synthetic dataset as a raw loader dict (train/test, kind, irreducible error):
    classification kinds for task=classification, the regression kind for task=regression."""
    regression = kwargs.get("kind") == "regression"
    if regression != (task == "regression"):
        raise UsageError(
            f"synthetic kind={kwargs.get('kind', _COMMON['kind'])!r} does not fit "
            f"task={task!r}: use dataset.kwargs.kind=regression with task=regression, a "
            f"classification kind ({', '.join(_PER_KIND)}) with task=classification"
            + ("; synthetic data has no multi-label kind" if task == "multilabel" else "")
        )
    if regression:
        return make_regression(kwargs, seed=seed)
    opts = _resolve(kwargs)
    kind, c, noise = opts["kind"], opts["num_classes"], float(opts["noise"])
    n_train, n_test = opts["num_train"], opts["num_test"]
    amp = float(opts["amplitude"]) if kind == "sequence" else None
    means, pairwise = _class_structure(opts, noise)

    clean_bound = (c - 1) * pairwise
    if clean_bound > MAX_CLEAN_ERROR:
        knob = "amplitude or length" if kind == "sequence" else "separation"
        raise UsageError(
            f"synthetic {kind} classes overlap (clean Bayes error bound {clean_bound:.2g} > "
            f"{MAX_CLEAN_ERROR}), so the irreducible error would not be known; "
            f"raise {knob} or lower noise"
        )

    def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        y_clean = rng.integers(0, c, size=n)
        if kind == "sequence":
            t = np.arange(opts["length"])
            phase = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1))
            freq = (y_clean + 1)[:, None]
            signal = amp * np.cos(2.0 * np.pi * freq * t[None, :] / opts["length"] + phase)
            x = (signal + noise * rng.standard_normal(signal.shape))[..., None]
        else:
            x = means[y_clean] + noise * rng.standard_normal((n, *means.shape[1:]))
        y = _noisy_labels(y_clean, c, opts["label_noise"], rng)
        return x.astype(np.float32), y.astype(np.int32), int(np.sum(y != y_clean))

    # Separate streams so the train draw does not depend on num_test and vice versa.
    x_train, y_train, flipped_train = draw(n_train, rng_for(seed, 1))
    x_test, y_test, flipped_test = draw(n_test, rng_for(seed, 2))

    eps = float(opts["label_noise"])
    irreducible = eps * (c - 1) / c + clean_bound * (1.0 - eps)
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "kind": kind,
        "num_classes": c,
        "irreducible_error": irreducible,
        "info": {
            "source": f"synthetic {kind} (workflow.data.synthetic)",
            "options": dict(opts),
            "label_noise": eps,
            "labels_changed": {"train": flipped_train, "test": flipped_test},
            "clean_error_upper_bound": clean_bound,
            "irreducible_error_formula": (
                "label_noise*(C-1)/C + clean_error_upper_bound*(1-label_noise)"
            ),
        },
    }
