"""Data augmentation per data kind, as pure jax functions of (key, batch).

The training step calls `augment_batch` on every training batch when `config.augment.enabled`,
with a key that is a pure function of (config.seed, state.step) (`step_key`): a resumed run
draws the same augmentations as an uninterrupted one, and trials vmapped over a leading axis
(workflow/engine/trials.py) share them, as they share their batches. Evaluation never augments.

Per kind (config.augment.<kind>):
  image     random translation by up to `max_shift` pixels along H and W (pad, then a random
            crop of the original size: CIFAR's pad-and-crop), optional horizontal flip, noise
  sequence  random translation by up to `max_shift` time steps, Gaussian noise
  tabular   Gaussian noise
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

KINDS = ("image", "sequence", "tabular")
# "edge" repeats the border: inputs are normalized with train statistics, so 0 is the mean
# intensity, not the background, and a zero ("constant") border would add a frame of gray.
PAD_MODES = ("edge", "constant")
# Folded into the seed's key first, so augmentation keys never coincide with the keys that
# nnx.Rngs(seed) draws for initialization (fold_in(key(seed), count)).
_STREAM = 0x41554721

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def default_config() -> ml_collections.ConfigDict:
    """config.augment: off by default; each kind's block holds its options."""
    return ml_collections.ConfigDict(
        {
            "enabled": False,
            # The data kind whose block applies; None: the dataset's (experiment.prepare sets it).
            "kind": config_dict.placeholder(str),
            "image": {
                "max_shift": 1,  # pixels; 1 on 8x8 digits is CIFAR's 4 on 32x32
                # Off: a flipped digit is another digit (or none); turn on for natural images.
                "flip": False,
                "pad_mode": "edge",
                "noise_std": 0.0,
            },
            "sequence": {"max_shift": 2, "pad_mode": "edge", "noise_std": 0.0},
            "tabular": {"noise_std": 0.1},  # in units of the (normalized) feature scale
        }
    )


def step_key(seed: int, step: jax.Array) -> jax.Array:
    """The augmentation key of training step `step`: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _STREAM), step)


def random_shift(
    key: jax.Array, x: jax.Array, max_shift: int, axes: tuple[int, ...], pad_mode: str = "edge"
) -> jax.Array:
    """Translate each example by its own offset in [-max_shift, max_shift] along `axes`.

    Padding by `max_shift` and cropping the original size at a random offset is a translation
    whose uncovered border is filled by `pad_mode`; `axes` index x (axis 0 is the batch).
    """
    if max_shift <= 0:
        return x
    pad = [(0, 0)] * x.ndim
    for axis in axes:
        pad[axis] = (max_shift, max_shift)
    padded = jnp.pad(x, pad, mode=pad_mode)
    offsets = jax.random.randint(key, (x.shape[0], len(axes)), 0, 2 * max_shift + 1)

    def crop(example, offset):
        starts = [jnp.zeros((), offset.dtype)] * (x.ndim - 1)
        for i, axis in enumerate(axes):
            starts[axis - 1] = offset[i]
        return jax.lax.dynamic_slice(example, starts, x.shape[1:])

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, x: jax.Array, axis: int) -> jax.Array:
    """Reverse each example along `axis` with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(flip, jnp.flip(x, axis), x)


def add_noise(key: jax.Array, x: jax.Array, std: float) -> jax.Array:
    """x plus independent Gaussian noise of standard deviation `std`."""
    if std <= 0:
        return x
    return x + std * jax.random.normal(key, x.shape, x.dtype)


def augment_batch(key: jax.Array, x: jax.Array, kind: str, cfg: Mapping[str, Any]) -> jax.Array:
    """A randomly augmented copy of the batch `x` (shape and dtype kept), per `cfg[kind]`.

    `cfg` is config.augment (or a mapping with the same per-kind blocks); every example gets
    its own random shift, flip and noise.
    """
    if kind not in KINDS:
        raise ValueError(f"augmentation kind={kind!r} is unknown; valid: {', '.join(KINDS)}")
    opts = cfg[kind]
    k_shift, k_flip, k_noise = jax.random.split(key, 3)
    if kind == "image":  # (N, H, W, C)
        x = random_shift(k_shift, x, int(opts["max_shift"]), (1, 2), opts["pad_mode"])
        if opts["flip"]:
            x = random_flip(k_flip, x, axis=2)
    elif kind == "sequence":  # (N, T, F)
        x = random_shift(k_shift, x, int(opts["max_shift"]), (1,), opts["pad_mode"])
    return add_noise(k_noise, x, float(opts["noise_std"]))


def make_augment(kind: str, cfg: Mapping[str, Any]) -> AugmentFn:
    """`augment_batch` bound to `kind` and a frozen copy of its options: (key, x) -> x."""
    if kind not in KINDS:
        raise ValueError(f"augmentation kind={kind!r} is unknown; valid: {', '.join(KINDS)}")
    # A plain copy: later edits of the (mutable) config must not change a built Task.
    opts = cfg[kind]
    opts = dict(opts.to_dict() if isinstance(opts, ml_collections.ConfigDict) else opts)
    return functools.partial(augment_batch, kind=kind, cfg={kind: opts})


def describe(kind: str, cfg: Mapping[str, Any]) -> str:
    """One line naming what augmentation does for `kind`, for reports."""
    opts = cfg[kind]
    parts = []
    if opts.get("max_shift", 0):
        unit = "pixels" if kind == "image" else "steps"
        parts.append(f"shift ≤ {opts['max_shift']} {unit} ({opts['pad_mode']} padding)")
    if opts.get("flip", False):
        parts.append("horizontal flip")
    if opts.get("noise_std", 0):
        parts.append(f"noise σ={opts['noise_std']:g}")
    return ", ".join(parts) or "nothing (every option is off)"
