"""The workflow's decision list: for a verdict, the remedies to try, each as a changed config.

Underfit (reduce bias): a bigger model of the same family, then the next architecture (LeNet →
ResNet, LSTM/TCN → attention or WaveNet-like, MLP → deeper/wider), less regularization, the
learning rate re-tuned. Overfit (reduce variance): more data when the dataset has more (a
bigger train_size, or more examples drawn from a generator: synthetic, mnist1d), normalization
layers, augmentation, dropout / weight decay, early stopping, a smaller model. Val overfit: a
bigger validation split. Each remedy is a pure function of the config.
"""

import dataclasses
import math

import ml_collections

import models
from workflow import config_lib

# Model options that set its size: doubled for "bigger", halved for "smaller".
SIZE_KEYS = ("hidden_sizes", "features", "channels", "hidden_size", "width", "d_model", "mlp_dim")

# The next architecture to escalate to, most promising first (names that exist are used).
ESCALATION = {
    "lenet": ("resnet_small", "resnet20"),
    "resnet_small": ("resnet20",),
    "resnet": ("resnet32",),
    "resnet20": ("resnet32",),
    "resnet32": ("resnet56",),
    # WaveNet first: on MNIST-1D it reached 93% test at the defaults (3,000 steps, Adam 3e-4)
    # where the Transformer reached 78% (it overfits) and the LSTM 54%.
    "lstm": ("wavenet", "transformer"),
    "tcn": ("wavenet", "transformer"),
    "wavenet": ("transformer",),
    "transformer": ("wavenet",),
}

# Normalization layer by data kind: BatchNorm for images, LayerNorm elsewhere (batch statistics
# of a sequence or table batch are a poor estimate of the population).
NORM_FOR_KIND = {"image": "batch", "sequence": "layer", "tabular": "layer"}


@dataclasses.dataclass
class Remedy:
    """One candidate: its name, the verdict it answers, why, and the config to run."""

    name: str
    verdict: str  # underfit | overfit | val_overfit | baseline
    reason: str
    change: str  # what differs from the starting point, for the table
    config: ml_collections.ConfigDict


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return config.copy_and_resolve_references()


def scale_model(model: ml_collections.ConfigDict, factor: float) -> dict | None:
    """The model's size options times `factor` (at least 1 unit each); None if it has none."""
    changed = {}
    for key in SIZE_KEYS:
        if key not in model:
            continue
        value = model[key]
        if isinstance(value, list | tuple):
            changed[key] = tuple(max(1, round(v * factor)) for v in value)
        elif isinstance(value, int):
            changed[key] = max(1, round(value * factor))
    if "d_model" in changed and "num_heads" in model:  # heads must divide the width
        heads = model.num_heads
        changed["d_model"] = max(heads, changed["d_model"] // heads * heads)
    return changed or None


def _with_model(config, **values) -> ml_collections.ConfigDict:
    new = _copy(config)
    for key, value in values.items():
        new.model[key] = value
    return new


def _describe(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def underfit_remedies(config, dataset, suggested_lr: float | None) -> list[Remedy]:
    """Reduce bias: bigger, the next architecture, less regularization, the lr re-tuned."""
    out = []
    model = config.model
    bigger = scale_model(model, 2.0)
    if bigger:
        out.append(
            Remedy(
                "bigger model",
                "underfit",
                "underfit: make the model bigger (reduces bias)",
                _describe(bigger),
                _with_model(config, **bigger),
            )
        )
    if model.name == "mlp" and model.hidden_sizes:
        deeper = (*model.hidden_sizes, model.hidden_sizes[-1])
        out.append(
            Remedy(
                "deeper model",
                "underfit",
                "underfit: one more hidden layer",
                f"hidden_sizes={deeper}",
                _with_model(config, hidden_sizes=deeper),
            )
        )
    for name in ESCALATION.get(model.name, ()):
        if name not in models.MODELS:
            continue
        if (
            name == "resnet20"
            and "resnet_small" in models.MODELS
            and min(dataset.input_shape[:2]) <= 16
        ):
            continue  # an 8x8 image is too small for the CIFAR ResNet's two downsamplings
        new = _copy(config)
        new.model = config_lib.model_config(name)
        if name == "wavenet":  # as many dilated layers as the sequence has room for
            from models import wavenet

            new.model.num_layers = min(
                new.model.num_layers,
                wavenet.layers_to_cover(dataset.input_shape[0], new.model.kernel_size),
            )
        out.append(
            Remedy(
                f"escalate to {name}",
                "underfit",
                f"underfit: a model closer to the state of the art ({model.name} → {name})",
                f"model={name}",
                new,
            )
        )
        break  # the first available step of the ladder
    less = _copy(config)
    dropped = []
    if config.l2 > 0:
        less.l2 = 0.0
        dropped.append(f"l2 {config.l2:g} → 0")
    if config.optimizer.weight_decay > 0:
        less.optimizer.weight_decay = 0.0
        dropped.append(f"weight_decay {config.optimizer.weight_decay:g} → 0")
    if model.get("dropout_rate", 0.0):
        less.model.dropout_rate = 0.0
        dropped.append(f"dropout {model.dropout_rate:g} → 0")
    if dropped:
        out.append(
            Remedy(
                "less regularization",
                "underfit",
                "underfit: reduce regularization",
                "; ".join(dropped),
                less,
            )
        )
    longer = _copy(config)
    longer.num_steps = 2 * config.num_steps
    out.append(
        Remedy(
            "train longer",
            "underfit",
            "underfit: tune hyperparameters (the training length)",
            f"num_steps {config.num_steps:,} → {longer.num_steps:,}",
            longer,
        )
    )
    lr = config.optimizer.learning_rate
    if suggested_lr and not 0.5 <= suggested_lr / lr <= 2:
        retuned = _copy(config)
        retuned.optimizer.learning_rate = float(suggested_lr)
        out.append(
            Remedy(
                "re-tuned lr",
                "underfit",
                "underfit: tune the learning rate (the range test's suggestion)",
                f"learning_rate {lr:g} → {suggested_lr:.3g}",
                retuned,
            )
        )
    return out


def generated_more(dataset_name: str, info: dict) -> tuple[dict, str] | None:
    """Dataset kwargs that make a generator draw twice the training examples with a test split
    of the same size, and what changes; None for data of a fixed size."""
    if dataset_name == "synthetic" and "options" in info:
        # The test split is its own random stream: more train examples leave it unchanged.
        count = int(info["options"]["num_train"])
        return (
            {"num_train": 2 * count},
            f"num_train {count:,} → {2 * count:,} (generated; the same test split)",
        )
    if dataset_name == "mnist1d" and "generator_args" in info:
        args = info["generator_args"]
        total = args["num_samples"] // 10 * 10  # make_dataset draws num_samples // 10 per class
        train = int(total * args["train_split"])
        samples = -(-(total + train) // 10) * 10
        # A hair above the exact fraction: make_dataset floors samples * train_split.
        split = (2 * train + 0.5) / samples
        return (
            {"num_samples": samples, "train_split": split},
            f"num_samples {args['num_samples']:,} → {samples:,}, train_split → {split:.4f} "
            f"(generated: {2 * train:,} train, {samples - 2 * train:,} test, all newly drawn)",
        )
    return None


def more_data(
    config: ml_collections.ConfigDict, dataset, available_train: int | None
) -> tuple[ml_collections.ConfigDict, str, str] | None:
    """Twice the training examples (config, change, reason): a bigger train_size while the data
    at hand has more, else more drawn from a generator; None when neither is possible."""
    n_train = len(dataset.x_train)
    more = _copy(config)
    if available_train and available_train > n_train:
        size = min(available_train, 2 * n_train)
        more.dataset.train_size = size
        return more, f"train_size {n_train:,} → {size:,}", "overfit: add data"
    generated = generated_more(config.dataset.name, getattr(dataset, "info", None) or {})
    if generated is None:
        return None
    kwargs, change = generated
    for key, value in kwargs.items():
        more.dataset.kwargs[key] = value
    more.dataset.train_size = None  # it took every example: the new ones are for training
    return more, change, "overfit: add data (the generator draws more)"


def overfit_remedies(config, dataset, available_train: int | None) -> list[Remedy]:
    """Reduce variance: more data, normalization, augmentation, dropout / L2, early stopping,
    a smaller model."""
    out = []
    model = config.model
    more = more_data(config, dataset, available_train)
    if more is not None:
        out.append(Remedy("more data", "overfit", more[2], more[1], more[0]))
    if "norm" in model and model.norm == "none":
        norm = NORM_FOR_KIND[dataset.kind]
        out.append(
            Remedy(
                f"{norm} norm",
                "overfit",
                "overfit: add normalization layers",
                f"norm={norm}",
                _with_model(config, norm=norm),
            )
        )
    if "augment" in config and not config.augment.enabled and dataset.kind != "tabular":
        augmented = _copy(config)
        augmented.augment.enabled = True
        out.append(
            Remedy(
                "augmentation",
                "overfit",
                "overfit: add data augmentation",
                f"augment ({dataset.kind} defaults)",
                augmented,
            )
        )
    if "dropout_rate" in model:
        rate = min(0.5, model.dropout_rate + 0.2)
        if rate > model.dropout_rate:
            out.append(
                Remedy(
                    "dropout",
                    "overfit",
                    "overfit: increase regularization (dropout)",
                    f"dropout_rate {model.dropout_rate:g} → {rate:g}",
                    _with_model(config, dropout_rate=rate),
                )
            )
    for l2 in (1e-4, 1e-3) if config.l2 == 0 else (config.l2 * 10,):
        regularized = _copy(config)
        regularized.l2 = l2
        out.append(
            Remedy(
                f"L2 {l2:g}",
                "overfit",
                "overfit: increase regularization (L2 / weight decay)",
                f"l2 {config.l2:g} → {l2:g}",
                regularized,
            )
        )
    if "early_stopping" in config and not config.early_stopping.enabled:
        stopped = _copy(config)
        stopped.early_stopping.enabled = True
        out.append(
            Remedy(
                "early stopping",
                "overfit",
                "overfit: stop early on the validation metric",
                f"early_stopping on {stopped.early_stopping.metric}",
                stopped,
            )
        )
    smaller = scale_model(model, 0.5)
    if smaller:
        out.append(
            Remedy(
                "smaller model",
                "overfit",
                "overfit: reduce model size",
                _describe(smaller),
                _with_model(config, **smaller),
            )
        )
    return out


def val_overfit_remedies(config) -> list[Remedy]:
    """Val overfit: a bigger validation split, so choices made on it generalize."""
    fraction = config.dataset.val_fraction
    if fraction >= 0.5:
        return []
    new = _copy(config)
    new.dataset.val_fraction = min(0.5, 2 * fraction)
    return [
        Remedy(
            "bigger val split",
            "val_overfit",
            "val overfit: a validation set too small or selected on too often",
            f"val_fraction {fraction:g} → {new.dataset.val_fraction:g}",
            new,
        )
    ]


def candidates(
    config: ml_collections.ConfigDict,
    dataset,
    verdicts: list[str],
    *,
    suggested_lr: float | None = None,
    available_train: int | None = None,
    max_candidates: int | None = None,
) -> list[Remedy]:
    """The baseline and the remedies for the verdicts, in the workflow's order (bias first)."""
    out = [Remedy("baseline", "baseline", "the starting point", "-", _copy(config))]
    if "underfit" in verdicts:
        out += underfit_remedies(config, dataset, suggested_lr)
    if "overfit" in verdicts:
        out += overfit_remedies(config, dataset, available_train)
    if "val_overfit" in verdicts:
        out += val_overfit_remedies(config)
    if max_candidates is not None:
        out = out[: max_candidates + 1]
    return out


def noise_floor(error: float, n: int, z: float = 2.0) -> float:
    """z standard errors of the difference of two error rates near `error` on n examples each."""
    return z * math.sqrt(2 * max(error * (1 - error), 1.0 / n) / n)
