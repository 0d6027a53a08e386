"""How a model grows: the declarations documented in models/__init__.py, read with their defaults.

A model class that declares nothing has no size options, no deeper form, no next step up the
ladder and nothing to adapt to its input. The improve stage (workflow/search/remedies.py) turns
these answers into remedies; nothing here knows a model by name.
"""

from collections.abc import Mapping, Sequence
from typing import Any


def size_options(cls: type) -> tuple[str, ...]:
    """The keyword options that set the model's width (SIZE_OPTIONS); () if it declares none."""
    return tuple(getattr(cls, "SIZE_OPTIONS", ()))


def scaled_options(cls: type, options: Mapping[str, Any], factor: float) -> dict | None:
    """The size options among `options` times `factor` (at least 1 unit each, rounded down to
    a multiple of any SIZE_DIVISIBLE_BY option); None if there are none."""
    changed = {}
    for key in size_options(cls):
        if key not in options:
            continue
        value = options[key]
        if isinstance(value, list | tuple):
            changed[key] = tuple(max(1, round(v * factor)) for v in value)
        elif isinstance(value, int):
            changed[key] = max(1, round(value * factor))
    for key, divisor in getattr(cls, "SIZE_DIVISIBLE_BY", {}).items():
        if key in changed and divisor in options:
            unit = options[divisor]
            changed[key] = max(unit, changed[key] // unit * unit)
    return changed or None


def deeper_options(cls: type, options: Mapping[str, Any]) -> dict | None:
    """One more hidden layer: the DEPTH_OPTION's last entry repeated; None without layers."""
    key = getattr(cls, "DEPTH_OPTION", None)
    layers = options.get(key) if key else None
    if not layers:
        return None
    return {key: (*layers, layers[-1])}


def next_models(cls: type, input_shape: Sequence[int]) -> tuple[str, ...]:
    """Names of the next architectures up the ladder for this input, most promising first."""
    declared = getattr(cls, "next_models", None)
    return tuple(declared(tuple(input_shape))) if declared is not None else ()


def options_for_input(
    cls: type, options: Mapping[str, Any], input_shape: Sequence[int]
) -> dict[str, Any]:
    """The options to change so the model with `options` suits inputs of this shape."""
    declared = getattr(cls, "options_for_input", None)
    return dict(declared(options, tuple(input_shape))) if declared is not None else {}
