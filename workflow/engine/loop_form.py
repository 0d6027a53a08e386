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
With form "auto" (config.loop) a program whose step has an operation the scan may slow
(RISKY_OPS) times both forms at its first call, compilation excluded (`decide`), and keeps the
faster. Any other program runs under the scan without racing the step form (`scan_unraced`):
no model without such an operation has measured slower there, on the CPU or the GPU, and the
race cost each program a second compile and its probes, seconds per stage on the CPU. The
choice is cached with the compiled programs for the process (per program: model, dtype,
shapes, shardings, backend), so later loops of the same program (search rounds, improve's
candidates, tests) neither measure nor compile again. A step that is slow (SLOW_STEP_SECONDS)
takes the step form: the dispatch the scan saves is negligible beside it, and a progress bar
can count each step.

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

from workflow.engine import distributed

FORMS = ("scan", "step")
CHOICES = ("auto", *FORMS)  # config.loop
# How a choice was made: timed by this loop, by an earlier loop of the same program in this
# process, set by config.loop, left to the scan because jit is off (debug.disable_jit), the
# step form because one step is slow (SLOW_STEP_SECONDS), or the scan without racing the step
# form because the step has no RISKY_OPS.
SOURCES = ("measured", "cache", "config", "no_jit", "slow_step", "no_risky_ops")

# The step form must beat the scan by this factor to be chosen: a near tie keeps the scan, so
# the form (and with it XLA's rounding, see above) does not flip with the machine's noise.
STEP_MARGIN = 1.1
# Each form's timed block lasts at least this long, over MIN_PROBE_STEPS to MAX_PROBE_STEPS.
PROBE_SECONDS = 0.05
MIN_PROBE_STEPS = 2
MAX_PROBE_STEPS = 1024
# The scan is timed in rounds on the call's own program (on a copy of the state) when the call's
# K steps take the step form at most this long; otherwise on the call's own steps (see decide).
MAX_SCAN_PROBE_SECONDS = 0.1
# Operations (in the step's StableHLO) a scan may run many times slower than the step alone
# (XLA's CPU convolutions, jax-ml/jax#12868): only a step with one races the two forms
# (`decide`), and a short scan is timed before any call risks its K steps under the scan.
RISKY_OPS = ("stablehlo.convolution",)
# A step this slow runs in the step form without timing the scan when a call's steps take
# longer than SLOW_CALL_SECONDS: the per-call dispatch the scan saves is well under 1% of such a
# step, and in the step form a progress bar counts each step as it finishes (engine.progress)
# instead of waiting for the whole call.
SLOW_STEP_SECONDS = 0.05
SLOW_CALL_SECONDS = 1.0
# Rounds of timed blocks, the medians compared.
PROBE_ROUNDS = 3
# A scan this many times slower per step than the step form decides at once for the step form;
# a scan call shorter than CLEAR_SECONDS is timed again, warm, first.
CLEAR_FACTOR = 3.0
CLEAR_SECONDS = 0.5
# On the CPU, a step with RISKY_OPS that takes at least this long alone runs in the step form
# without trying the scan: the scan saves only the per-step dispatch (well under a millisecond,
# a few percent of such a step, less than STEP_MARGIN), and trying it costs a compile and steps
# that may run many times slower (the debug stage's budgets would pay for it first).
UNSCANNED_STEP_SECONDS = 0.01


@dataclasses.dataclass(frozen=True)
class LoopChoice:
    """Which form runs a loop, how that was decided, and each form's measured seconds per step
    (None where not measured)."""

    form: str  # one of FORMS
    source: str  # one of SOURCES
    scan_seconds_per_step: float | None = None
    step_seconds_per_step: float | None = None
    # The measurement's wall time: its compiles (the step program, a short scan) and probes;
    # not the call's own steps when they ran under the scan to decide.
    measure_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The summary.json form (Summary.loops)."""
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line for a report, e.g. 'one compiled step per call (measured: 69 ms/step alone,
        1.42 s/step under lax.scan)'."""
        form = "one compiled step per call" if self.form == "step" else "steps under one lax.scan"
        if self.source == "config":
            return f"{form} (config.loop)"
        if self.source == "no_jit":
            return f"{form} (jit disabled: not measured)"
        if self.source == "slow_step":
            where = "alone" if self.step_seconds_per_step else "under lax.scan at its first call"
            seconds = self.step_seconds_per_step or self.scan_seconds_per_step
            return (
                f"{form} ({_seconds(seconds)}/step {where}: too slow for the scan's saving to "
                "matter; progress shows per step)"
            )
        if self.source == "no_risky_ops":
            return (
                f"{form} ({_seconds(self.scan_seconds_per_step)}/step; the step form not timed: "
                "no operation in the step that a scan is known to slow)"
            )
        when = "measured" if self.source == "measured" else "measured earlier in this process"
        if self.scan_seconds_per_step is None:
            return (
                f"{form} ({when}: {_seconds(self.step_seconds_per_step)}/step alone; the scan "
                "not tried, as a step this slow with convolutions gains nothing under it on the "
                "CPU)"
            )
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
    # Wait for each step before dispatching the next: XLA's CPU collectives block a thread per
    # device, and several programs over many CPU devices in flight at once can exhaust the
    # threads each needs (a rendezvous that never completes).
    one_at_a_time: bool = False
    # The scan compiled for a number of steps while deciding (the jit compiles the others).
    scan_compiled: dict[int, Any] = dataclasses.field(default_factory=dict)


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
        # A program over several processes' devices runs its collectives in step on all of
        # them: every process must take the same measurement's path and choose alike.
        self._lockstep = any(
            not sharding.is_fully_addressable
            for sharding in jax.tree.leaves(
                in_shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding)
            )
        )

    @property
    def choice(self) -> LoopChoice | None:
        """The form of this loop's latest call (None before its first): each set of argument
        shapes is decided at its first call."""
        return self._last.choice if self._last else None

    def __call__(
        self, carry: Any, *args: Any, watch: Callable[[Any], None] | None = None
    ) -> tuple[Any, Any]:
        """Run the steps of the rows in `args[num_shared:]` from `carry`; in the step form
        `watch` receives each step's outputs as it is dispatched (engine.progress)."""
        shared, rows = args[: self._num_shared], args[self._num_shared :]
        signature = _signature(carry, shared, rows)
        programs = self._programs.get(signature)
        if programs is None:
            programs, result = self._first_call(carry, shared, rows)
            self._programs[signature] = self._last = programs
            if result is not None:  # deciding ran this call's steps
                return result
        self._last = programs
        return _run(programs, carry, shared, rows, watch)

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

    def _first_call(self, carry, shared, rows) -> tuple[_Programs, tuple | None]:
        """The programs for these argument shapes and their form: configured, cached for this
        program, or decided now; and this call's result when deciding ran its steps."""
        programs = self._build()
        programs.one_at_a_time = _over_cpu_devices(carry)
        if jax.config.jax_disable_jit:  # nothing compiles: every form runs op by op
            programs.choice = LoopChoice(self.form if self.form != "auto" else "scan", "no_jit")
            return programs, None
        if self.form != "auto":
            programs.choice = LoopChoice(self.form, "config")
            return programs, None
        lowered = programs.step.lower(carry, *shared, *programs.split_rows(1, rows)[0])
        text = lowered.as_text()
        key = _program_key(text)
        with _key_lock(key):
            cached = _CACHE.get(key)
            if cached is not None:
                choice = dataclasses.replace(cached.choice, source="cache")
                return dataclasses.replace(cached, choice=choice), None
            agree = distributed.broadcast_json if self._lockstep else _as_measured
            if any(op in text for op in RISKY_OPS):
                programs.choice, result = decide(
                    programs, lowered, carry, shared, rows, agree=agree
                )
            else:
                programs.choice, result = scan_unraced(programs, carry, shared, rows, agree)
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = programs
        return programs, result


def _steps(rows: tuple) -> int:
    """The number of steps in a call's rows (their leading axis)."""
    return int(jax.tree.leaves(rows)[0].shape[0])


def _run(
    programs: _Programs,
    carry: Any,
    shared: tuple,
    rows: tuple,
    watch: Callable[[Any], None] | None = None,
) -> tuple[Any, Any]:
    """One call's steps in the chosen form: (carry, outputs stacked on a leading step axis)."""
    if programs.choice.form == "scan":
        scan = programs.scan_compiled.get(_steps(rows), programs.scan)
        return scan(carry, *shared, *rows)
    row_list = programs.split_rows(_steps(rows), rows)
    step = programs.step_compiled or programs.step
    carry, outputs = _dispatch(step, carry, shared, row_list, programs.one_at_a_time, watch)
    return carry, jax.tree.map(lambda *values: np.stack(values), *jax.device_get(outputs))


def _dispatch(
    step: Callable,
    carry: Any,
    shared: tuple,
    row_list: Sequence[tuple],
    one_at_a_time: bool,
    watch: Callable[[Any], None] | None = None,
):
    """`step` once per row, each call dispatched as the one before runs (or after it, one at a
    time): (carry, outputs); `watch` gets each step's outputs as it is dispatched."""
    outputs = []
    for row in row_list:
        carry, out = step(carry, *shared, *row)
        if one_at_a_time:
            jax.block_until_ready(out)
        if watch is not None:
            watch(out)
        outputs.append(out)
    return carry, outputs


def _on_cpu(tree: Any) -> bool:
    """Whether the arrays of `tree` live on CPU devices."""
    return all(
        next(iter(leaf.sharding.device_set)).platform == "cpu"
        for leaf in jax.tree.leaves(tree)
        if isinstance(leaf, jax.Array)
    )


def _over_cpu_devices(tree: Any) -> bool:
    """Whether any array of `tree` spans several CPU devices."""
    return any(
        isinstance(leaf, jax.Array)
        and len(leaf.sharding.device_set) > 1
        and next(iter(leaf.sharding.device_set)).platform == "cpu"
        for leaf in jax.tree.leaves(tree)
    )


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
    """(steps, rows) -> per step, the tuple of its rows, laid out as the step program takes them.

    One compiled program takes step i's rows (i traced), dispatched once per step: a program
    that returned all K rows at once would compile for seconds per chunk length (its K outputs).
    """
    kwargs = {"out_shardings": row_shardings} if row_shardings else {}
    take = jax.jit(
        lambda rows, i: tuple(jax.lax.dynamic_index_in_dim(r, i, keepdims=False) for r in rows),
        **kwargs,
    )

    def split(steps: int, rows: tuple) -> list[tuple]:
        return [take(rows, np.int32(i)) for i in range(steps)]

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


def _as_measured(seconds: float) -> float:
    return seconds


def scan_unraced(
    programs: _Programs,
    carry: Any,
    shared: tuple,
    rows: tuple,
    agree: Callable[[float], float] = _as_measured,
) -> tuple[LoopChoice, tuple]:
    """The scan for a program without RISKY_OPS, the step form not timed: (choice, this call's
    result). The call's own steps run under the scan, compiled first, and their time (through
    `agree`, as in `decide`) is the choice's; steps that slow (SLOW_STEP_SECONDS, in a call
    longer than SLOW_CALL_SECONDS) move later calls to the step form, for per-step progress."""
    steps = _steps(rows)
    scan = programs.scan_compiled[steps] = programs.scan.lower(carry, *shared, *rows).compile()
    t0 = time.perf_counter()
    carry, outputs = scan(carry, *shared, *rows)
    outputs = jax.device_get(outputs)
    scan_s = agree((time.perf_counter() - t0) / steps)
    slow = too_slow_to_scan(scan_s, steps)
    choice = LoopChoice(
        form="step" if slow else "scan",
        source="slow_step" if slow else "no_risky_ops",
        scan_seconds_per_step=scan_s,
        measure_seconds=0.0,
    )
    return choice, (carry, outputs)


def decide(
    programs: _Programs,
    lowered: jax.stages.Lowered,
    carry: Any,
    shared: tuple,
    rows: tuple,
    *,
    agree: Callable[[float], float] = _as_measured,
) -> tuple[LoopChoice, tuple | None]:
    """Time both forms of a program with RISKY_OPS (compilation excluded) and choose: (choice,
    this call's result when the scan ran the call's own steps to decide, else None).

    The step program (`lowered`) is compiled into `programs.step_compiled` and runs first, on a
    copy of `carry`, in blocks dispatched as a real call dispatches them. Then the scan:
      * when the call's K steps take the step form little time, the call's own scan program
        runs on the copy, in rounds alternating with the step form;
      * else a scan of a few steps compiled for it runs on the copy first, and settles the
        choice when it is far slower per step or as fast (short_scan_decides);
      * else the call's own K steps run under the scan, on `carry` itself, and their time
        decides (confirmed by a second, warm call on the copy before leaving the scan): no step
        is wasted, nor a compile.
    On the CPU, a step slower than UNSCANNED_STEP_SECONDS alone takes the step form without
    trying the scan (its scan time is then None).
    Every time measured passes through `agree` (process 0's, for a program over several
    processes), so that every process takes the same path and the same choice. A slow step
    (SLOW_STEP_SECONDS, in a call longer than SLOW_CALL_SECONDS) takes the step form at once.
    """
    t_start = time.perf_counter()
    programs.step_compiled = lowered.compile()
    steps = _steps(rows)
    row_list = programs.split_rows(steps, rows)
    probe = _copy(carry)

    def step_block(state, count: int) -> tuple[Any, float]:
        t0 = time.perf_counter()
        rows_run = [row_list[i % steps] for i in range(count)]
        state, outputs = _dispatch(
            programs.step_compiled, state, shared, rows_run, programs.one_at_a_time
        )
        jax.device_get(outputs)
        return state, agree((time.perf_counter() - t0) / count)

    def scan_call(state, program, scan_rows) -> tuple[Any, Any, float]:
        t0 = time.perf_counter()
        state, outputs = program(state, *shared, *scan_rows)
        outputs = jax.device_get(outputs)
        return state, outputs, agree((time.perf_counter() - t0) / _steps(scan_rows))

    def chosen(step_s: float, scan_s: float | None, seconds: float | None = None) -> LoopChoice:
        return LoopChoice(
            form="step" if scan_s is None else choose(step_s, scan_s),
            source="measured",
            scan_seconds_per_step=scan_s,
            step_seconds_per_step=step_s,
            measure_seconds=time.perf_counter() - t_start if seconds is None else seconds,
        )

    probe, _ = step_block(probe, 1)  # a program's first call allocates its buffers
    count = MIN_PROBE_STEPS
    probe, step_s = step_block(probe, count)
    while step_s * count < PROBE_SECONDS and count < MAX_PROBE_STEPS:
        count = min(MAX_PROBE_STEPS, max(2 * count, math.ceil(PROBE_SECONDS / step_s)))
        probe, step_s = step_block(probe, count)

    if too_slow_to_scan(step_s, steps):
        return slow_step_choice(step_s, time.perf_counter() - t_start), None
    if steps * step_s <= MAX_SCAN_PROBE_SECONDS:  # the call's own scan, on the copy
        scan = programs.scan_compiled[steps] = programs.scan.lower(probe, *shared, *rows).compile()
        probe, _, scan_s = scan_call(probe, scan, rows)  # the first call, as a warm-up
        if scan_s * steps > CLEAR_SECONDS and scan_s > CLEAR_FACTOR * step_s:
            return chosen(step_s, scan_s), None
        step_times, scan_times = [], []
        for _ in range(PROBE_ROUNDS):
            probe, seconds = step_block(probe, max(count, steps))
            step_times.append(seconds)
            probe, _, seconds = scan_call(probe, scan, rows)
            scan_times.append(seconds)
        return chosen(float(np.median(step_times)), float(np.median(scan_times))), None

    step_times = [step_s]
    for _ in range(PROBE_ROUNDS - 1):
        probe, seconds = step_block(probe, count)
        step_times.append(seconds)
    step_s = float(np.median(step_times))
    if step_s >= UNSCANNED_STEP_SECONDS and _on_cpu(carry):
        return chosen(step_s, None), None
    length = min(steps, max(MIN_PROBE_STEPS, math.ceil(PROBE_SECONDS / step_s)))
    short_rows = programs.first_rows(length, rows)
    short = programs.scan.lower(probe, *shared, *short_rows).compile()
    probe, _, short_s = scan_call(probe, short, short_rows)
    if short_s * length < CLEAR_SECONDS:  # cheap enough to time again, warm
        probe, _, short_s = scan_call(probe, short, short_rows)
    if short_scan_decides(step_s, short_s):
        return chosen(step_s, short_s), None
    probing = time.perf_counter() - t_start
    scan = programs.scan_compiled[steps] = programs.scan.lower(carry, *shared, *rows).compile()
    carry, outputs, scan_s = scan_call(carry, scan, rows)  # the call's own steps, for real
    if choose(step_s, scan_s) == "step" and scan_s <= CLEAR_FACTOR * step_s:
        # A program's first call can overstate its time: leave the scan only if a second, warm
        # call (on the copy) beside another block of the step form confirms it.
        t0 = time.perf_counter()
        probe, _, warm_s = scan_call(probe, scan, rows)
        probe, seconds = step_block(probe, count)
        step_s = float(np.median([*step_times, seconds]))
        scan_s = min(scan_s, warm_s)
        probing += time.perf_counter() - t0
    return chosen(step_s, scan_s, probing), (carry, outputs)


def too_slow_to_scan(seconds_per_step: float, steps: int) -> bool:
    """Whether a step of `seconds_per_step`, in a call of `steps`, takes the step form for its
    progress (SLOW_STEP_SECONDS, SLOW_CALL_SECONDS)."""
    return seconds_per_step >= SLOW_STEP_SECONDS and steps * seconds_per_step > SLOW_CALL_SECONDS


def slow_step_choice(step_s: float, seconds: float) -> LoopChoice:
    """The step form for a step of `step_s` seconds (SLOW_STEP_SECONDS), the scan not timed."""
    return LoopChoice(
        form="step", source="slow_step", step_seconds_per_step=step_s, measure_seconds=seconds
    )


def short_scan_decides(step_seconds: float, short_scan_seconds: float) -> bool:
    """Whether a short scan's seconds per step settle the choice: far slower than the step form,
    or as fast (it overstates the scan's per-step time, its per-call cost shared by few steps)."""
    if short_scan_seconds > CLEAR_FACTOR * step_seconds:
        return True
    return choose(step_seconds, short_scan_seconds) == "scan"


def choose(step_seconds: float, scan_seconds: float) -> str:
    """The form to run, from each form's seconds per step: the step form only when it is
    faster than the scan by more than STEP_MARGIN."""
    return "step" if step_seconds * STEP_MARGIN < scan_seconds else "scan"
