"""The workflow from Python (a notebook, a script): each stage as a function returning a Result.

    from workflow import api

    result = api.debug(Model(30, 64, 2, rngs=nnx.Rngs(0)), "breast_cancer.csv")
    result                      # in Jupyter: the status, the findings and their fixes, a plot
    result.status, result.findings, result.metrics, result.workdir, result.summary

Every function is `fn(model=None, data=None, *, config=None, workdir=None, **overrides)`:

    model      an nnx.Module instance (each run starts from a copy of it, as initialized), an
               nnx.Module class (built as the command line builds `--config.model.name`), or a
               factory `(input_shape, num_outputs, *, rngs) -> Module`; None: the config's.
    data       a dict of arrays (x_train, y_train, optional x_val/y_val/x_test/y_test; or x, y),
               a data file or folder (workflow/data/readers.py), a registered name (mnist1d,
               digits, synthetic, tfds:<name>, module:function), or a loader function
               returning the dict a loader returns; None: the config's.
    config     a config file path (`configs/digits.py:mlp`, loaded as --config loads it) or an
               ml_collections ConfigDict; None: configs/custom.py for the data.
    workdir    the run directory (None: a new runs/<stage>-<time> in the current directory).
    overrides  dotted keys as on the command line: `**{"optimizer.learning_rate": 1e-3}`,
               `**{"model.kwargs.dmid": 64}` (config_lib.apply_overrides).

Bad input raises workflow.errors.UsageError with the line the command line prints (exit 2
there). Nothing global changes: figures are matplotlib Figures of their own (no backend is
chosen), no flag or `sys.argv` is read, and the next steps a summary lists are calls of these
functions. Objects handed over (a notebook's class, arrays, a loader) are registered for this
process only under a name ending in `@python`, which the run directory's config records: a
best_config.py written here runs on here (`api.evaluate(config=path)`, the summary's next step);
another process refuses it in one line (exit 2 on the command line).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np
from flax import nnx

import models
from workflow import config_lib, experiment
from workflow.data import readers, sources
from workflow.diagnostics.findings import Finding
from workflow.errors import UsageError
from workflow.reporting import rundir
from workflow.reporting.summary import Summary

__all__ = ["Result", "debug", "evaluate", "improve", "run", "start_simple", "tune"]

# Where a run's configs come from when the call names none (the data is its argument).
CUSTOM_CONFIG = "configs/custom.py"
# The plot a Result shows, by stage: the first of these its run directory holds.
KEY_PLOTS = {
    "start_simple": (rundir.PLOT_LEARNING_CURVES,),
    "debug": (rundir.PLOT_SHORT_RUN, rundir.PLOT_OVERFIT_BATCH),
    "evaluate": (rundir.PLOT_ERROR_CURVES, rundir.PLOT_LEARNING_CURVES),
    "tune": (rundir.PLOT_SEARCH, rundir.PLOT_LR_RANGE_TEST),
    "improve": (rundir.PLOT_CANDIDATES, rundir.PLOT_ERROR_CURVES),
    "run": (rundir.PLOT_ERROR_CURVES, rundir.PLOT_CANDIDATES, rundir.PLOT_LEARNING_CURVES),
}


@dataclasses.dataclass
class Result:
    """What a stage returns: its status, findings (most severe first), numbers and files."""

    stage: str
    status: str  # ok, failed or diverged (summary.json's status)
    findings: list[Finding]
    metrics: dict[str, Any]
    workdir: str
    summary: dict[str, Any]  # summary.json as read back

    @property
    def ok(self) -> bool:
        """Whether the stage's verdict is ok (the command line's exit code 0)."""
        return self.status == "ok"

    def key_plot(self) -> str | None:
        """The path of the stage's main plot in the run directory, if it drew one."""
        for name in KEY_PLOTS.get(self.stage, ()):
            path = os.path.join(self.workdir, name)
            if os.path.isfile(path):
                return path
        final = (self.summary.get("final") or {}).get("workdir")  # workflow.run's last model
        if final and final != self.workdir and os.path.isdir(final):
            return dataclasses.replace(self, stage="evaluate", workdir=final).key_plot()
        return None

    def _repr_html_(self) -> str:
        """Jupyter's view: the status, each finding with its first fix, the key plot."""
        color = {"ok": "#1a7f37"}.get(self.status, "#cf222e")
        parts = [
            f"<div><b>{html.escape(self.stage)}: "
            f"<span style='color:{color}'>{html.escape(self.status)}</span></b> "
            f"<code>{html.escape(self.workdir)}</code></div>"
        ]
        if self.findings:
            items = []
            for f in self.findings:
                fix = f"<br><i>try:</i> {html.escape(f.suggestions[0])}" if f.suggestions else ""
                items.append(
                    f"<li><b>{html.escape(f.severity)}</b> <code>{html.escape(f.id)}</code>: "
                    f"{html.escape(f.message)}{fix}</li>"
                )
            parts.append(f"<ul>{''.join(items)}</ul>")
        else:
            parts.append("<div>all checks passed</div>")
        plot = self.key_plot()
        if plot:
            with open(plot, "rb") as f:
                data = base64.b64encode(f.read()).decode()
            parts.append(f"<img src='data:image/png;base64,{data}' style='max-width:100%'>")
        return "\n".join(parts)

    def __repr__(self) -> str:
        ids = ", ".join(f.id for f in self.findings) or "no findings"
        return f"Result({self.stage}: {self.status}; {ids}; workdir={self.workdir!r})"


# ----------------------------------------------------------------------------- the stages


def start_simple(model=None, data=None, *, config=None, workdir=None, **overrides) -> Result:
    """Train the simple default (or your model) on the data; report its curves and errors."""
    return _stage("start_simple", model, data, config, workdir, overrides)


def debug(model=None, data=None, *, config=None, workdir=None, **overrides) -> Result:
    """Sanity checks on one batch, overfitting it, a short real run and its curve's diagnosis."""
    return _stage("debug", model, data, config, workdir, overrides)


def evaluate(model=None, data=None, *, config=None, workdir=None, **overrides) -> Result:
    """Train (or resume) and decompose the errors against the goal: bias, variance, shift."""
    return _stage("evaluate", model, data, config, workdir, overrides)


def tune(model=None, data=None, *, config=None, workdir=None, **overrides) -> Result:
    """The learning-rate range test, then the coarse-to-fine random search."""
    return _stage("tune", model, data, config, workdir, overrides)


def improve(model=None, data=None, *, config=None, workdir=None, **overrides) -> Result:
    """Try the remedies the evaluation's verdict calls for; keep the best."""
    return _stage("improve", model, data, config, workdir, overrides)


def run(model=None, data=None, *, config=None, workdir=None, **overrides) -> Result:
    """The whole workflow: rounds of tune, evaluate and improve until the goal or the budget."""
    return _stage("run", model, data, config, workdir, overrides)


# ----------------------------------------------------------------------------- running one


def _stage(
    stage: str, model: Any, data: Any, config: Any, workdir: str | None, overrides: dict
) -> Result:
    """Resolve the inputs to a config, run the stage as the command line runs it (the lock, the
    jit mode, the memory guard), read its summary back."""
    from workflow import cli
    from workflow.diagnostics import memory

    data_name = _data_name(data)
    config, source = _config(config, data_name)
    config_lib.apply_overrides(config, _model_overrides(model))
    if data_name is not None:
        config_lib.apply_overrides(config, {"dataset.name": data_name})
    config_lib.apply_overrides(config, dict(overrides))
    workdir = workdir or os.path.join(
        "runs", f"{stage}-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S-%f')}"
    )
    if not str(workdir).strip():
        raise UsageError("workdir is empty: name the run directory to write")
    workdir = str(workdir)
    main = _MAINS[stage]
    experiment.IN_PYTHON["active"] = True
    try:
        with rundir.locked(workdir, stage), cli.jit_mode(config):
            memory.run_guarded(lambda: main(config, workdir, source), config, workdir, stage)
    finally:
        experiment.IN_PYTHON["active"] = False
    return _result(stage, workdir)


def _result(stage: str, workdir: str) -> Result:
    path = os.path.join(workdir, "summary.json")
    if not os.path.isfile(path):
        raise UsageError(f"stage {stage} wrote no summary.json in {workdir}")
    from workflow.files import read_json

    data = read_json(path)
    summary = Summary.from_json(data)
    return Result(
        stage=stage,
        status=summary.status,
        findings=list(summary.findings),
        metrics=dict(summary.metrics),
        workdir=workdir,
        summary=data,
    )


def _run_start_simple(config, workdir: str, source: str) -> int:
    from workflow.start_simple import run_start_simple

    run_start_simple(experiment.prepare(config), workdir)
    return 0


def _run_debug(config, workdir: str, source: str) -> int:
    from workflow import engine
    from workflow.debug import run_debug

    started = engine.now()
    run_debug(experiment.prepare(config), workdir, started)
    return 0


def _run_evaluate(config, workdir: str, source: str) -> int:
    from workflow.evaluate import run_evaluate

    run_evaluate(experiment.prepare(config), workdir)
    return 0


def _run_tune(config, workdir: str, source: str) -> int:
    from workflow.search import random_search
    from workflow.tune import run_tune

    random_search.validate_search_config(config.search)
    run_tune(experiment.prepare(config), workdir, source)
    return 0


def _run_improve(config, workdir: str, source: str) -> int:
    from workflow.improve import run_improve

    run_improve(experiment.prepare(config), workdir, source)
    return 0


def _run_workflow(config, workdir: str, source: str) -> int:
    from workflow.run import Workflow, run_workflow

    setup = experiment.prepare(config.copy_and_resolve_references())
    experiment.check_loss(setup)
    workflow = Workflow(workdir, config, source)
    with workflow.run.claimed(rundir.KINDS["run"], "run", config, setup.dataset.fingerprint()):
        del setup  # each step prepares its own
        run_workflow(workflow)
    return 0


_MAINS: dict[str, Callable[[Any, str, str], int]] = {
    "start_simple": _run_start_simple,
    "debug": _run_debug,
    "evaluate": _run_evaluate,
    "tune": _run_tune,
    "improve": _run_improve,
    "run": _run_workflow,
}


# ----------------------------------------------------------------------------- the inputs


def _config(config: Any, data_name: str | None) -> tuple[ml_collections.ConfigDict, str]:
    """(a config of our own to change, the config file it stands on: `path[:arg]`)."""
    if isinstance(config, ml_collections.ConfigDict):
        base = config_lib.project_file(CUSTOM_CONFIG)
        return config.copy_and_resolve_references(), f"{base}:{config.dataset.name}"
    if isinstance(config, str | os.PathLike):
        path, _, arg = str(config).partition(":")
        path = config_lib.resolve_config_path(path)
        return config_lib.load_config_file(path, arg or None), f"{path}{':' + arg if arg else ''}"
    if config is not None:
        raise UsageError(
            f"config={config!r} is invalid; expected a config file path or an "
            "ml_collections.ConfigDict"
        )
    if data_name is None:
        raise UsageError("give the data (data=...) or a config that names it (config=...)")
    path = config_lib.project_file(CUSTOM_CONFIG)
    return config_lib.load_config_file(path, data_name), f"{path}:{data_name}"


def _model_overrides(model: Any) -> dict[str, Any]:
    """The model.name override for `model`: an importable class by its import path, anything
    else registered for this process."""
    if model is None:
        return {}
    if isinstance(model, str):
        return {"model.name": model}
    if isinstance(model, type) and issubclass(model, nnx.Module):
        if _importable(model):
            return {"model.name": f"{model.__module__}:{model.__qualname__}"}
        return {"model.name": _register(model.__qualname__, model)}
    if isinstance(model, nnx.Module):
        return {"model.name": _register(type(model).__qualname__, _from_instance(model))}
    if callable(model):
        return {"model.name": _register(_label(model), _from_factory(model))}
    raise UsageError(
        f"model={model!r} is invalid; expected an nnx.Module instance or class, a factory "
        "(input_shape, num_outputs, *, rngs) -> Module, or a model name"
    )


def _importable(obj: Any) -> bool:
    """Whether `module:qualname` imports `obj` back (a notebook's __main__ does not count)."""
    import importlib

    module = getattr(obj, "__module__", None)
    if not module or module == "__main__" or "<locals>" in obj.__qualname__:
        return False
    try:
        found: Any = importlib.import_module(module)
        for part in obj.__qualname__.split("."):
            found = getattr(found, part)
    except Exception:  # noqa: BLE001 - not importable is all this asks
        return False
    return found is obj


def _label(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _register(label: str, cls: type) -> str:
    """Register `cls` as a model of this process under `<label>@python`; returns the name."""
    name = f"{label}{models.IN_PROCESS_SUFFIX}"
    models.LOCAL_MODELS[name] = cls  # a rerun notebook cell replaces its own earlier class
    return name


def _from_factory(factory: Callable[..., nnx.Module]) -> type:
    """An nnx.Module class with the zoo's contract whose instance is `factory(...)`'s."""

    class FromFactory(nnx.Module):
        def __init__(self, input_shape, num_outputs, *, rngs: nnx.Rngs):
            made = factory(tuple(input_shape), num_outputs, rngs=rngs)
            if not isinstance(made, nnx.Module):
                raise UsageError(
                    f"model factory {_label(factory)} returned {type(made).__name__}; it must "
                    "return an nnx.Module"
                )
            self.model = made

        def __call__(self, x):
            return self.model(x)

    FromFactory.__qualname__ = FromFactory.__name__ = _label(factory)
    return FromFactory


def _from_instance(instance: nnx.Module) -> type:
    """A model class whose every instance is a copy of `instance`, as it was initialized."""
    template = nnx.clone(instance)
    return _from_factory(_Copies(template))


class _Copies:
    """Factory of copies of one module (rngs unused: the instance is already initialized)."""

    def __init__(self, template: nnx.Module):
        self.template = template
        self.__qualname__ = type(template).__qualname__

    def __call__(self, input_shape, num_outputs, *, rngs):
        del input_shape, num_outputs, rngs
        return nnx.clone(self.template)


def _data_name(data: Any) -> str | None:
    """The dataset name `data` loads under: a path or name as given, anything in memory
    registered for this process."""
    if data is None:
        return None
    if isinstance(data, os.PathLike):
        return os.fspath(data)
    if isinstance(data, str):
        return data
    if isinstance(data, Mapping):
        arrays = {k: np.asarray(v) for k, v in data.items() if v is not None}
        label = "arrays"

        def load(kwargs: dict, test_fraction: float, task: str) -> dict:
            where = f"(the {label} given)"
            return readers.arrays_dataset(arrays, where, kwargs, test_fraction, task)

        name = f"{label}-{_digest(arrays)}{models.IN_PROCESS_SUFFIX}"
        return sources.register_in_memory(name, load)
    if callable(data):
        name = f"{_label(data)}{models.IN_PROCESS_SUFFIX}"

        def call(kwargs: dict, test_fraction: float, task: str) -> dict:
            del test_fraction, task
            return sources.call_loader(name, data, kwargs)

        return sources.register_in_memory(name, call)
    raise UsageError(
        f"data={type(data).__name__} is invalid; expected a dict of arrays (x_train, y_train, "
        "...), a data file or folder path, a dataset name, or a loader function"
    )


def _digest(arrays: dict[str, np.ndarray]) -> str:
    """A short content hash: the same arrays load under the same name."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(arrays):
        h.update(f"{key}|{arrays[key].dtype.str}|{arrays[key].shape}|".encode())
        h.update(np.ascontiguousarray(arrays[key]).tobytes())
    return h.hexdigest()[:12]
