"""The workflow's decision list: for a verdict, the remedies to try, each as a changed config.

Underfit (reduce bias): a bigger model of the same family (deeper too, where it has hidden
layers), then the next architecture up its ladder, less regularization, the learning rate
re-tuned. Overfit (reduce variance): more data when the dataset has more (a bigger train_size,
or more examples drawn from a generator: synthetic, mnist1d), normalization layers,
augmentation, dropout / weight decay, early stopping, a smaller model. Val overfit: a bigger
validation split. Each remedy is a pure function of the config.

Which options set a model's size, how it grows deeper, which architecture comes next and what
to adapt to the data, each model declares itself (models/__init__.py, read through
models.growth): nothing here knows a model by name.
"""

import dataclasses
import math
from collections.abc import Sequence

import ml_collections

import models
from models import growth
from workflow import config_lib

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


def _model_class(model: ml_collections.ConfigDict) -> type:
    return models.get_model_class(model.name)


def scale_model(model: ml_collections.ConfigDict, factor: float) -> dict | None:
    """The size options the model declares, times `factor`; None if it has none."""
    return growth.scaled_options(_model_class(model), model.to_dict(), factor)


def escalated(
    config: ml_collections.ConfigDict, input_shape: Sequence[int]
) -> ml_collections.ConfigDict | None:
    """The config with the next architecture up the model's ladder that is registered, at its
    defaults adapted to the input; None at the top of the ladder."""
    for name in growth.next_models(_model_class(config.model), input_shape):
        if name not in models.MODELS:
            continue
        new = _copy(config)
        new.model = config_lib.model_config(name)
        adapted = growth.options_for_input(models.MODELS[name], new.model.to_dict(), input_shape)
        for key, value in adapted.items():
            new.model[key] = value
        return new
    return None


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
    deeper = growth.deeper_options(_model_class(model), model.to_dict())
    if deeper:
        out.append(
            Remedy(
                "deeper model",
                "underfit",
                "underfit: one more hidden layer",
                _describe(deeper),
                _with_model(config, **deeper),
            )
        )
    new = escalated(config, dataset.input_shape)
    if new is not None:
        name = new.model.name
        out.append(
            Remedy(
                f"escalate to {name}",
                "underfit",
                f"underfit: a model closer to the state of the art ({model.name} → {name})",
                f"model={name}",
                new,
            )
        )
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
    # Unlocked: a generator left at its defaults has none of these keys in the config yet.
    with more.dataset.kwargs.unlocked():
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


def notes(config: ml_collections.ConfigDict, verdicts: list[str]) -> list[str]:
    """What the decision list leaves out for this setup that it would offer another, and why:
    a model that declares no size options gets no bigger or smaller model."""
    if not {"underfit", "overfit"} & set(verdicts):
        return []
    if growth.size_options(_model_class(config.model)):
        return []
    return [
        f"model {config.model.name!r} declares no size options (SIZE_OPTIONS), so no bigger or "
        "smaller model is tried; see models/__init__.py"
    ]


def remedy_gain_noise(error: float, n: int, z: float = 2.0) -> float:
    """z standard errors of the difference of two error rates near `error`, each on the same n
    examples: the noise a remedy's gain over the baseline must beat. The variance is floored at
    1/n so an error near 0 or 1 is not taken as exact."""
    return z * math.sqrt(2 * max(error * (1 - error), 1.0 / n) / n)
