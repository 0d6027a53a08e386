"""Model zoo: NNX modules built as `Class(input_shape, num_outputs, *, rngs, **kwargs)`.

`build_model` builds these and any user class: one whose constructor starts with
`input_shape, num_outputs` gets them with its options; any other (the Flax docs'
`Model(din, dmid, dout, *, rngs)`) is called with its options and `rngs` only
(`takes_input_shape`), and options that do not fit are one line naming its parameters.

Every model maps float32 input (batch, *input_shape) to logits (batch, num_outputs); input_shape
excludes the batch dim: images (H, W, C), sequences (T, F), tabular (D,). A bad model name,
option or input shape raises ModelOptionError (a ValueError), one line naming the value and what
is valid. The zoo stands alone: it imports nothing from the workflow that trains its models.

Optional layers (norm, dropout, a token embedding) are built after the core layers, so turning
one on leaves the core layers' initial parameters as they are, seed for seed
(tests/test_models.py::test_optional_layers_leave_the_core_initialization_unchanged).

How a model grows, declared by the model class itself (all optional; the improve stage reads
them through models.growth to offer "bigger model", "deeper model", "smaller model" and
"escalate to ..." remedies):

    SIZE_OPTIONS       keyword options (an int or a tuple of ints) that set the model's width,
                       in the order a remedy lists them: "bigger model" doubles each, "smaller
                       model" halves each (rounded, at least 1). A model that declares none gets
                       neither remedy, and the improve stage says so.
    SIZE_DIVISIBLE_BY  {size option: option}: the scaled size is rounded down to a multiple of
                       the other option's value, at least one (a transformer's d_model is split
                       among num_heads heads).
    DEPTH_OPTION       a tuple option with one entry per hidden layer: "deeper model" repeats its
                       last entry.
    next_models(input_shape)
                       classmethod: registered names of the next architectures up the ladder for
                       inputs of this shape, most promising first; the first registered one is
                       tried. Default: none.
    options_for_input(options, input_shape)
                       classmethod: the options to change so the model, escalated to with its
                       default `options`, suits inputs of this shape (WaveNet's dilated layers
                       capped by the sequence length). Default: none.
"""

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from models import growth, validate
from models.lenet import LeNet
from models.lstm import LSTM
from models.mlp import MLP
from models.resnet import ResNet, ResNet20, ResNet32, ResNet56, ResNetSmall
from models.tcn import TCN
from models.transformer import TransformerClassifier
from models.validate import ModelOptionError
from models.wavenet import WaveNet

__all__ = [
    "IN_PROCESS_SUFFIX",
    "LOCAL_MODELS",
    "MODELS",
    "LSTM",
    "MLP",
    "ModelOptionError",
    "ResNet",
    "ResNet20",
    "ResNet32",
    "ResNet56",
    "ResNetSmall",
    "TCN",
    "TransformerClassifier",
    "WaveNet",
    "LeNet",
    "build_model",
    "count_params",
    "default_model_for_kind",
    "get_model_class",
    "in_process_only",
    "growth",
    "register_model",
    "takes_input_shape",
    "validate",
]

MODELS: dict[str, type] = {}
# Models handed over in Python (workflow.api: a notebook's class, an instance, a factory), by
# the name a config records; this process's only, and not part of the zoo.
LOCAL_MODELS: dict[str, type] = {}
# The end of every such name: a config that records one runs only in the process that made it.
IN_PROCESS_SUFFIX = "@python"


def in_process_only(what: str, name: str) -> str:
    """Why a config's `name` (a model or data handed over in Python) does not load here."""
    return (
        f"{what} {name!r} was handed over in Python (workflow.api) and exists only in that "
        "process: run this config there (api.evaluate(model, data, config=...)), or name an "
        "importable 'pkg.module:Name' or a data file instead"
    )


DEFAULT_MODEL_FOR_KIND: dict[str, str] = {"image": "lenet", "sequence": "lstm", "tabular": "mlp"}

# Constructor arguments every model takes positionally or from build_model itself.
_CORE_ARGS = ("self", "input_shape", "num_outputs", "rngs")


def register_model(name: str) -> Callable[[type], type]:
    """Class decorator adding an nnx.Module subclass to MODELS under `name`."""

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nnx.Module)):
            raise TypeError(f"register_model({name!r}) expects an nnx.Module subclass, got {cls!r}")
        if name in MODELS and MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {MODELS[name]!r}")
        MODELS[name] = cls
        return cls

    return decorator


for _name, _cls in (("mlp", MLP), ("lenet", LeNet), ("lstm", LSTM), ("tcn", TCN)):
    register_model(_name)(_cls)

# CIFAR ResNets: `resnet` is the class itself, depth 20.
for _name, _cls in (
    ("resnet", ResNet),
    ("resnet20", ResNet20),
    ("resnet32", ResNet32),
    ("resnet56", ResNet56),
    ("resnet_small", ResNetSmall),
):
    register_model(_name)(_cls)


# Sequence models with attention and with dilated causal convolutions.
for _name, _cls in (("transformer", TransformerClassifier), ("wavenet", WaveNet)):
    register_model(_name)(_cls)


def _valid_names() -> str:
    return f"{', '.join(sorted(MODELS))} or an import path 'pkg.module:ClassName'"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def get_model_class(name: str) -> type:
    """Resolve a registered short name or an import path 'pkg.module:ClassName' to a class."""
    if not isinstance(name, str):
        raise ModelOptionError(f"model={name!r} is invalid; expected {_valid_names()}")
    if name in MODELS:
        return MODELS[name]
    if name in LOCAL_MODELS:
        return LOCAL_MODELS[name]
    if name.endswith(IN_PROCESS_SUFFIX):
        raise ModelOptionError(in_process_only("model", name))
    if name.strip().lower() in MODELS:
        return MODELS[name.strip().lower()]
    module_path, sep, attr = name.partition(":")
    if not sep or not module_path or not attr:
        raise ModelOptionError(f"unknown model {name!r}; expected {_valid_names()}")
    try:
        obj: Any = importlib.import_module(module_path)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as e:  # any import-time failure is the user's path being wrong
        raise ModelOptionError(
            f"model {name!r} could not be loaded ({_one_line(e)}); expected {_valid_names()}"
        ) from e
    if not (isinstance(obj, type) and issubclass(obj, nnx.Module)):
        raise ModelOptionError(
            f"model {name!r} is {obj!r}, not an nnx.Module subclass; expected {_valid_names()}"
        )
    return obj


def _accepted_kwargs(cls: type) -> tuple[list[str], bool]:
    """Keyword options of cls.__init__ (core args excluded) and whether it takes **kwargs."""
    params = inspect.signature(cls.__init__).parameters.values()
    names = [
        p.name
        for p in params
        if p.name not in _CORE_ARGS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def takes_input_shape(cls: type) -> bool:
    """Whether cls follows the zoo's contract `Class(input_shape, num_outputs, *, rngs, ...)`:
    its first two positional parameters are named so (or it takes *args). Any other
    constructor (the Flax docs' `Model(din, dmid, dout, *, rngs)`) is called with the user's
    options and rngs only."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # self
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return positional[:2] == ["input_shape", "num_outputs"]


def constructor_text(cls: type) -> str:
    """The constructor's parameters as a user reads them: `(din, dmid, dout, *, rngs)`."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # self
    parts, star = [], False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        star = star or p.kind is p.VAR_POSITIONAL
        default = "" if p.default is p.empty else f"={p.default!r}"
        parts.append(f"{prefix}{p.name}{default}")
    return f"({', '.join(parts)})"


def build_model(
    name: str | type,
    input_shape: Sequence[int],
    num_outputs: int,
    *,
    rngs: nnx.Rngs,
    **kwargs: Any,
) -> nnx.Module:
    """Build model `name` (short name, import path or class); bad options: ModelOptionError.

    A class with the zoo's contract (`takes_input_shape`) is built as
    `Class(input_shape, num_outputs, *, rngs, **kwargs)`; any other as `Class(**kwargs, rngs)`,
    its sizes all given by the user (the output check then compares with num_outputs)."""
    cls = name if isinstance(name, type) else get_model_class(name)
    label = name if isinstance(name, str) else cls.__name__
    if not takes_input_shape(cls):
        return _build_free(cls, label, kwargs, rngs)
    accepted, takes_any = _accepted_kwargs(cls)
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown and not takes_any:
        raise ModelOptionError(
            f"unknown option(s) {', '.join(unknown)} for model {label!r}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    shape = validate.input_shape(input_shape, label, None, "a tuple")
    num_outputs = validate.positive_int(num_outputs, "num_outputs")
    try:
        return cls(shape, num_outputs, rngs=rngs, **kwargs)
    except ModelOptionError:
        raise
    except (TypeError, ValueError) as e:
        # A wrongly typed option usually surfaces as one of these deep inside a layer.
        options = ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) or "default options"
        raise ModelOptionError(
            f"cannot build model {label!r} for input_shape={shape} with {options} ({_one_line(e)})"
        ) from e


def _build_free(cls: type, label: str, kwargs: dict[str, Any], rngs: nnx.Rngs) -> nnx.Module:
    """`cls(**kwargs, rngs=rngs)` (rngs only where the constructor takes it); options that do
    not fit the constructor: ModelOptionError naming its parameters."""
    signature = inspect.signature(cls.__init__)
    params = signature.parameters
    takes_rngs = "rngs" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    call = {**kwargs, "rngs": rngs} if takes_rngs else dict(kwargs)
    try:
        signature.bind(None, **call)
    except TypeError as e:
        given = ", ".join(sorted(kwargs)) or "none"
        raise ModelOptionError(
            f"model {label!r} takes {constructor_text(cls)}, which the options given "
            f"({given}) do not fit ({e}); give each of its parameters as "
            "--config.model.kwargs.<name>=value (in Python: the model's own constructor)"
        ) from None
    return cls(**call)


def default_model_for_kind(kind: str) -> str:
    """Registered model name to start with for a data kind: image, sequence or tabular."""
    if kind not in DEFAULT_MODEL_FOR_KIND:
        raise ModelOptionError(
            f"unknown data kind {kind!r}; expected one of: {', '.join(DEFAULT_MODEL_FOR_KIND)}"
        )
    return DEFAULT_MODEL_FOR_KIND[kind]


def count_params(model: nnx.Module) -> int:
    """Total number of scalar entries in the model's nnx.Param variables."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
