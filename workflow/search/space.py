"""The search space: which config keys the search varies, over which values (config.search.space).

A space is a string of comma-separated entries, each one config key with its values:

    optimizer.learning_rate=log:1e-5:1e-1     log-uniform in [1e-5, 1e-1]
    model.dropout=linear:0:0.5                uniform in [0, 0.5]
    optimizer.schedule.warmup_steps=int:0:500 a uniform integer in [0, 500]
    model.hidden_sizes=cat:(64,):(128,64)     one of the listed values (Python literals; a
                                              bare word is a string: cat:adam:sgd)
    optimizer.learning_rate                   learning rate or L2 without a range: the
    l2                                        search.lr_range / search.reg_range one (log)

The empty space (the default) is the learning rate and the L2 weight over those two ranges.
Every key must be one the config has and one a trial trains with (`SEARCHABLE_BLOCKS`,
`SEARCHABLE_KEYS`: the model, the optimizer, augmentation, L2, batch size, loss, dtype), and
every value one the config can take (its type, its validation), or the space is bad input
naming the entry.

Keys fall in two kinds. Per-trial keys (`PER_TRIAL`: the learning rate, the L2 weight and the
clipping norm) are traced scalars of the optimizer state: the trials of one compiled program
each carry their own. Any other key changes the compiled program (a width, the batch size,
the model, the accumulation of gradients, a schedule's warm-up...): the trials of one
combination of its values (`group_key`) form a group that trains as its own programs.

Each refined round narrows every key around the best trials' values (`refined`): numeric keys
to the span of their values plus a margin (log keys in log space, as the default space always
did; linear and integer keys inside the entry's own bounds, integers staying integers),
categorical keys to the values the best trials used.
"""

import ast
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import ml_collections

import models
from workflow.errors import UsageError

SCALES = ("log", "linear", "int", "cat")
# What a trial trains with (trials.TrialRunner reads these from its config): other keys (the
# data, the run's length and logging, the other stages' settings) would change nothing in a
# trial, so searching them is refused.
SEARCHABLE_BLOCKS = ("model", "optimizer", "augment")
SEARCHABLE_KEYS = ("l2", "batch_size", "loss", "dtype")
# Per-trial keys and the names their values have in trial records and Optuna (the search's
# names since it began: learning_rate and l2).
PER_TRIAL = {
    "optimizer.learning_rate": "learning_rate",
    "l2": "l2",
    "optimizer.clip_norm": "optimizer.clip_norm",
}
# Keys that may be given without a range: the default space's two, over its ranges.
DEFAULT_RANGES = {"optimizer.learning_rate": "lr_range", "l2": "reg_range"}
SYNTAX = (
    "entries key=log:low:high, key=linear:low:high, key=int:low:high or key=cat:v1:v2:..., "
    "separated by commas (docs/configs.md, search.space)"
)
_PRIMITIVE = (type(None), bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched config key: its scale and range (log, linear, int) or values (cat)."""

    key: str
    scale: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()

    @property
    def name(self) -> str:
        """The name of its values in trial records and Optuna params."""
        return PER_TRIAL.get(self.key, self.key)

    @property
    def per_trial(self) -> bool:
        """Whether trials of one program each take their own value (else: a group key)."""
        return self.key in PER_TRIAL

    def value(self, u: float) -> Any:
        """The value at fraction `u` in [0, 1) of the dimension."""
        if self.scale == "log":
            low, high = self.low, self.high
            value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
            return float(min(high, max(low, value)))
        if self.scale == "linear":
            return float(min(self.high, max(self.low, self.low + u * (self.high - self.low))))
        if self.scale == "int":
            span = int(self.high) - int(self.low)
            return int(self.low) + min(int(u * (span + 1)), span)
        return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]

    def distribution(self):
        """The Optuna distribution of its values (as `encode` writes them)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.scale in ("log", "linear"):
            return FloatDistribution(self.low, self.high, log=self.scale == "log")
        if self.scale == "int":
            return IntDistribution(int(self.low), int(self.high))
        return CategoricalDistribution([encode(c) for c in self.choices])

    def encode(self, value: Any) -> Any:
        """`value` as Optuna stores it (a categorical tuple as its Python literal)."""
        return encode(value) if self.scale == "cat" else value

    def decode(self, stored: Any) -> Any:
        """The value an Optuna param `stored` stands for."""
        if self.scale != "cat":
            return int(stored) if self.scale == "int" else float(stored)
        return self.choices[[encode(c) for c in self.choices].index(stored)]

    def to_json(self) -> dict[str, Any]:
        """The summary.json form."""
        return {
            "key": self.key,
            "scale": self.scale,
            "low": self.low,
            "high": self.high,
            "choices": [_jsonable(c) for c in self.choices],
        }

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> "Dimension":
        """A dimension back from its to_json form."""
        return cls(
            stored["key"],
            stored["scale"],
            stored.get("low"),
            stored.get("high"),
            tuple(tupled(c) for c in stored.get("choices", ())),
        )

    def describe(self) -> str:
        """The range as the report writes it: `1e-05..0.1 (log)`, `{(64,), (128,)}`."""
        if self.scale == "cat":
            return "{" + ", ".join(str(encode(c)) for c in self.choices) + "}"
        return f"{self.low:.3g}..{self.high:.3g} ({self.scale})"


def encode(value: Any) -> Any:
    """A categorical value as Optuna can store it: primitives as they are, others (tuples)
    as their Python literal."""
    return value if isinstance(value, _PRIMITIVE) else repr(tupled(value))


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, tuple | list) else value


def tupled(value: Any) -> Any:
    """JSON lists back to the tuples configs hold."""
    return tuple(tupled(v) for v in value) if isinstance(value, list | tuple) else value


def default_space(lr_range: Sequence[float], reg_range: Sequence[float]) -> tuple[Dimension, ...]:
    """The default space: the learning rate and the L2 weight, log-uniform over their ranges."""
    return (
        Dimension("optimizer.learning_rate", "log", float(lr_range[0]), float(lr_range[1])),
        Dimension("l2", "log", float(reg_range[0]), float(reg_range[1])),
    )


def group_key(dimensions: Sequence[Dimension], values: dict[str, Any]) -> tuple:
    """The values of a trial's group keys: trials with equal ones share compiled programs."""
    return tuple((d.key, tupled(values[d.name])) for d in dimensions if not d.per_trial)


def group_order(dimensions: Sequence[Dimension], values: dict[str, Any]) -> tuple:
    """A sort key putting the trials of one group together (by each group key's position)."""
    order = []
    for d in dimensions:
        if d.per_trial:
            continue
        value = tupled(values[d.name])
        order.append(d.choices.index(value) if d.scale == "cat" else value)
    return tuple(order)


def group_values(dimensions: Sequence[Dimension], values: dict[str, Any]) -> dict[str, Any]:
    """A trial's group keys as config overrides (`config_lib.apply_overrides`)."""
    return {d.key: tupled(values[d.name]) for d in dimensions if not d.per_trial}


def refined(dimension: Dimension, values: Sequence[Any]) -> Dimension:
    """`dimension` narrowed around the best trials' `values`: log keys to their span in log
    space widened by a quarter of the range's width on each side (at least 0.1 decade: room to
    move off an edge, as the default space always had); linear and integer keys to their span
    widened by an eighth of the range, inside the range (a linear bound is often a hard one:
    a rate in [0, 1], a count >= 0); categorical keys to the values used (in the entry's
    order)."""
    if dimension.scale == "log":
        low, high = dimension.low, dimension.high
        logs = [math.log10(v) for v in values]
        margin = max(0.1, 0.25 * (math.log10(high) - math.log10(low)) / 2)
        return dataclasses.replace(
            dimension, low=float(10 ** (min(logs) - margin)), high=float(10 ** (max(logs) + margin))
        )
    if dimension.scale in ("linear", "int"):
        margin = (dimension.high - dimension.low) / 8
        low = max(dimension.low, min(values) - margin)
        high = min(dimension.high, max(values) + margin)
        if dimension.scale == "int":
            return dataclasses.replace(dimension, low=math.floor(low), high=math.ceil(high))
        return dataclasses.replace(dimension, low=float(low), high=float(high))
    used = {tupled(v) for v in values}
    return dataclasses.replace(dimension, choices=tuple(c for c in dimension.choices if c in used))


def split_top_level(text: str, separator: str) -> list[str]:
    """`text` split at `separator` outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _literal(text: str) -> Any:
    """A categorical value: a Python literal, or else the bare word as a string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tupled(value)


def _number(text: str, entry: str, integer: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(entry, f"{text!r} is not a number") from None
    if integer and value != int(value):
        raise _bad(entry, f"{text!r} is not an integer (scale int)")
    if not math.isfinite(value):
        raise _bad(entry, f"{text!r} is not finite")
    return int(value) if integer else value


def _bad(entry: str, problem: str) -> UsageError:
    return UsageError(f"invalid search.space entry {entry!r}: {problem}")


def parse_entry(entry: str, search: ml_collections.ConfigDict) -> Dimension:
    """One entry of the space, checked for its form (not yet against the config)."""
    key, eq, spec = (part.strip() for part in entry.partition("="))
    if not key:
        raise _bad(entry, f"no key; {SYNTAX}")
    if not eq:
        if key not in DEFAULT_RANGES:
            raise _bad(entry, f"no range; only {', '.join(DEFAULT_RANGES)} may omit it; {SYNTAX}")
        low, high = search[DEFAULT_RANGES[key]]
        return Dimension(key, "log", float(low), float(high))
    scale, *args = split_top_level(spec, ":")
    if scale not in SCALES:
        raise _bad(entry, f"scale {scale!r} is not one of {', '.join(SCALES)}; {SYNTAX}")
    if scale == "cat":
        choices = tuple(_literal(a) for a in args if a)
        if len(choices) < 2 or len(set(map(encode, choices))) != len(choices):
            raise _bad(entry, "a categorical entry needs two or more different values")
        return Dimension(key, scale, choices=choices)
    if len(args) != 2:
        raise _bad(entry, f"scale {scale} needs low:high; {SYNTAX}")
    low, high = (_number(a, entry, scale == "int") for a in args)
    if low >= high:
        raise _bad(entry, f"low {low:g} >= high {high:g}: the range is empty")
    if scale == "log" and low <= 0:
        raise _bad(entry, f"a log range must satisfy 0 < low < high (low is {low:g})")
    return Dimension(key, scale, low, high)


def parse_space(config: ml_collections.ConfigDict) -> tuple[Dimension, ...]:
    """config.search.space as its dimensions, checked against the config: () for the default
    (learning rate and L2 over search.lr_range and search.reg_range); a bad entry is a
    one-line UsageError naming it and what is valid."""
    text = (config.search.get("space") or "").strip()
    if not text:
        return ()
    entries = [e for e in split_top_level(text, ",") if e]
    dimensions = [parse_entry(entry, config.search) for entry in entries]
    seen = set()
    for entry, dimension in zip(entries, dimensions, strict=True):
        if dimension.key in seen:
            raise _bad(entry, f"{dimension.key} is named twice")
        seen.add(dimension.key)
        check_against_config(entry, dimension, config)
    return tuple(dimensions)


def instance_hint(model: ml_collections.ConfigDict) -> str:
    """Why a model block holds no options: a model handed to workflow.api as an instance (a
    `@python` name with no options) is used as built; its class would take them."""
    if set(model.keys()) == {"name"} and str(model.name).endswith(models.IN_PROCESS_SUFFIX):
        return (
            f" ({model.name} was given as an instance, used as built: give its class to search "
            "its options)"
        )
    return ""


def _leaf_or_error(config: ml_collections.ConfigDict, entry: str, key: str) -> None:
    """Raise unless `key` names a value (not a block) of `config`."""
    node: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            parent = ".".join(parts[:depth]) or "config"
            keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            hint = instance_hint(node) if parent == "model" else ""
            raise _bad(entry, f"unknown config key {key!r}; {parent} has: {', '.join(keys)}{hint}")
        node = node[part]
    if isinstance(node, ml_collections.ConfigDict):
        raise _bad(entry, f"{key} is a block; name one of its keys: {', '.join(sorted(node))}")
    if parts[0] not in SEARCHABLE_BLOCKS and key not in SEARCHABLE_KEYS:
        raise _bad(
            entry,
            f"{key} does not change how a trial trains; searchable: "
            + ", ".join([f"{b}.*" for b in SEARCHABLE_BLOCKS] + list(SEARCHABLE_KEYS)),
        )


def check_against_config(entry: str, dimension: Dimension, config: ml_collections.ConfigDict):
    """Raise unless the config has the key and takes every value of the entry (its ends, or
    each categorical value): of the key's type, and passing the config's validation."""
    _leaf_or_error(config, entry, dimension.key)
    values = dimension.choices if dimension.scale == "cat" else (dimension.low, dimension.high)
    for value in values:
        with_value(config, {dimension.key: value}, entry)


def with_value(
    config: ml_collections.ConfigDict, values: dict[str, Any], entry: str | None = None
) -> ml_collections.ConfigDict:
    """A copy of `config` with `values` (config keys) set and validated; a value the key cannot
    take is a UsageError naming `entry` (or the key)."""
    from workflow import config_lib

    copy = config.copy_and_resolve_references()
    with copy.unlocked():
        copy.search.space = ""  # the copy's own space is not validated again
    try:
        for key, value in values.items():
            problem = _kind_problem(key, _get(copy, key), value)
            if problem:
                raise UsageError(problem)
            config_lib.apply_overrides(copy, {key: value})
        config_lib.validate_config(copy)
    except UsageError as e:
        if entry is None:
            raise
        raise _bad(entry, str(e)) from None
    return copy


def _kind_problem(key: str, current: Any, value: Any) -> str | None:
    """Why `value` cannot stand for `key` (whose value is `current`), or None: it must be of
    its kind (a number, an integer, a string, a tuple, True/False); an unset key takes any."""
    if current is None:
        return None
    kinds = (
        (bool, "True or False"),
        (tuple, "a tuple"),
        (str, "a string"),
        (int, "an integer (scales int or cat)"),
        (float, "a number"),
    )
    for kind, words in kinds:
        if isinstance(current, kind):
            if kind is int and key in PER_TRIAL:
                kind = int | float
            if kind is float:
                kind = int | float
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                return f"{value!r} is not {words} like {key}={current!r}"
            return None
    return None


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node
