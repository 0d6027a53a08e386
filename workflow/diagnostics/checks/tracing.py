"""Values seen inside a traced computation: every random draw's key and every gather's indices.

`jax.make_jaxpr` turns a pass of the model into its primitives; `evaluate` runs them one by one
(into the calls of jitted functions, custom derivatives and checkpoints) and hands each primitive
with its input values to a visitor; `collect` does so inside one jitted program that returns
only the values a check asks for. The checks read what no output shows: which key a
draw used (`random_bits`), and whether a gather's indices lay inside the table it indexes (JAX
clamps or fills out-of-range indices instead of raising). Primitives inside loops and branches
(`scan`, `while`, `cond`) run as one call and are not visited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core

# The parameter that holds the body of a call-like primitive, by primitive name.
CALL_BODIES = {
    "jit": "jaxpr",
    "pjit": "jaxpr",
    "closed_call": "call_jaxpr",
    "core_call": "call_jaxpr",
    "custom_jvp_call": "call_jaxpr",
    "custom_vjp_call": "call_jaxpr",
    "remat": "jaxpr",
    "checkpoint": "jaxpr",
}

Visitor = Callable[[Any, list[Any]], None]  # (equation, its input values)


def _bodies(params: dict) -> list[Any]:
    """The jaxprs among an equation's parameters (call bodies, loop bodies, branches)."""
    found = []
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, core.Jaxpr):
                found.append(item)
    return found


def uses_primitive(jaxpr: Any, names: tuple[str, ...]) -> bool:
    """Whether `jaxpr` (or any jaxpr inside it) applies one of the primitives `names`."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in names or any(
            uses_primitive(body, names) for body in _bodies(eqn.params)
        ):
            return True
    return False


def evaluate(jaxpr: Any, consts: list[Any], args: list[Any], visit: Visitor) -> list[Any]:
    """Run `jaxpr` on `args` primitive by primitive, `visit`ing each with its input values."""
    env: dict[Any, Any] = {}

    def read(var):
        return var.val if isinstance(var, core.Literal) else env[var]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        values = [read(v) for v in eqn.invars]
        visit(eqn, values)
        body = eqn.params.get(CALL_BODIES.get(eqn.primitive.name, ""))
        if isinstance(body, core.ClosedJaxpr):
            outs = evaluate(body.jaxpr, body.consts, values, visit)
        elif isinstance(body, core.Jaxpr):
            outs = evaluate(body, [], values, visit)
        else:
            outs = eqn.primitive.bind(*values, **eqn.params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def collect(
    fn: Callable, args: tuple, names: tuple[str, ...], pick: Callable[[Any, list[Any]], Any]
) -> list[tuple[Any, tuple]]:
    """(static facts, arrays) that `pick(equation, input values)` returns for every primitive of
    `fn(*args)` named in `names`, in order ([] when `fn` applies none of them).

    The arrays are computed in one compiled program that returns only them (the compiler drops
    the rest of the pass), not primitive by primitive. A pass the replay cannot run gives [].
    """
    closed = jax.make_jaxpr(fn)(*args)
    if not uses_primitive(closed.jaxpr, names):
        return []
    facts: list[Any] = []

    def program(flat_args):
        arrays: list[tuple] = []

        def visit(eqn, values):
            if eqn.primitive.name in names:
                fact, picked = pick(eqn, values)
                facts.append(fact)
                arrays.append(tuple(picked))

        evaluate(closed.jaxpr, closed.consts, flat_args, visit)
        return arrays

    try:
        arrays = jax.jit(program)(jax.tree.leaves(args))
    except Exception:  # noqa: BLE001
        # A primitive this replay cannot bind outside its own machinery (a custom partitioner,
        # a kernel): the pass ran in the other checks, so it goes unchecked here, not the stage.
        return []
    return list(zip(facts, arrays, strict=True))


def key_bytes(key: Any) -> bytes:
    """A typed PRNG key's data as bytes: equal bytes, equal random numbers."""
    return np.asarray(jax.random.key_data(key)).tobytes()
