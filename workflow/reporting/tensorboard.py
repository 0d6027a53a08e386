"""TensorBoard event files: what a person opening `tensorboard --logdir=<workdir>` sees.

Each stage's run directory holds its own `tensorboard/` run (a copied run directory does not
carry the events of the run it was copied from), with:

  scalars     every number of metrics.jsonl (train/val loss and accuracy, the learning rate,
              steps/s) at its step; `final/<metric>` at the end of a training run;
  histograms  at each evaluation point of a training run (config.tensorboard.histograms):
              `gradients/<parameter>` values and `activations/<module>` outputs on one batch,
              and `gradient_norm/<parameter>` as scalars (engine/layer_statistics.py);
  images      evaluate's plots for a person (the worst examples of image data, the confusion
              matrix);
  hparams     the run's config (its scalar keys) and final metrics, so runs compare in the
              HParams dashboard; tune writes one run per trial under `tensorboard/trials/`.

Events are written on the calling thread, one write per record (EventFile): tensorboardX's
SummaryWriter hands them to a thread through a bounded queue, and once that thread dies (a full
disk) every later event blocks the training loop forever.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from workflow import files

# The hparams dashboard takes numbers, strings and booleans; these config keys say nothing
# about the run's result (where the console's bar goes, how a call runs its steps).
SKIPPED_HPARAMS = ("progress", "loop", "search.storage")
# A search record's keys that are its results, not its point: every other scalar key is.
TRIAL_RESULTS = (
    "round", "slot", "val_accuracy", "val_loss", "initial_loss", "final_loss", "improved",
    "diverged_at", "loss_curve",
)  # fmt: skip


def _tensorboardx() -> Any:
    """tensorboardX's event protobufs and record checksum, imported without PyTorch.

    tensorboardX imports torch at import time when it is installed, only to accept torch
    tensors; we log numpy values. Importing torch would add seconds to every stage's start on a
    machine that has it, so torch is hidden for that one import (unless already imported).
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        from tensorboardX import summary
        from tensorboardX.proto import event_pb2, summary_pb2
        from tensorboardX.record_writer import masked_crc32c
    finally:
        if hide:
            del sys.modules["torch"]
    return summary, event_pb2, summary_pb2, masked_crc32c


# This process's event file of each folder: a stage reopens its run directory several times.
_FILES: dict[tuple[str, int], str] = {}


class EventFile:
    """A TensorBoard event file in `folder`, written with one write per call.

    A write that fails raises OSError naming the file, as every other write of the run
    directory does.
    """

    def __init__(self, folder: str):
        self._summary, self._event_pb2, self._summary_pb2, self._crc = _tensorboardx()
        key = (os.path.abspath(folder), os.getpid())
        self.path = _FILES.get(key, "")
        if not os.path.exists(self.path):  # one file per process and folder, however reopened
            os.makedirs(folder, exist_ok=True)
            stamp = f"{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
            self.path = _FILES[key] = os.path.join(folder, f"events.out.tfevents.{stamp}")
            files.append_bytes(self.path, self._record(file_version="brain.Event:2"))

    def _record(self, **event: Any) -> bytes:
        """One event in TFRecord framing: length, its checksum, the event, its checksum."""
        data = self._event_pb2.Event(wall_time=time.time(), **event).SerializeToString()
        header = struct.pack("Q", len(data))
        return (
            header + struct.pack("I", self._crc(header)) + data + struct.pack("I", self._crc(data))
        )

    def _append(self, step: int, summaries: Iterable[Any]) -> None:
        data = b"".join(self._record(step=step, summary=s) for s in summaries)
        if data:
            files.append_bytes(self.path, data)

    def write_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One scalar per value at `step`, appended in one write."""
        self._append(step, [self._summary.scalar(k, float(v)) for k, v in values.items()])

    def write_histograms(self, step: int, histograms: Mapping[str, Mapping[str, Any]]) -> None:
        """Histograms at `step` from their statistics (`histogram_statistics`'s form)."""
        self._append(
            step,
            [
                self._summary.histogram_raw(
                    name,
                    float(h["min"]),
                    float(h["max"]),
                    float(h["num"]),
                    float(h["sum"]),
                    float(h["sum_squares"]),
                    [float(b) for b in h["bucket_limits"]],
                    [float(c) for c in h["bucket_counts"]],
                )
                for name, h in histograms.items()
            ],
        )

    def write_png(self, tag: str, step: int, png: bytes) -> None:
        """A PNG file's bytes as an image at `step`."""
        from PIL import Image

        width, height = Image.open(io.BytesIO(png)).size
        image = self._summary_pb2.Summary.Image(
            height=height, width=width, colorspace=4, encoded_image_string=png
        )
        self._append(step, [self._summary_pb2.Summary(value=[{"tag": tag, "image": image}])])

    def write_hparams(self, step: int, hparams: Mapping[str, Any], metrics: Mapping[str, float]):
        """The run's hyperparameters and its metrics' values (as `final/<name>` scalars) for the
        HParams dashboard."""
        finals = {f"final/{k}": float(v) for k, v in metrics.items()}
        experiment, start, end = self._summary.hparams(dict(hparams), finals)
        self._append(step, [experiment, start, end])
        self.write_scalars(step, finals)


def hparams_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's scalar keys, dotted (`optimizer.learning_rate`), for the HParams dashboard;
    tuples as text."""
    flat: dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if name in SKIPPED_HPARAMS:
                continue
            if isinstance(value, Mapping):
                walk(value, f"{name}.")
            elif isinstance(value, bool | str):
                flat[name] = value
            elif isinstance(value, int | float) and np.isfinite(value):
                flat[name] = value
            elif isinstance(value, list | tuple):
                flat[name] = str(list(value))
            elif value is None:
                flat[name] = "None"

    walk(config, "")
    return flat


def finite_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics.jsonl record but its step."""
    return {
        key: float(value)
        for key, value in record.items()
        if key != "step"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and np.isfinite(value)
    }


def write_trials(folder: str, records: list[dict], fixed: Mapping[str, Any]) -> None:
    """One TensorBoard run per search trial under `folder` (replaced whole): its training-loss
    curve, and its hyperparameters (`fixed`, the searched values over them) with its val loss,
    val accuracy and val error for the HParams dashboard."""
    temporary = folder + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    for index, record in enumerate(records):
        events = EventFile(os.path.join(temporary, f"round{record['round']}-slot{record['slot']}"))
        curve = record.get("loss_curve") or []
        steps = record.get("steps") or len(curve)
        for i, value in enumerate(curve):
            if value is not None and np.isfinite(value):
                at = max(1, round((i + 1) * steps / len(curve)))
                events.write_scalars(at, {"train_loss": value})
        searched = {
            k: v
            for k, v in record.items()
            if k not in TRIAL_RESULTS and isinstance(v, int | float | str | bool)
        }
        metrics = {"val_loss": record["val_loss"], "val_accuracy": record["val_accuracy"]}
        metrics["val_error"] = 1.0 - record["val_accuracy"]
        metrics = {k: v for k, v in metrics.items() if v is not None and np.isfinite(v)}
        events.write_hparams(steps, {**fixed, **searched, "trial": index}, metrics)
    shutil.rmtree(folder, ignore_errors=True)
    if os.path.isdir(temporary):
        os.replace(temporary, folder)
