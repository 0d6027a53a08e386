"""Compiled programs that run once or a few times: set-up and the debug checks."""

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx


def few_runs_options() -> dict[str, Any] | None:
    """XLA options for a program that runs once or a few times: on the CPU, the lowest backend
    optimization level, which compiles small programs several times faster (benchmarks/
    compile_cache.py --setup); elsewhere the defaults."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


# Compiled set-up programs by their StableHLO text: building the same model again in one process
# (search trials, improve's candidates, tests) reuses the executable, as eager per-op caches did.
_SETUP_PROGRAMS: dict[str, Any] = {}


def run_setup_program(fun: Callable, *args: Any) -> Any:
    """`fun(*args)` as one program compiled for a single run (see `initialize`)."""
    if _traced(args) or jax.config.jax_disable_jit:
        # Under an outer trace (eval_shape): part of that program. Under jax.disable_jit
        # (config.debug.disable_jit): op by op, as the user asked; ahead-of-time compiling refuses.
        return fun(*args)
    lowered = jax.jit(fun).lower(*args)
    key = hashlib.sha256(lowered.as_text().encode()).hexdigest()
    if key not in _SETUP_PROGRAMS:
        if len(_SETUP_PROGRAMS) >= 64:
            _SETUP_PROGRAMS.pop(next(iter(_SETUP_PROGRAMS)))
        _SETUP_PROGRAMS[key] = lowered.compile(compiler_options=few_runs_options())
    return _SETUP_PROGRAMS[key](*args)


def _traced(tree: Any) -> bool:
    """Whether any leaf of `tree` is a tracer of an enclosing transformation."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def jit_for_few_runs(fun: Callable | None = None, **jit_kwargs: Any) -> Callable:
    """`jax.jit` for checks and set-up that run a handful of times: compile time dominates.

    The options are chosen at the first call, once JAX knows its backend; use as a decorator,
    with or without jax.jit's keyword arguments.
    """
    if fun is None:
        return functools.partial(jit_for_few_runs, **jit_kwargs)
    nested = jax.jit(fun, **jit_kwargs)  # inside another trace compiler options are refused
    compiled: dict[str, Callable] = {}

    @functools.wraps(fun)
    def call(*args, **kwargs):
        if _traced((args, kwargs)):
            return nested(*args, **kwargs)
        if "top" not in compiled:
            compiled["top"] = jax.jit(fun, compiler_options=few_runs_options(), **jit_kwargs)
        return compiled["top"](*args, **kwargs)

    return call


def initialize(make: Callable[[], nnx.Module]) -> nnx.Module:
    """The module `make()` builds, its initialization run as one compiled program.

    Built eagerly, every operation of every initializer compiles on its own for each parameter
    shape, most of a cold debug run's set-up. Traced once and compiled at XLA's lowest backend
    optimization level (the program runs once), it compiles several times faster
    (benchmarks/compile_cache.py --setup times both); the values agree with eager
    initialization to 1 ulp. Constructors that need concrete values are built eagerly.
    """
    try:
        abstract = nnx.eval_shape(make)
    except jax.errors.JAXTypeError:  # e.g. a constructor that inspects its random weights
        return make()
    return nnx.merge(nnx.graphdef(abstract), run_setup_program(lambda: nnx.state(make())))
