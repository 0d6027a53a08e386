"""The trainer: one pure `train_step(state, batch)` over split NNX state, run under `lax.scan`.

The step is kept a pure function of a pytree state so the same function is jitted, scanned over
K steps per host call, and later vmapped over trials and sharded over a mesh (see DESIGN.md).
"""

import dataclasses
import functools
import hashlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import models
from workflow import augment as augmentation
from workflow import distributed, losses
from workflow.errors import UsageError

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

DATA_AXIS = "data"  # the mesh axis a data-parallel batch is split over


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training: the step, parameters, model state, optimizer."""

    step: jax.Array
    params: Any
    model_state: Any  # non-parameter NNX state: RNG counters, BatchNorm statistics
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class Task:
    """The static half of training: graph definitions, optimizer, loss and augmentation."""

    train_graphdef: Any
    eval_graphdef: Any
    tx: optax.GradientTransformation
    loss_fn: losses.LossFn
    # (key, x) -> x applied to training batches only; None: no augmentation.
    augment: augmentation.AugmentFn | None = None
    # The augmentation key of step s is augmentation.step_key(augment_seed, s) (config.seed).
    augment_seed: int = 0
    # Forward/backward dtype (config.dtype); parameters and the loss stay float32.
    compute_dtype: str = "float32"


def compute_cast(tree: Any, dtype: str) -> Any:
    """The floating leaves of `tree` in the compute dtype: mixed precision's one cast.

    Parameters stay float32 in the state and the optimizer; the step differentiates through
    this cast, so gradients arrive in float32 too.
    """
    if dtype == "float32":
        return tree
    target = jnp.dtype(dtype)

    def cast(leaf):
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(target)
        return leaf

    return jax.tree.map(cast, tree)


def forward(
    graphdef: Any, params: Any, model_state: Any, x: jax.Array, dtype: str = "float32"
) -> tuple[jax.Array, nnx.Module]:
    """The model's float32 outputs on x, computed in `dtype`, and the merged model."""
    model = nnx.merge(graphdef, compute_cast(params, dtype), model_state)
    return model(compute_cast(x, dtype)).astype(jnp.float32), model


def build_optimizer(
    opt: ml_collections.ConfigDict, l2: float = 0.0, num_steps: int = 1
) -> optax.GradientTransformation:
    """The configured optimizer, with the L2 penalty applied as its gradient.

    The learning rate and the L2 weight live in the optimizer state (`inject_hyperparams`), so
    trials batched under `vmap` each carry their own. `l2 * sum(w**2)` added to the loss has the
    gradient `2 * l2 * w`, which `add_decayed_weights` adds before the optimizer sees it.
    """
    base = {
        "adam": lambda lr: optax.adam(lr),
        "adamw": lambda lr: optax.adamw(lr, weight_decay=opt.weight_decay),
        "sgd": lambda lr: optax.sgd(lr),
        "momentum": lambda lr: optax.sgd(lr, momentum=opt.momentum),
    }[opt.name]

    multiplier = lr_multiplier(opt, num_steps)

    def make(learning_rate, l2):
        parts = [optax.add_decayed_weights(2.0 * l2), base(learning_rate)]
        if multiplier is not None:  # constant schedules keep the state (and checkpoints) lean
            parts.append(optax.scale_by_schedule(multiplier))
        return optax.chain(*parts)

    return optax.inject_hyperparams(make)(learning_rate=opt.learning_rate, l2=l2)


def lr_multiplier(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule | None:
    """config.optimizer.schedule as a factor on the learning rate; None for "constant".

    A factor rather than a schedule of the rate itself: the rate stays one injected scalar, so
    batched trials (each with its own rate) share the schedule's shape.
    """
    schedule = opt.get("schedule") or {"name": "constant"}
    name = schedule["name"]
    if name == "constant":
        return None
    if name == "piecewise":
        boundaries = {int(b): float(schedule["scale"]) for b in schedule["boundaries"]}
        return optax.piecewise_constant_schedule(1.0, boundaries)
    warmup = int(schedule.get("warmup_steps", 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else 1.0,
        peak_value=1.0,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
    )


def model_kwargs(config: ml_collections.ConfigDict) -> dict:
    """The model's keyword options from config.model (JSON lists back to tuples)."""
    kwargs = {k: v for k, v in config.model.items() if k != "name"}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def build_model(config: ml_collections.ConfigDict, input_shape, num_classes: int) -> nnx.Module:
    """The configured model, built as `Class(input_shape, num_outputs, *, rngs, **kwargs)`."""
    kwargs = model_kwargs(config)
    return initialize(
        lambda: models.build_model(
            config.model.name,
            tuple(input_shape),
            num_classes,
            rngs=nnx.Rngs(config.seed, dropout=config.seed + 1),
            **kwargs,
        )
    )


def few_runs_options() -> dict[str, Any] | None:
    """XLA options for a program that runs once or a few times: on the CPU, the lowest backend
    optimization level, which compiles small programs 3-5x faster; elsewhere the defaults."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


# Compiled set-up programs by their StableHLO text: building the same model again in one process
# (search trials, improve's candidates, tests) reuses the executable, as eager per-op caches did.
_SETUP_PROGRAMS: dict[str, Any] = {}


def run_setup_program(fun: Callable, *args: Any) -> Any:
    """`fun(*args)` as one program compiled for a single run (see `initialize`)."""
    if _traced(args):  # under an outer trace (eval_shape): part of that program
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
    shape: 5.2 s for LeNet on the 2-core CPU, most of a cold debug run's set-up. Traced once and
    compiled at XLA's lowest backend optimization level (the program runs once), it takes 1.5 s
    (MLP 4.1 -> 0.6 s, transformer 6.2 -> 2.5 s, ResNet-20 4.9 -> 1.9 s); the values agree with
    eager initialization to 1 ulp. Constructors that need concrete values are built eagerly.
    """
    try:
        abstract = nnx.eval_shape(make)
    except jax.errors.JAXTypeError:  # e.g. a constructor that inspects its random weights
        return make()
    return nnx.merge(nnx.graphdef(abstract), run_setup_program(lambda: nnx.state(make())))


def check_output_shape(model: nnx.Module, input_shape, num_classes: int) -> None:
    """Catch a model whose outputs are not (batch, classes) before anything trains on them."""
    x = jax.ShapeDtypeStruct((2, *input_shape), jnp.float32)
    graphdef, state = nnx.split(model)
    try:
        out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
        chex.assert_shape(out, (2, num_classes))
    except AssertionError as e:
        raise UsageError(
            f"model {type(model).__name__} returns shape {getattr(out, 'shape', None)} for "
            f"input (2, *{tuple(input_shape)}); expected (2, {num_classes}) logits ({e})"
        ) from None


def build_augment(
    config: ml_collections.ConfigDict, kind: str | None = None
) -> augmentation.AugmentFn | None:
    """The configured augmentation for data of `kind` (default config.augment.kind), or None."""
    cfg = config.get("augment")
    if cfg is None or not cfg.enabled:
        return None
    kind = kind or cfg.get("kind")
    if kind not in augmentation.KINDS:
        raise UsageError(
            f"invalid value augment.kind={kind!r}: augmentation needs the data kind, one of "
            f"{', '.join(augmentation.KINDS)} (experiment.prepare sets it from the dataset)"
        )
    return augmentation.make_augment(kind, cfg)


def create_train_state(
    model: nnx.Module, config: ml_collections.ConfigDict, kind: str | None = None
) -> tuple[Task, TrainState]:
    """Split the model once into train/eval graph definitions, parameters and other state.

    `kind` (image, sequence, tabular) picks the augmentation block; without it
    config.augment.kind does, which experiment.prepare fills in from the dataset, so callers
    that only pass the config (trials.TrialRunner) augment like the single run.
    """
    model.train()
    train_graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    model.eval()
    eval_graphdef = nnx.split(model, nnx.Param, ...)[0]
    model.train()
    tx = build_optimizer(config.optimizer, float(config.l2), int(config.num_steps))
    task = Task(
        train_graphdef=train_graphdef,
        eval_graphdef=eval_graphdef,
        tx=tx,
        loss_fn=losses.get_loss(config.loss),
        augment=build_augment(config, kind),
        augment_seed=int(config.seed),
        compute_dtype=config.get("dtype", "float32"),
    )
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        # Eagerly, each zeros_like would compile once per parameter shape.
        opt_state=run_setup_program(tx.init, params),
    )
    return task, state


def fresh_variables(tree: Any) -> Any:
    """New Variable objects over the same arrays: NNX refuses to mutate outer-trace Variables."""
    return jax.tree.map(lambda leaf: leaf, tree)


def make_train_step(task: Task) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure training step: augmentation, forward, loss, gradient, optimizer update."""

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        x = batch["x"]
        if task.augment is not None:
            # A key from (seed, step) alone: resumed runs and vmapped trials draw the same.
            x = task.augment(augmentation.step_key(task.augment_seed, state.step), x)

        def objective(params):
            # Fresh Variables at this trace level, so BatchNorm may update its statistics here.
            logits, model = forward(
                task.train_graphdef,
                params,
                fresh_variables(state.model_state),
                x,
                task.compute_dtype,
            )
            data_loss = jnp.mean(task.loss_fn(logits, batch["y"]))
            new_model_state = nnx.split(model, nnx.Param, ...)[2]
            return data_loss, (logits, new_model_state)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (data_loss, (logits, model_state)), grads = grad_fn(state.params)
        updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": data_loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"]),
            # One reduction over all gradients: a norm per parameter array costs ~10% of a small
            # model's step on the CPU (measured by benchmarks/train_throughput.py).
            "grad_norm": jnp.linalg.norm(
                jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
            ),
        }
        new_state = TrainState(state.step + 1, params, model_state, opt_state)
        return new_state, metrics

    return train_step


def data_mesh(config: ml_collections.ConfigDict) -> Mesh | None:
    """The data-parallel mesh of config.parallel; None on one device, where nothing is split."""
    parallel = config.get("parallel") or ml_collections.ConfigDict({"data_devices": 0})
    devices = jax.devices()
    count = parallel.data_devices or len(devices)
    if count > len(devices):
        raise UsageError(
            f"invalid value parallel.data_devices={count}: only {len(devices)} device(s) "
            f"are visible ({devices[0].platform}); valid: 0 (all) or 1..{len(devices)}"
        )
    if count == 1:
        return None
    check_divisible_batch(config.batch_size, count)
    if distributed.multi_process():
        devices = _even_over_processes(devices, count)
    return Mesh(np.array(devices[:count]), (DATA_AXIS,))


def _even_over_processes(devices: list, count: int) -> list:
    """`count` devices, the same number from every process, process by process: each host's
    devices then hold one contiguous range of the mesh (its shard of per-host data)."""
    processes = jax.process_count()
    if count % processes:
        raise UsageError(
            f"invalid value parallel.data_devices={count}: with {processes} processes it must "
            f"be a multiple of {processes} (the same number of devices on every host), or 0"
        )
    by_process: dict[int, list] = {}
    for device in sorted(devices, key=lambda d: (d.process_index, d.id)):
        by_process.setdefault(device.process_index, []).append(device)
    return [d for p in sorted(by_process) for d in by_process[p][: count // processes]]


def data_layout(config: ml_collections.ConfigDict) -> str:
    """config.parallel.data resolved for this run: "per_host" or "replicated"."""
    parallel = config.get("parallel") or {}
    return distributed.data_layout(parallel.get("data", "auto"))


def check_divisible_batch(batch_size: int, devices: int) -> None:
    """Reject a batch the data-parallel mesh cannot split evenly, naming the nearest sizes."""
    if batch_size % devices == 0:
        return
    below = batch_size // devices * devices
    nearest = [size for size in (below, below + devices) if size > 0]
    raise UsageError(
        f"invalid value batch_size={batch_size}: data parallelism splits each batch over "
        f"{devices} devices, so it must be a multiple of {devices}; nearest valid: "
        f"{' or '.join(map(str, nearest))} (or set --config.parallel.data_devices to a "
        f"divisor of {batch_size}, 1 for no data parallelism)"
    )


def state_shardings(state: TrainState, mesh: Mesh, layout: str = "replicated") -> Any:
    """Where each leaf of the state lives: every device ("replicated") or split ("sharded").

    "sharded" splits each array along its largest axis the mesh divides (parameters and the
    optimizer moments alike, ZeRO-style); XLA gathers them where the step needs them whole.
    """

    def place(leaf):
        shape = getattr(leaf, "shape", ())
        if layout != "sharded" or not shape:
            return replicated(mesh)
        axes = [a for a in range(len(shape)) if shape[a] % mesh.size == 0]
        if not axes:
            return replicated(mesh)
        axis = max(axes, key=lambda a: shape[a])
        spec = [None] * len(shape)
        spec[axis] = DATA_AXIS
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(place, state)


def replicated(mesh: Mesh) -> NamedSharding:
    """Arrays held whole on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split along their leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def index_sharding(mesh: Mesh) -> NamedSharding:
    """A (K, batch) block of example indices: each device holds its part of every row."""
    return NamedSharding(mesh, PartitionSpec(None, DATA_AXIS))


def make_multi_step(
    task: Task, mesh: Mesh | None = None, shardings: Any = None, per_host: bool = False
) -> Callable:
    """K training steps in one compiled call: batches gathered on device by example index.

    With a mesh, each step's batch is split over its devices (the gather of a sharded index
    row yields a sharded batch) and jit partitions the pure step: the same program, gradients
    all-reduced by XLA, so the numbers are the one-device run's up to float summation order.
    `per_host`: x and y are split over the mesh in equal blocks (per-host data), and each
    device gathers its part of every batch from its own block by the local indices in its
    columns of the index row (data.block_batch_indices), under shard_map.
    """
    train_step = make_train_step(task)
    gather_blocks = block_gather(mesh) if per_host else None

    def multi_step(state: TrainState, x: jax.Array, y: jax.Array, indices: jax.Array):
        def body(state, idx):
            if gather_blocks is not None:
                xb, yb = gather_blocks(x, y, idx)
            else:
                xb, yb = x[idx], y[idx]
            if mesh is not None:
                xb = jax.lax.with_sharding_constraint(xb, batch_sharding(mesh))
                yb = jax.lax.with_sharding_constraint(yb, batch_sharding(mesh))
            return train_step(state, {"x": xb, "y": yb})

        return jax.lax.scan(body, state, indices)

    if mesh is None:
        return jax.jit(multi_step, donate_argnums=0)
    whole = replicated(mesh)
    data = batch_sharding(mesh) if per_host else whole
    return jax.jit(
        multi_step,
        donate_argnums=0,
        in_shardings=(shardings, data, data, index_sharding(mesh)),
        out_shardings=(shardings, whole),
    )


def block_gather(mesh: Mesh) -> Callable:
    """(x, y, idx) -> (x[idx], y[idx]) per device: each device indexes its own block of x and y
    with its part of idx (all three split over the mesh's data axis); the result is the
    concatenation of the devices' parts, split the same way."""
    spec = PartitionSpec(DATA_AXIS)
    return jax.shard_map(
        lambda x, y, idx: (x[idx], y[idx]), mesh=mesh, in_specs=(spec,) * 3, out_specs=(spec,) * 2
    )


def device_blocks(
    x: np.ndarray, y: np.ndarray, mesh: Mesh, held_in_parts: bool
) -> tuple[jax.Array, jax.Array, int]:
    """Per-host data as global arrays split over the mesh in equal blocks: (x, y, block size).

    `held_in_parts`: every process holds only its own shard (data.load_dataset's per-host
    loading), which its devices split among themselves; otherwise every process holds the
    whole split and keeps its devices' blocks of it. Rows past the last full block are dropped.
    """
    positions = distributed.local_positions(mesh)
    local, total = len(positions), mesh.size
    if positions != list(range(positions[0], positions[0] + local)):
        raise UsageError(f"this host's devices are not contiguous in the mesh: {positions}")
    if held_in_parts:
        block = len(x) // local
        rows = slice(0, local * block)
    else:
        block = len(x) // total
        rows = slice(positions[0] * block, (positions[-1] + 1) * block)
    if block < 1:
        raise UsageError(
            f"per-host data: {len(x)} training examples cannot give each of the {local} "
            "devices of this host one; use more data or --config.parallel.data=replicated"
        )
    sharding = batch_sharding(mesh)
    x_global = distributed.host_local_array(x[rows], sharding, total * block)
    y_global = distributed.host_local_array(y[rows], sharding, total * block)
    return x_global, y_global, block


def make_eval_batch(task: Task) -> Callable:
    """Summed loss and correct count of one padded batch in eval mode (mask marks real rows)."""

    def eval_batch(params, model_state, x, y, mask):
        logits, _ = forward(task.eval_graphdef, params, model_state, x, task.compute_dtype)
        loss = jnp.sum(task.loss_fn(logits, y) * mask)
        correct = jnp.sum((jnp.argmax(logits, -1) == y) * mask)
        return loss, correct

    return jax.jit(eval_batch)


def padded_batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    pad_to: int | None = None,
    num_batches: int | None = None,
) -> Iterator[tuple]:
    """Fixed-shape batches (one compile) with a mask over the padding of the last one.

    Batches are min(batch_size, len(x)) long, or `pad_to` long when given. `num_batches`
    (at least enough for x) adds wholly padded batches after the data, so that processes
    holding fewer rows run as many batches as the others.
    """
    n = len(x)
    batch_size = pad_to or min(batch_size, n)
    starts = range(0, n, batch_size)
    if num_batches is not None:
        starts = range(0, num_batches * batch_size, batch_size)
    for start in starts:
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        pad = batch_size - len(xb)
        mask = np.ones(batch_size, np.float32)
        if pad:
            xb = np.concatenate([xb, np.zeros((pad, *xb.shape[1:]), xb.dtype)])
            yb = np.concatenate([yb, np.zeros((pad,), yb.dtype)])
            mask[-pad:] = 0
        yield xb, yb, mask


class Evaluator:
    """Loss and accuracy of the model over a whole split, in eval mode."""

    def __init__(self, task: Task, batch_size: int, mesh: Mesh | None = None):
        self._eval_batch = make_eval_batch(task)
        self._mesh = mesh
        # A data-parallel mesh splits each eval batch too: round it up to a multiple.
        self._batch_size = -(-batch_size // mesh.size) * mesh.size if mesh else batch_size

    def __call__(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """{'loss', 'accuracy', 'error'} over all of (x, y).

        With several processes, arrays that differ between them (per-host data's training
        shards) are each host's own part of the split: the result is over all parts together.
        Every process must call it with its arrays at the same point (collectives).
        """
        if self._mesh is not None and not distributed.same_on_every_process(x, y):
            return self._over_every_host(state, x, y)
        total_loss, total_correct = 0.0, 0.0
        batch_size = self._batch_size
        if self._mesh is not None:  # padded to the full batch: the mesh must divide it
            batch_size = min(batch_size, -(-len(x) // self._mesh.size) * self._mesh.size)
        for xb, yb, mask in padded_batches(x, y, batch_size, pad_to=batch_size):
            if self._mesh is not None:
                xb, yb, mask = distributed.global_tree((xb, yb, mask), batch_sharding(self._mesh))
            loss, correct = self._eval_batch(state.params, state.model_state, xb, yb, mask)
            total_loss += loss
            total_correct += correct
        loss = float(total_loss) / len(x)
        accuracy = float(total_correct) / len(x)
        return {"loss": loss, "accuracy": accuracy, "error": 1.0 - accuracy}

    def _over_every_host(self, state: TrainState, x: np.ndarray, y: np.ndarray) -> dict:
        """Each process's devices evaluate its own rows; the sums run over every host's."""
        mesh = self._mesh
        local = len(distributed.local_positions(mesh))
        counts = distributed.allgather(np.asarray(len(x), np.int64))
        total, most = int(counts.sum()), int(counts.max())
        per_device = max(1, min(self._batch_size // mesh.size, -(-most // local)))
        rows = per_device * local  # this host's rows of each global batch
        sharding = batch_sharding(mesh)
        total_loss, total_correct = 0.0, 0.0
        # The same number of batches on every host: those with fewer rows pad whole batches.
        batches = padded_batches(x, y, rows, pad_to=rows, num_batches=-(-most // rows))
        for xb, yb, mask in batches:
            xb, yb, mask = (
                distributed.host_local_array(a, sharding, rows * mesh.size // local)
                for a in (xb, yb, mask)
            )
            loss, correct = self._eval_batch(state.params, state.model_state, xb, yb, mask)
            total_loss += loss
            total_correct += correct
        loss = float(total_loss) / max(total, 1)
        accuracy = float(total_correct) / max(total, 1)
        return {"loss": loss, "accuracy": accuracy, "error": 1.0 - accuracy}


def first_nonfinite(values: np.ndarray) -> int | None:
    """Index of the first NaN/inf in a 1-D array, or None."""
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if bad.size else None


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(tree)]))


def params_finite(state: TrainState) -> bool:
    """Whether every parameter is finite (one compiled check, one host sync)."""
    return bool(_all_finite(state.params))


def schedule_chunks(start: int, stop: int, max_chunk: int, every: tuple[int, ...]) -> list[int]:
    """Chunk lengths from `start` to `stop` that end exactly on every multiple of `every`."""
    chunks, step = [], start
    while step < stop:
        end = min(stop, step + max_chunk)
        for period in every:
            if period > 0:
                end = min(end, (step // period + 1) * period)
        chunks.append(end - step)
        step = end
    return chunks


def format_rate(steps: int, seconds: float) -> float:
    """Steps per second, safe for a zero duration."""
    return steps / seconds if seconds > 0 else math.inf


def now() -> float:
    """Monotonic wall clock in seconds."""
    return time.perf_counter()


@dataclasses.dataclass
class FitResult:
    """What a training run produced: final state, status, logged records and timing."""

    state: TrainState  # with early stopping: the best evaluated state, else the last one
    status: str  # "ok" | "diverged"
    records: list[dict]
    step_losses: np.ndarray  # the training loss of every step run in this process
    divergence: dict | None
    wall_seconds: float
    steps_per_s: float
    compile_seconds: float
    start_step: int
    last_checkpoint: int | None
    final_step: int = 0  # the step training reached (where it stopped early, if it did)
    stopped_early: bool = False  # early stopping ended training before config.num_steps
    best_step: int | None = None  # the step `state` comes from
    best_value: float | None = None  # its early-stopping metric (None without early stopping)
    # Where the training data lived: {"layout", "examples"} and, per-host, the device blocks
    # ("blocks", "block_size", and "dropped": examples left out here, beyond load_dataset's).
    data: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EarlyStopping:
    """The best value of a validation metric, where it was reached, and evaluations since."""

    metric: str  # "val_accuracy" (higher is better) or "val_loss" (lower is better)
    patience: int
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    waited: int = 0  # evaluations since the last improvement

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "EarlyStopping | None":
        """A tracker for config.early_stopping, or None when it is off (or absent)."""
        es = config.get("early_stopping")
        if es is None or not es.enabled:
            return None
        return cls(es.metric, int(es.patience), float(es.min_delta))

    def update(self, step: int, record: dict) -> bool:
        """Count one evaluation record; True when it is a new best (by more than min_delta)."""
        value = float(record[self.metric])
        sign = -1.0 if self.metric.endswith("loss") else 1.0
        better = math.isfinite(value) and (
            self.best is None or sign * (value - self.best) > self.min_delta
        )
        if better:
            self.best, self.best_step, self.waited = value, step, 0
        else:
            self.waited += 1
        return better

    @property
    def exhausted(self) -> bool:
        """Whether `patience` evaluations in a row have not improved (patience 0: one)."""
        return self.waited > 0 and self.waited >= self.patience

    def replay(self, records: Sequence[dict], until: int) -> None:
        """Count the evaluation records of steps <= `until` (a resumed run's logged history)."""
        for record in records:
            if self.metric in record and record["step"] <= until:
                self.update(int(record["step"]), record)


def checkpoints_to_keep(config: ml_collections.ConfigDict, default: int = 3) -> int:
    """How many checkpoints a run must keep so early stopping's best one is never evicted.

    After the best step, at most `patience` evaluations (patience * eval_every steps) pass before
    the run stops, so the periodic checkpoints saved meanwhile (window // checkpoint_every + 1),
    the stop one and the final one of a run since extended (num_steps raised) bound how many
    are newer than the best.
    """
    es = config.get("early_stopping")
    if es is None or not es.enabled or not config.checkpoint_every:
        return default
    newer = max(es.patience, 1) * config.eval_every // config.checkpoint_every + 3
    return max(default, newer + 1)


def copy_state(state: TrainState) -> TrainState:
    """A copy in new buffers: the multi-step donates (invalidates) the state it is given."""
    return jax.tree.map(jnp.copy, state)


def window_records(step0: int, metrics: dict[str, np.ndarray], log_every: int, rate: float):
    """Mean train metrics of each log window that ends inside a chunk (steps are 1-based)."""
    records, k = [], len(metrics["loss"])
    ends = [s for s in range(step0 + 1, step0 + k + 1) if s % log_every == 0]
    if not ends or ends[-1] != step0 + k:
        ends.append(step0 + k)  # always log the chunk's last step
    lo = 0
    for end in ends:
        hi = end - step0
        lo = max(lo, hi - log_every)
        record = {"step": end}
        for name, values in metrics.items():
            record[f"train_{name}"] = float(np.mean(values[lo:hi]))
        record["steps_per_s"] = rate
        records.append(record)
        lo = hi
    return records


def fit(
    task: Task,
    state: TrainState,
    dataset,
    config: ml_collections.ConfigDict,
    *,
    log: Callable[[dict], None] = lambda record: None,
    checkpointer=None,
    progress: bool = True,
    history: Sequence[dict] = (),
) -> FitResult:
    """Train from `state.step` to `config.num_steps`, logging, evaluating and checkpointing.

    With config.early_stopping on, training stops once the validation metric has not improved
    for `patience` evaluations, and the best evaluated state is returned. Every new best is
    checkpointed (a checkpoint of the current state at its step), so a resumed run restores it
    from there; `history` (the metrics.jsonl records up to the resume step) replays the
    evaluations the tracker saw. A stopped run that is rerun trains nothing and returns the
    best state again; the latest checkpoint stays the state where training stopped, so a
    resumed run's numbers are the uninterrupted run's.
    """
    from tqdm.auto import tqdm

    from workflow import data

    mesh = data_mesh(config)
    layout = data_layout(config) if mesh is not None else "replicated"
    x_host, y_host = dataset.x_train, dataset.y_train
    shard = dataset.info.get("shard") or {}
    held_in_parts = shard.get("processes", 1) > 1  # each process loaded only its shard
    if held_in_parts and layout == "replicated":  # every device needs all of it: gather
        x_host, y_host = (distributed.concat_over_processes(a) for a in (x_host, y_host))
        held_in_parts = False
    shardings, block_size = None, None
    data_info = {"layout": layout, "examples": len(y_host)}
    if mesh is None:
        x_train, y_train = jnp.asarray(x_host), jnp.asarray(y_host)
    else:
        shardings = state_shardings(state, mesh, config.parallel.params)
        state = distributed.global_tree(state, shardings)
        if layout == "per_host":
            x_train, y_train, block_size = device_blocks(x_host, y_host, mesh, held_in_parts)
            used = block_size * mesh.size
            seen = shard.get("global_size", len(y_host)) if held_in_parts else len(y_host)
            data_info.update(
                examples=used, blocks=mesh.size, block_size=block_size, dropped=seen - used
            )
        else:
            x_train, y_train = distributed.global_tree((x_host, y_host), replicated(mesh))
    multi_step = make_multi_step(task, mesh, shardings, per_host=block_size is not None)
    evaluator = Evaluator(task, config.eval_batch_size, mesh)
    start_step = step = int(state.step)
    last_checkpoint = checkpointer.latest_step() if checkpointer else None
    tracker = EarlyStopping.from_config(config)
    best_state = None
    if tracker is not None:
        tracker.replay(history, start_step)
        best_state = _resume_best(tracker, state, start_step, checkpointer)
    stopped = tracker is not None and tracker.exhausted and start_step < config.num_steps
    chunks = schedule_chunks(
        start_step,
        config.num_steps,
        config.steps_per_call,
        (config.eval_every, config.checkpoint_every),
    )
    records, step_losses, divergence = [], [], None
    compiled, compile_seconds, train_seconds, timed_steps = set(), 0.0, 0.0, 0
    bar = tqdm(
        total=config.num_steps,
        initial=start_step,
        disable=not progress,
        unit="step",
        desc="train",
        leave=False,
    )
    t_start = now()
    for k in [] if stopped else chunks:
        if block_size is not None:  # per-host: each device's columns index its own block
            indices = data.block_batch_indices(
                block_size, mesh.size, config.batch_size, config.seed, step, k
            )
        else:
            indices = data.batch_indices(len(y_host), config.batch_size, config.seed, step, k)
        t0 = now()
        if mesh is not None:  # every process passes the same global indices
            indices = distributed.global_array(indices, index_sharding(mesh))
        state, metrics = multi_step(state, x_train, y_train, jnp.asarray(indices))
        metrics = jax.device_get(metrics)
        seconds = now() - t0
        if k in compiled:
            train_seconds, timed_steps = train_seconds + seconds, timed_steps + k
        else:  # the first call of each chunk length includes its compilation
            compiled.add(k)
            compile_seconds += seconds
        rate = format_rate(k, seconds)
        bad = first_nonfinite(np.asarray(metrics["loss"]))
        bad_grad = first_nonfinite(np.asarray(metrics["grad_norm"]))
        if bad is None and bad_grad is None and not params_finite(state):
            bad_grad = k - 1
        if bad is not None or bad_grad is not None:
            first = min(i for i in (bad, bad_grad) if i is not None)
            divergence = {
                "step": step + first + 1,  # steps count from 1, as in metrics.jsonl
                "quantity": "loss" if first == bad else "gradient",
                "last_finite_loss": float(metrics["loss"][first - 1]) if first else None,
            }
            metrics = {name: values[:first] for name, values in metrics.items()}
            k = first
        step_losses.append(np.asarray(metrics["loss"]))
        if k:
            for record in window_records(step, metrics, config.log_every, rate):
                records.append(record)
                log(record)
        step += k
        bar.update(k)
        if divergence:
            break
        bar.set_postfix(loss=f"{float(metrics['loss'][-1]):.4f}", steps_per_s=f"{rate:,.0f}")
        improved = False
        if step % config.eval_every == 0 or step == config.num_steps:
            val = evaluator(state, dataset.x_val, dataset.y_val)
            record = {"step": step, "val_loss": val["loss"], "val_accuracy": val["accuracy"]}
            records.append(record)
            log(record)
            if tracker is not None:
                improved = tracker.update(step, record)
                if improved:
                    best_state = copy_state(state)
                stopped = tracker.exhausted and step < config.num_steps
        if checkpointer and (
            step == config.num_steps
            or (config.checkpoint_every and step % config.checkpoint_every == 0)
            or improved  # the best state, for a resumed run to restore
            or stopped  # where training ended, so a rerun resumes (and stops) here
        ):
            checkpointer.save(step, state)
            last_checkpoint = step
        if stopped:
            break
    bar.close()
    losses_run = np.concatenate(step_losses) if step_losses else np.zeros(0, np.float32)
    final_step = int(state.step)  # after a divergence: the end of the chunk, as before
    if best_state is not None and not divergence:
        state = best_state
    return FitResult(
        state=state,
        status="diverged" if divergence else "ok",
        records=records,
        step_losses=losses_run,
        divergence=divergence,
        wall_seconds=now() - t_start,
        steps_per_s=format_rate(timed_steps, train_seconds) if timed_steps else 0.0,
        compile_seconds=compile_seconds,
        start_step=start_step,
        last_checkpoint=last_checkpoint,
        final_step=final_step,
        stopped_early=stopped,
        best_step=int(state.step),
        best_value=tracker.best if tracker is not None and best_state is not None else None,
        data=data_info,
    )


def _resume_best(
    tracker: EarlyStopping, state: TrainState, start_step: int, checkpointer
) -> TrainState | None:
    """The best state of the replayed history: `state` itself, or its checkpoint."""
    if tracker.best_step is None:
        return None
    if tracker.best_step == start_step:
        return copy_state(state)
    try:
        if checkpointer is None:
            raise UsageError("no checkpointer")
        return checkpointer.restore(tracker.best_step, state)
    except UsageError as e:
        # Only a checkpoint deleted by hand gets here (checkpoints_to_keep keeps the best):
        # tracking restarts from the resumed state rather than report a state it cannot load.
        warnings.warn(
            f"early stopping: the best state (step {tracker.best_step}) cannot be restored "
            f"({e}); tracking restarts at step {start_step}",
            stacklevel=3,
        )
        tracker.best, tracker.best_step, tracker.waited = None, None, 0
        return None
