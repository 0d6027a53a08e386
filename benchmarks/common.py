"""Shared pieces of the benchmarks: the MNIST-1D paper's setting, models and table printing."""

import json
import os
from typing import Any

import ml_collections

from workflow import config_lib

# The training setting of the MNIST-1D paper (Greydanus & Kobak, "Scaling down deep learning
# with MNIST-1D", 2024) for its MLP, CNN and GRU.
PAPER_LEARNING_RATE = 1e-2
PAPER_BATCH_SIZE = 100
PAPER_STEPS = 6000

# Our loader always carves a validation split from train; 10 of 4,000 examples is the smallest
# round fraction. reproduce_mnist1d.py folds them back so training sees all 4,000.
VAL_FRACTION = 0.0025

# Benchmark name -> (registered model, options). MLP and CNN are the paper's; the paper's
# recurrent model is a GRU, ours a one-layer LSTM read out at the last step.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {"hidden_sizes": (100, 100)}),  # 40-100-100-10, relu
    "cnn": ("tcn", {}),  # tcn defaults: 3 x (conv 25 channels, stride 2) -> dense
    "lstm": ("lstm", {"hidden_size": 32, "readout": "last"}),
}


def parse_models(text: str) -> list[str]:
    """Comma-separated benchmark model names, checked against MODELS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise ValueError(f"unknown model(s) {unknown or text!r}; valid: {', '.join(MODELS)}")
    return names


def paper_config(
    name: str, *, steps: int = PAPER_STEPS, seed: int = 0
) -> ml_collections.ConfigDict:
    """Our trainer's config for benchmark model `name` in the paper's setting."""
    model_name, options = MODELS[name]
    config = config_lib.base_config("mnist1d", config_lib.model_config(model_name, **options))
    config.seed = seed
    config.dataset.val_fraction = VAL_FRACTION
    # mnist1d already standardizes x (over train and test); the paper adds nothing on top.
    config.dataset.normalize = False
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = PAPER_LEARNING_RATE
    config.batch_size = PAPER_BATCH_SIZE
    config.num_steps = steps
    config.log_every = min(500, steps)
    config.eval_every = steps  # validation only at the end: it is not part of the benchmark
    config.checkpoint_every = 0
    config.progress = False
    return config


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [headers] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Write `payload` as indented JSON, creating the parent directory."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.write("\n")


def compilation_cache_env(cache_dir: str | None) -> dict[str, str]:
    """A fresh process's environment on the CPU: JAX's persistent compilation cache off
    (`cache_dir` None, every program compiled), or on in `cache_dir` with every program kept."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if cache_dir is None:
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    else:
        env.update(
            JAX_ENABLE_COMPILATION_CACHE="true",
            JAX_COMPILATION_CACHE_DIR=cache_dir,
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env
