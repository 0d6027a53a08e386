"""The run directory contract: config.json, metrics.jsonl, summary.json, report.md, plots/."""

import json
import math
import os
import shutil
import sys
from typing import Any

import ml_collections
import numpy as np

from workflow.engine import distributed
from workflow.errors import UsageError

# Keys that may differ between a run and its resumption (they do not change the numbers).
RESUMABLE_KEYS = ("num_steps", "progress")


def to_jsonable(value: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, NaN/inf to strings, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def finite_or_none(value: float) -> float | None:
    """A float for JSON, with NaN/inf as None (null)."""
    value = float(value)
    return value if math.isfinite(value) else None


def write_json(path: str, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename), so a reader never sees half."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(to_jsonable(obj), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    """Read a JSON file."""
    with open(path) as f:
        return json.load(f)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON data."""
    return json.loads(config.to_json_best_effort())


def summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch at import time when it is installed, only to accept torch
    tensors; we log Python floats. Importing torch costs 2 to 6 s of every stage's start on a
    machine that has it, so torch is hidden for that one import (unless already imported).
    """
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class RunDir:
    """One stage's run directory; reopening an existing one resumes it."""

    def __init__(self, path: str):
        self.path = path
        self.plots = os.path.join(path, "plots")
        self.checkpoints = os.path.join(path, "checkpoints")
        self._tb = None
        # With several processes only process 0 writes files; the others train alongside.
        self.writer = distributed.is_writer()

    def file(self, name: str) -> str:
        """Path of a file inside the run directory."""
        return os.path.join(self.path, name)

    @property
    def exists(self) -> bool:
        """Whether a run was started here before."""
        return os.path.exists(self.file("config.json"))

    def check_resumable(self, config: ml_collections.ConfigDict) -> None:
        """Refuse to mix two different configs in one directory."""
        old = read_json(self.file("config.json"))
        new = config_to_dict(config)
        changed = sorted(
            k for k in set(old) | set(new) if k not in RESUMABLE_KEYS and old.get(k) != new.get(k)
        )
        if changed:
            raise UsageError(
                f"--workdir={self.path} holds a run with a different config (differs in "
                f"{', '.join(changed)}); use a new --workdir or delete this one"
            )

    def open(self, config: ml_collections.ConfigDict, *, resume_step: int | None) -> None:
        """Create (or reopen) the directory; keep only the metrics up to `resume_step`."""
        if not self.writer:
            return
        os.makedirs(self.plots, exist_ok=True)
        write_json(self.file("config.json"), config_to_dict(config))
        metrics_path = self.file("metrics.jsonl")
        kept = [r for r in self.read_metrics() if resume_step and r["step"] <= resume_step]
        with open(metrics_path + ".tmp", "w") as f:
            for record in kept:
                f.write(json.dumps(to_jsonable(record)) + "\n")
        os.replace(metrics_path + ".tmp", metrics_path)

    def read_metrics(self) -> list[dict]:
        """Every record of metrics.jsonl (empty when there is none)."""
        path = self.file("metrics.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl and to the TensorBoard event file."""
        if not self.writer:
            return
        with open(self.file("metrics.jsonl"), "a") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")
        if self._tb is None:
            self._tb = summary_writer_class()(os.path.join(self.path, "tensorboard"))
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(key, value, record["step"])

    def write_summary(self, summary: dict) -> None:
        """Write summary.json."""
        if not self.writer:
            return
        write_json(self.file("summary.json"), summary)

    def close(self) -> None:
        """Flush the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def remove(self) -> None:
        """Delete a directory this process created and could not finish setting up."""
        if not self.writer:
            return
        shutil.rmtree(self.path, ignore_errors=True)
