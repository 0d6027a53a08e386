"""The form a loop of training steps runs in: K steps in one scanned call, or one step per call.

Every loop of training steps (engine.fit, the overfit check, batched trials, the lr range test)
applies a pure step `one_step(carry, *shared, *row) -> (carry, outputs)` to the rows of its
per-step inputs (example indices, learning rates). `StepLoop` runs it in either of two forms:

  scan  the K steps under `lax.scan` in one compiled call: one dispatch per K steps;
  step  the step compiled on its own and called K times from Python (the carry donated from
        call to call), its outputs stacked as the scan stacks them.

Which is faster depends on the model and the backend. The scan saves the per-step dispatch,
which dominates a small model's step. But XLA's CPU backend compiles some operations far slower
inside a loop body than at the top of a program (a 2-D convolution's gradients run as plain
loop nests there, jax-ml/jax#12868), and such a model's step runs many times faster alone.
With form "auto" (config.loop) the loop times a few steps of each form at its first call,
compilation excluded, and keeps the faster; the choice is cached with the compiled programs for
the process (per program: model, dtype, shapes, shardings, backend), so later loops of the same
program (search rounds, improve's candidates, tests) neither measure nor compile again.

Both forms run the same operations on the same inputs in the same order: the same seeds, batches
and augmentation keys. Where XLA picks the same kernels for an operation in a loop body and at
the top of a program the results are equal bit for bit (the MLP and the LSTM on the CPU); where
it picks another (the convolution above, as a loop nest instead of a library call) the sums run
in another order and the two forms agree to float rounding (tests/test_loop_form.py bounds it).
"""

import dataclasses
import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

FORMS = ("scan", "step")
CHOICES = ("auto", *FORMS)  # config.loop
# How a choice was made: timed by this loop, by an earlier loop of the same program in this
# process, set by config.loop, or left to the scan because jit is off (debug.disable_jit).
SOURCES = ("measured", "cache", "config", "no_jit")

# The step form must beat the scan by this factor to be chosen: a near tie keeps the scan, so
# the form (and with it XLA's rounding, see above) does not flip with the machine's noise.
STEP_MARGIN = 1.1
# Each form's timed block lasts at least this long, over at least MIN_PROBE_STEPS steps.
PROBE_SECONDS = 0.02
MIN_PROBE_STEPS = 2
# The scan is timed on the loop's own call when K steps of the step form take at most this long
# (no extra compile); otherwise on a scan of a few steps compiled for the measurement.
MAX_SCAN_PROBE_SECONDS = 0.25
# Rounds of alternating blocks (one of each form); a first scan block longer than this that is
# CLEAR_FACTOR x slower than the step form decides at once.
PROBE_ROUNDS = 3
CLEAR_SECONDS = 0.5
CLEAR_FACTOR = 3.0


@dataclasses.dataclass(frozen=True)
class LoopChoice:
    """Which form runs a loop, how that was decided, and each form's measured seconds per step
    (None where not measured)."""

    form: str  # one of FORMS
    source: str  # one of SOURCES
    scan_seconds_per_step: float | None = None
    step_seconds_per_step: float | None = None
    measure_seconds: float | None = None  # the measurement's wall time, its compiles included

    def to_json(self) -> dict[str, Any]:
        """The summary.json form (Summary.loops)."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for a report, e.g. 'one step per call (measured: 0.069 s/step; under
        lax.scan 1.42 s/step)'."""
        form = "one compiled step per call" if self.form == "step" else "K steps per lax.scan call"
        if self.source == "config":
            return f"{form} (config.loop)"
        if self.source == "no_jit":
            return f"{form} (jit disabled: not measured)"
        when = "measured" if self.source == "measured" else "measured earlier in this process"
        return (
            f"{form} ({when}: {_seconds(self.step_seconds_per_step)}/step alone, "
            f"{_seconds(self.scan_seconds_per_step)}/step under lax.scan)"
        )


def describe_loop(choice: dict[str, Any] | None) -> str:
    """A report's line for a `LoopChoice.to_json()` read back from summary.json ('-': none)."""
    return LoopChoice(**choice).describe() if choice else "-"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def check_form(form: str) -> str:
    """`form` if it is one of CHOICES; ValueError naming the valid ones otherwise."""
    if form not in CHOICES:
        raise ValueError(f"invalid loop form {form!r}: one of {', '.join(CHOICES)}")
    return form


# ----------------------------------------------------------------------------- shardings


def _per_step(shardings: Any) -> Any:
    """The shardings of one step's slice of arrays laid out with `shardings` (the leading step
    axis dropped); None stays None."""

    def drop(sharding):
        if isinstance(sharding, NamedSharding):
            return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec[1:]))
        return sharding

    return jax.tree.map(drop, shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))


# ----------------------------------------------------------------------------- the programs


@dataclasses.dataclass
class _Programs:
    """The compiled forms of one loop and the choice between them (shared through the cache)."""

    scan: Callable  # jitted: (carry, *shared, *rows) -> (carry, stacked outputs)
    step: Callable  # jitted: (carry, *shared, *row) -> (carry, outputs)
    split_rows: Callable  # (steps, rows) -> one tuple of row arrays per step, on the devices
    first_rows: Callable  # (length, rows) -> the rows of the first `length` steps
    choice: LoopChoice | None = None
    step_compiled: Any = None  # the step program compiled for this loop's shapes


# Programs by the hash of their step's lowered text and the backend, with their choice; a lock
# per key makes concurrent loops of one program (the debug stage's two threads) measure once.
_CACHE: dict[str, _Programs] = {}
_CACHE_SIZE = 64
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _key_lock(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


def clear_cache() -> None:
    """Forget every cached choice and program (tests measure afresh)."""
    with _LOCKS_GUARD:
        _CACHE.clear()
        _LOCKS.clear()


class StepLoop:
    """K applications of `one_step` in one call, in the form `form` or the one measured faster.

    `one_step(carry, *shared, *row)` returns (carry, outputs); calling the loop with
    (carry, *shared, *rows), each of the `len(rows)` row arrays with a leading step axis of
    length K, returns the carry after K steps and the outputs stacked on a leading step axis, as
    `lax.scan` would (host arrays in the step form). The carry is donated. `in_shardings` and
    `out_shardings` are the scanned program's (rows and outputs with their step axis); the step
    program's drop that axis.
    """

    def __init__(
        self,
        one_step: Callable,
        *,
        num_shared: int,
        form: str = "auto",
        in_shardings: Sequence[Any] | None = None,
        out_shardings: Any = None,
    ):
        self.form = check_form(form)
        self._one_step = one_step
        self._num_shared = num_shared
        self._in_shardings = in_shardings
        self._out_shardings = out_shardings
        self._programs: dict[Any, _Programs] = {}  # by the shapes of carry, shared and a row
        self._last: _Programs | None = None

    @property
    def choice(self) -> LoopChoice | None:
        """The form of this loop's latest call (None before its first): each set of argument
        shapes is decided at its first call."""
        return self._last.choice if self._last else None

    def __call__(self, carry: Any, *args: Any) -> tuple[Any, Any]:
        """Run the steps of the rows in `args[num_shared:]` from `carry`."""
        shared, rows = args[: self._num_shared], args[self._num_shared :]
        steps = int(jax.tree.leaves(rows)[0].shape[0])
        signature = _signature(carry, shared, rows)
        if signature not in self._programs:
            self._programs[signature] = self._prepare(carry, shared, rows)
        programs = self._last = self._programs[signature]
        if programs.choice.form == "scan":
            return programs.scan(carry, *shared, *rows)
        step = programs.step_compiled or programs.step
        outputs = []
        for row in programs.split_rows(steps, rows):
            carry, out = step(carry, *shared, *row)
            outputs.append(out)
        return carry, jax.tree.map(lambda *values: np.stack(values), *jax.device_get(outputs))

    # ------------------------------------------------------------------------- choosing

    def _build(self) -> _Programs:
        """Both forms' programs, not yet compiled."""
        one_step, num_shared = self._one_step, self._num_shared

        def scanned(carry, *args):
            shared, rows = args[:num_shared], args[num_shared:]
            return jax.lax.scan(lambda c, row: one_step(c, *shared, *row), carry, rows)

        scan_kwargs, step_kwargs, rows_shardings, row_shardings = {}, {}, None, None
        if self._in_shardings is not None:
            carry_sh, *shared_sh = self._in_shardings[: num_shared + 1]
            rows_shardings = tuple(self._in_shardings[num_shared + 1 :])
            row_shardings = tuple(_per_step(rows_shardings))
            scan_kwargs["in_shardings"] = tuple(self._in_shardings)
            step_kwargs["in_shardings"] = (carry_sh, *shared_sh, *row_shardings)
        if self._out_shardings is not None:
            carry_out, outputs = self._out_shardings
            scan_kwargs["out_shardings"] = self._out_shardings
            step_kwargs["out_shardings"] = (carry_out, _per_step(outputs))
        return _Programs(
            scan=jax.jit(scanned, donate_argnums=0, **scan_kwargs),
            step=jax.jit(one_step, donate_argnums=0, **step_kwargs),
            split_rows=_row_splitter(row_shardings),
            first_rows=_rows_cutter(rows_shardings),
        )

    def _prepare(self, carry, shared, rows) -> _Programs:
        """The programs and the choice: configured, cached for this program, or measured now."""
        programs = self._build()
        if jax.config.jax_disable_jit:  # nothing compiles: every form runs op by op
            programs.choice = LoopChoice(self.form if self.form != "auto" else "scan", "no_jit")
            return programs
        if self.form != "auto":
            programs.choice = LoopChoice(self.form, "config")
            return programs
        steps = int(jax.tree.leaves(rows)[0].shape[0])
        first_row = programs.split_rows(steps, rows)[0]
        lowered = programs.step.lower(carry, *shared, *first_row)
        key = _program_key(lowered.as_text())
        with _key_lock(key):
            cached = _CACHE.get(key)
            if cached is not None:
                choice = dataclasses.replace(cached.choice, source="cache")
                return dataclasses.replace(cached, choice=choice)
            programs.step_compiled = lowered.compile()
            programs.choice = measure(programs, carry, shared, rows)
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = programs
        return programs


def _signature(carry: Any, shared: tuple, rows: tuple) -> tuple:
    """What a compiled step depends on among the arguments: their structure, shapes, dtypes."""
    leaves, structure = jax.tree.flatten((carry, shared))
    shapes = tuple((np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves)
    row_shapes = tuple((np.shape(r)[1:], str(getattr(r, "dtype", type(r)))) for r in rows)
    return structure, shapes, row_shapes


def _program_key(text: str) -> str:
    """The cache key of a step program: its lowered text on this backend's devices."""
    device = jax.devices()[0]
    return hashlib.sha256(f"{device.platform}:{device.device_kind}\n{text}".encode()).hexdigest()


def _row_splitter(row_shardings: Any) -> Callable:
    """(steps, rows) -> per step, the tuple of its rows: one compiled call per chunk length, its
    outputs laid out as the step program takes them."""
    splitters: dict[int, Callable] = {}

    def split(steps: int, rows: tuple) -> list[tuple]:
        if steps not in splitters:
            kwargs = {"out_shardings": [row_shardings] * steps} if row_shardings else {}
            splitters[steps] = jax.jit(
                lambda rows: [tuple(r[i] for r in rows) for i in range(steps)], **kwargs
            )
        return splitters[steps](rows)

    return split


def _rows_cutter(rows_shardings: Any) -> Callable:
    """(length, rows) -> the rows of the first `length` steps, laid out as the rows were."""
    kwargs = {"out_shardings": rows_shardings} if rows_shardings else {}

    def cut(length: int, rows: tuple) -> tuple:
        return jax.jit(lambda rows: tuple(r[:length] for r in rows), **kwargs)(rows)

    return cut


def _copy(tree: Any) -> Any:
    """A copy in new buffers: the probes donate their carry."""
    return jax.tree.map(jnp.copy, tree)


def measure(programs: _Programs, carry: Any, shared: tuple, rows: tuple) -> LoopChoice:
    """Time both forms on a copy of `carry` over `rows` (compilation excluded) and choose.

    The step form's seconds per step first; then the scan's, on the loop's own K steps when
    they are short, else on a scan of a few steps compiled for it. Rounds of one block of each
    form alternate, and each form's median block decides; a first scan block that is long and
    clearly slower decides at once (a convolution under a CPU scan: seconds per step).
    """
    t_start = time.perf_counter()
    steps = int(jax.tree.leaves(rows)[0].shape[0])
    row_list = programs.split_rows(steps, rows)
    probe = _copy(carry)
    step = programs.step_compiled

    def run_steps(state, count: int) -> tuple[Any, float]:
        t0 = time.perf_counter()
        out = None
        for i in range(count):
            state, out = step(state, *shared, *row_list[i % steps])
        jax.block_until_ready((state, out))
        return state, time.perf_counter() - t0

    probe, _ = run_steps(probe, 1)  # the first call of a program allocates its buffers
    count = MIN_PROBE_STEPS
    probe, seconds = run_steps(probe, count)
    while seconds < PROBE_SECONDS and count < 1024:
        count = min(1024, max(2 * count, math.ceil(count * PROBE_SECONDS / max(seconds, 1e-9))))
        probe, seconds = run_steps(probe, count)
    step_times = [seconds / count]

    if steps * step_times[0] <= MAX_SCAN_PROBE_SECONDS:
        length, probe_rows = steps, rows
    else:
        length = min(steps, max(MIN_PROBE_STEPS, math.ceil(PROBE_SECONDS / step_times[0])))
        probe_rows = programs.first_rows(length, rows)
    scan = programs.scan.lower(probe, *shared, *probe_rows).compile()

    def run_scan(state) -> tuple[Any, float]:
        t0 = time.perf_counter()
        state, out = scan(state, *shared, *probe_rows)
        jax.block_until_ready((state, out))
        return state, time.perf_counter() - t0

    probe, seconds = run_scan(probe)
    scan_times = [seconds / length]
    clear = seconds > CLEAR_SECONDS and scan_times[0] > CLEAR_FACTOR * step_times[0]
    if not clear:
        scan_times = []  # the first call was the warm-up
        for _ in range(PROBE_ROUNDS):
            probe, seconds = run_steps(probe, length)
            step_times.append(seconds / length)
            probe, seconds = run_scan(probe)
            scan_times.append(seconds / length)
        step_times = step_times[1:]
    del probe
    step_s, scan_s = float(np.median(step_times)), float(np.median(scan_times))
    return LoopChoice(
        form=choose(step_s, scan_s),
        source="measured",
        scan_seconds_per_step=scan_s,
        step_seconds_per_step=step_s,
        measure_seconds=time.perf_counter() - t_start,
    )


def choose(step_seconds: float, scan_seconds: float) -> str:
    """The form to run, from each form's seconds per step: the step form only when it is
    faster than the scan by more than STEP_MARGIN."""
    return "step" if step_seconds * STEP_MARGIN < scan_seconds else "scan"
