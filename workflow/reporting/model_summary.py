"""The model's layers for the run directory: parameter shapes and counts, output shape per layer.

NNX's own `nnx.tabulate` does the work: it calls the model on one batch and records each
submodule's call. It runs here under `jax.eval_shape`, so nothing is computed or compiled, and
its rows are collected through its `row_filter` hook for the structured list that summary.json
holds. Modules that own parameters but are never called still appear, with no output shape: a
layer built but left out of `__call__`.
"""

import contextlib
import inspect
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import summary as nnx_summary

from workflow import reporting

# Plain text (no colours or box-drawing escapes) wide enough for the zoo's tables.
_CONSOLE = {"force_terminal": False, "color_system": None, "width": 160}
_MISSING = object()


@contextlib.contextmanager
def _restored_methods(model: nnx.Module) -> Iterator[None]:
    """Put back every method nnx.tabulate patches on the model's classes, even if it raises.

    tabulate replaces the methods of each graph-node class for the duration of its trace and
    restores them only on success; a model that fails inside would leave them patched.
    """
    saved = {}
    for _, node in nnx.iter_graph(model):
        cls = type(node)
        if isinstance(node, nnx.Pytree) and cls not in saved:
            names = [
                n
                for n, _ in inspect.getmembers(cls, inspect.isfunction)
                if not n.startswith("_") or n == "__call__"
            ]
            saved[cls] = {n: cls.__dict__.get(n, _MISSING) for n in names}
    try:
        yield
    finally:
        for cls, methods in saved.items():
            for name, value in methods.items():
                if value is _MISSING:
                    if name in cls.__dict__:
                        delattr(cls, name)
                else:
                    setattr(cls, name, value)


def _shape_of(outputs: Any) -> list | None:
    """[dims] of a single array output, [[dims], ...] of several, None of none."""
    leaves = [leaf for leaf in jax.tree.leaves(outputs) if hasattr(leaf, "shape")]
    shapes = [[int(d) for d in leaf.shape] for leaf in leaves]
    if not shapes:
        return None
    return shapes[0] if len(shapes) == 1 else shapes


def _model_output_shape(model: nnx.Module, x: jax.ShapeDtypeStruct) -> list | None:
    """The model's own output shape, traced on split state (no Variable is mutated)."""
    graphdef, state = nnx.split(model)
    return _shape_of(jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x))


def _own_params(module: nnx.Module) -> dict[str, list[int]]:
    """{attribute name: shape} of the nnx.Param variables the module holds itself."""
    return {
        name: [int(d) for d in value.shape]
        for name, value in vars(module).items()
        if isinstance(value, nnx.Param)
    }


def _param_count(module: nnx.Module) -> int:
    """Scalars in every nnx.Param under `module` (its submodules included)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)))


def summarize(
    model: nnx.Module, input_shape: tuple[int, ...], batch_size: int, dtype: Any = jnp.float32
) -> dict[str, Any]:
    """{'layers': [{path, type, params, param_count, output_shape}], 'num_params', 'text'} for
    one batch of `batch_size` inputs of `dtype` (float32; int32 token ids); 'error' names what
    failed when the model cannot trace.

    Nothing runs: the model may be concrete or abstract (built under nnx.eval_shape)."""
    rows: list[Any] = []

    def keep(row: Any) -> bool:
        rows.append(row)
        return nnx_summary.filter_rng_streams(row)

    text: dict[str, str] = {}

    graphdef, state = nnx.split(model)

    def trace(state: Any, x: jax.Array) -> jax.Array:
        # Merged from traced state: concrete and abstract (nnx.eval_shape) models alike.
        traced = nnx.merge(graphdef, state)
        text["table"] = nnx.tabulate(traced, x, row_filter=keep, console_kwargs=_CONSOLE)
        return x

    x = jax.ShapeDtypeStruct((batch_size, *input_shape), dtype)
    error = None
    try:
        with _restored_methods(model):
            jax.eval_shape(trace, state, x)
    except Exception as e:  # noqa: BLE001 - a summary must never fail the run it describes
        error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        rows = []
    modules = {tuple(p): n for p, n in nnx.iter_graph(model) if isinstance(n, nnx.Module)}
    outputs, order, called = {}, {}, set()
    for row in rows:
        path = tuple(row.path)
        if path in modules:
            if path not in outputs:  # its first call (a scanned cell is called every step)
                outputs[path] = _shape_of(row.outputs)
                order[path] = row.call_order
        elif path[:-1] in modules:
            # Another public method (path ends in its name). tabulate keeps one row per
            # (object, inputs), so a __call__ that forwards to it may have no row of its own.
            called.add(path[:-1])
            order.setdefault(path[:-1], row.call_order)
    if rows:
        try:
            outputs[()] = _model_output_shape(model, x)
            order[()] = -1
        except Exception:  # noqa: BLE001 - the rows above still stand
            pass
    layers = []
    for path, node in modules.items():
        own = _own_params(node)
        if path not in outputs and path not in called and not own:
            continue  # a container (nnx.List) or an unused module without parameters
        layers.append(
            {
                "path": "/".join(str(p) for p in path),
                "type": type(node).__name__,
                "params": own,
                "param_count": _param_count(node),
                "output_shape": outputs.get(path),
                "called": path in outputs or path in called,
            }
        )
    # Call order (the order data flows through), then modules that were never called.
    layers.sort(key=lambda layer: order.get(_path_key(layer["path"]), math.inf))
    result = {
        "layers": layers,
        "num_params": _param_count(model),
        "batch_size": batch_size,
        "text": text.get("table") or layers_text(layers),
    }
    if error:
        result["error"] = error
    return result


def _path_key(path: str) -> tuple:
    """The tuple path of a 'a/0/b' string, numbers as ints (as NNX keys List items)."""
    if not path:
        return ()
    return tuple(int(p) if p.isdigit() else p for p in path.split("/"))


def _shape_text(shape: list | None, called: bool = True) -> str:
    if shape is None:
        return "-" if called else "not called"
    if shape and isinstance(shape[0], list):
        return ", ".join(_shape_text(s) for s in shape)
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _rows(layers: list[dict]) -> list[list[str]]:
    return [
        [
            layer["path"] or "(model)",
            layer["type"],
            ", ".join(f"{k} {_shape_text(v)}" for k, v in layer["params"].items()) or "-",
            f"{layer['param_count']:,}",
            _shape_text(layer["output_shape"], layer.get("called", True)),
        ]
        for layer in layers
    ]


_HEADERS = ["layer", "type", "parameters", "count", "output shape"]


def layers_text(layers: list[dict]) -> str:
    """A plain-text table of `layers` (the fallback when nnx.tabulate cannot run)."""
    cells = [_HEADERS, *_rows(layers)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def table(layers: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The layer table as (headers, rows): layer, type, parameter shapes, count, output shape."""
    return list(_HEADERS), _rows(layers)


def markdown(layers: list[dict], batch_size: int) -> str:
    """The report.md section: one row per layer and the total parameter count."""
    if not layers:
        return "No layers could be listed."
    total = max(layer["param_count"] for layer in layers)
    table = reporting.markdown_table(_HEADERS, _rows(layers))
    return (
        f"{table}\n\nOutput shapes for one batch of {batch_size}; {total:,} parameters in total. "
        "NNX's full table (`nnx.tabulate`) is in `model_summary.txt`."
    )
