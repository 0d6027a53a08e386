"""The run directory: its files, declared once (`FILES`), and `RunDir`, through which a stage
writes every one of them.

Only process 0 of a multi-process job writes (`distributed.is_writer()`): on every other
process each of RunDir's writing methods does nothing, and a plot is not even drawn. Every file
is written atomically (a temporary file, then a rename), so a reader never sees half of one.
Checkpoints are Orbax's (workflow/engine/checkpoints.py), under `CHECKPOINTS`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ml_collections

from workflow.engine import distributed
from workflow.errors import UsageError
from workflow.files import read_json, to_jsonable, write_json, write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from workflow.reporting.summary import Summary

# Keys that may differ between a run and its resumption (they do not change the numbers; `loop`
# at most their float rounding, workflow/engine/loop_form.py).
RESUMABLE_KEYS = ("num_steps", "progress", "loop")

# Every file and folder a run directory may hold (path inside it -> what it is).
FILES: dict[str, str] = {}


def _declare(name: str, meaning: str) -> str:
    FILES[name] = meaning
    return name


CONFIG = _declare("config.json", "the resolved config; a resumed run must have the same")
METRICS = _declare("metrics.jsonl", "one JSON record per logged step or evaluation")
SUMMARY = _declare("summary.json", "the stage's result (fields: workflow/reporting/summary.py)")
REPORT = _declare("report.md", "tables, findings, plots and next commands for a person")
REPORT_HTML = _declare("report.html", "run: the workflow's story as one self-contained page")
MODEL_SUMMARY = _declare("model_summary.txt", "NNX's table of the model's layers for one batch")
NORMALIZATION = _declare("normalization.json", "the training split's per-channel mean and std")
RANGE_TEST = _declare("range_test.json", "tune: the learning-rate range test and its curve")
BEST_CONFIG = _declare("best_config.py", "tune, improve: the chosen setup as a --config file")
STUDY = _declare("study.db", "tune: the Optuna study (SQLite) a killed search resumes from")
WORKFLOW = _declare("workflow.json", "run: the finished steps and their summaries")
CHECKPOINTS = _declare("checkpoints", "Orbax checkpoints and their checksums.json")
TENSORBOARD = _declare("tensorboard", "TensorBoard event files of metrics.jsonl's numbers")
BEST = _declare("best", "tune: the best trial retrained at full length (a run directory)")
BASELINE = _declare("baseline", "improve: the starting point's evaluated run directory")
PLOTS = _declare("plots", "the PNG plots below")
PLOT_LEARNING_CURVES = _declare("plots/learning_curves.png", "train/val loss, accuracy by step")
PLOT_OVERFIT_BATCH = _declare("plots/overfit_batch.png", "debug: overfitting one batch")
PLOT_SHORT_RUN = _declare("plots/short_run.png", "debug: the short run's learning curves")
PLOT_ERROR_CURVES = _declare("plots/error_curves.png", "evaluate: loss and error, goal marked")
PLOT_TRAIN_SIZE = _declare("plots/train_size.png", "evaluate: error against training-set size")
PLOT_CONFUSION_MATRIX = _declare("plots/confusion_matrix.png", "evaluate: train | val confusions")
PLOT_WORST_EXAMPLES = _declare("plots/worst_examples.png", "evaluate: most confident mistakes")
PLOT_SEARCH = _declare("plots/search.png", "tune: the metric against each hyperparameter")
PLOT_TRIAL_CURVES = _declare("plots/trial_curves.png", "tune: every trial's training loss")
PLOT_LR_RANGE_TEST = _declare("plots/lr_range_test.png", "tune: loss against learning rate")
PLOT_CANDIDATES = _declare("plots/candidates.png", "improve: val and test error per remedy")


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as plain JSON data."""
    return json.loads(config.to_json_best_effort())


def summary_writer_class() -> type:
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch at import time when it is installed, only to accept torch
    tensors; we log Python floats. Importing torch would add seconds to every stage's start on a
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
    """One stage's run directory; reopening an existing one resumes it.

    Every method that writes does nothing on processes other than 0."""

    def __init__(self, path: str):
        self.path = path
        self.checkpoints = self.file(CHECKPOINTS)
        self._tb = None

    def file(self, name: str) -> str:
        """Path of a file (or folder) of `FILES` inside the run directory."""
        if name not in FILES:
            raise ValueError(f"{name!r} is not a file of the run directory: declare it in FILES")
        return os.path.join(self.path, name)

    @property
    def exists(self) -> bool:
        """Whether a run was started here before."""
        return os.path.exists(self.file(CONFIG))

    # ------------------------------------------------------------------------- reading

    def read_json(self, name: str) -> Any:
        """A JSON file of the run directory."""
        return read_json(self.file(name))

    def read_metrics(self) -> list[dict]:
        """Every record of metrics.jsonl (empty when there is none)."""
        path = self.file(METRICS)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def read_summary(self) -> Summary | None:
        """summary.json, or None when there is none; ValueError when it cannot be read as one."""
        from workflow.reporting.summary import Summary

        if not os.path.exists(self.file(SUMMARY)):
            return None
        return Summary.from_json(self.read_json(SUMMARY))

    def check_resumable(self, config: ml_collections.ConfigDict) -> None:
        """Refuse to mix two different configs in one directory."""
        old = self.read_json(CONFIG)
        new = config_to_dict(config)
        changed = sorted(
            k for k in set(old) | set(new) if k not in RESUMABLE_KEYS and old.get(k) != new.get(k)
        )
        if changed:
            raise UsageError(
                f"--workdir={self.path} holds a run with a different config (differs in "
                f"{', '.join(changed)}); use a new --workdir or delete this one"
            )

    # ------------------------------------------------------------------------- writing

    def _writable(self, name: str) -> str | None:
        """The path to write `name` to, its folder created; None on processes other than 0."""
        if not distributed.is_writer():
            return None
        path = self.file(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def create(self, config: ml_collections.ConfigDict) -> None:
        """Create (or reopen) the directory with its plots/ folder; write config.json."""
        plots = self._writable(PLOTS)
        if plots is not None:
            os.makedirs(plots, exist_ok=True)
        self.write_json(CONFIG, config_to_dict(config))

    def open(self, config: ml_collections.ConfigDict, *, resume_step: int | None) -> None:
        """Create (or reopen) the directory; keep only the metrics up to `resume_step`."""
        self.create(config)
        path = self._writable(METRICS)
        if path is None:
            return
        kept = [r for r in self.read_metrics() if resume_step and r["step"] <= resume_step]
        write_text(path, "".join(json.dumps(to_jsonable(r)) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        """Append one record to metrics.jsonl and to the TensorBoard event file."""
        path = self._writable(METRICS)
        if path is None:
            return
        with open(path, "a") as f:
            f.write(json.dumps(to_jsonable(record)) + "\n")
        if self._tb is None:
            self._tb = summary_writer_class()(self.file(TENSORBOARD))
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self._tb.add_scalar(key, value, record["step"])

    def write_json(self, name: str, obj: Any) -> None:
        """A JSON file of the run directory."""
        path = self._writable(name)
        if path is not None:
            write_json(path, obj)

    def write_text(self, name: str, text: str) -> None:
        """A text file of the run directory."""
        path = self._writable(name)
        if path is not None:
            write_text(path, text)

    def write_summary(self, summary: Summary) -> None:
        """summary.json."""
        self.write_json(SUMMARY, summary.to_json())

    def write_report(self, title: str, sections: list[tuple[str, str]]) -> None:
        """report.md from (heading, markdown body) sections."""
        body = "\n\n".join(f"## {heading}\n\n{text}" for heading, text in sections)
        self.write_text(REPORT, f"# {title}\n\n{body}\n")

    def append_to_report(self, heading: str, text: str) -> None:
        """One more section at the end of report.md, when there is one."""
        path = self._writable(REPORT)
        if path is None or not os.path.exists(path):
            return
        with open(path) as f:
            report = f.read()
        write_text(path, f"{report}\n## {heading}\n\n{text}\n")

    def save_figure(self, name: str, draw: Callable[[], Figure]) -> str:
        """A plot of `PLOTS`: the matplotlib figure `draw()` returns, saved as a PNG (drawn on
        process 0 only). Returns its path relative to the run directory, as report.md links it."""
        path = self._writable(name)
        if path is not None:
            from workflow.reporting import plots

            plots.save_figure(draw(), path)
        return name

    def copy_from(self, source: str) -> None:
        """This directory as a copy of the finished run directory `source`, made once and
        atomically (a killed copy is redone, not reused)."""
        if not distributed.is_writer() or os.path.exists(self.path):
            return
        shutil.copytree(source, self.path + ".tmp", dirs_exist_ok=True)
        os.replace(self.path + ".tmp", self.path)

    def close(self) -> None:
        """Flush the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def remove(self) -> None:
        """Delete a directory this process created and could not finish setting up."""
        if not distributed.is_writer():
            return
        shutil.rmtree(self.path, ignore_errors=True)
