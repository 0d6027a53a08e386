"""Validation of the models' constructor arguments: a bad one is a one-line ModelOptionError
naming the value and what is valid."""

from collections.abc import Sequence


class ModelOptionError(ValueError):
    """A bad model name, constructor option or input shape: one line naming it and the valid."""


def positive_int(value: object, what: str) -> int:
    """Return `value` as an int if it is a positive integer, else raise ModelOptionError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelOptionError(f"{what}={value!r} is invalid; expected a positive integer")
    return value


def int_tuple(value: object, what: str, *, allow_empty: bool = True) -> tuple[int, ...]:
    """A tuple of positive ints from an int or a sequence of ints, else ModelOptionError."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ModelOptionError(
            f"{what}={value!r} is invalid; expected a sequence of positive integers"
        )
    if not value and not allow_empty:
        raise ModelOptionError(
            f"{what}={value!r} is invalid; expected at least one positive integer"
        )
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelOptionError(
                f"{what}={tuple(value)!r} is invalid; expected a sequence of positive integers"
            )
    return tuple(value)


def input_shape(value: object, model: str, ndim: int | None, layout: str) -> tuple[int, ...]:
    """Check an input_shape (batch dim excluded) has `ndim` positive dims; `layout` names them."""
    try:
        shape = int_tuple(value, "input_shape", allow_empty=False)
    except ModelOptionError:
        shape = None
    if shape is None or (ndim is not None and len(shape) != ndim):
        raise ModelOptionError(
            f"input_shape={value!r} is invalid for model {model!r}; "
            f"expected {layout} of positive integers (batch dim excluded)"
        )
    return shape


def dropout_rate(value: object) -> float:
    """Return a dropout rate in [0, 1), else raise ModelOptionError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < 1.0:
        raise ModelOptionError(f"dropout_rate={value!r} is invalid; expected a float in [0, 1)")
    return float(value)


def choice(value: object, what: str, valid: Sequence[str]) -> str:
    """Return `value` if it is one of `valid`, else raise ModelOptionError listing them."""
    if not isinstance(value, str) or value not in valid:
        raise ModelOptionError(f"{what}={value!r} is invalid; expected one of: {', '.join(valid)}")
    return value


# Token ids (workflow.data's text path): 0 pads a sequence, 1 stands for an unknown word.
PAD_ID = 0


def token_inputs(vocab_size: object, embed_size: object, features: int, model: str) -> tuple:
    """(vocabulary size, features per step after the embedding): (0, features) for inputs that
    are features, (vocab_size, embed_size) for token ids."""
    vocab = token_vocabulary(vocab_size, features, model)
    return vocab, positive_int(embed_size, "embed_size") if vocab else features


def token_vocabulary(value: object, features: int, model: str) -> int:
    """Return `value` as a vocabulary size: 0 (inputs are features, no embedding) or an integer
    >= 2 for token-id inputs, which must then have one feature per step: (T, 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value == 1:
        raise ModelOptionError(
            f"vocab_size={value!r} is invalid; expected 0 (no embedding) or an integer >= 2 "
            "(the number of token ids, padding and unknown included)"
        )
    if value and features != 1:
        raise ModelOptionError(
            f"vocab_size={value} makes model {model!r} embed token ids, which come shaped "
            f"(T, 1); the input has {features} features per step"
        )
    return value
