"""Many trials of one architecture as one compiled program: the pure step `vmap`ped over trials.

Each trial has its own initialization seed, learning rate and L2 weight (and, with
`clip_per_trial`, its own gradient-clipping norm; with `dropout_above`, its own rate for the
dropout layers above it, a keep probability in the model's state: TrialDropout). The
optimizer's hyperparameters live in the optimizer state (`optax.inject_hyperparams`, see
build_optimizer), so the unchanged `train_step` of workflow/engine/step.py runs every trial:
vmap adds a leading trial axis to the state and broadcasts the batch. All trials see the same
batches (common random numbers: their differences come from the hyperparameters, not from the
data order). When there are several devices the trial axis is sharded over a `Mesh`, one slice
of trials per device.

Trials run on this process's own devices (`jax.local_devices()`), never across hosts: in a
multi-process job (workflow/engine/distributed.py) every process trains the same trials on its own
devices and its own whole copy of the training split, so every process gets the same results
and nothing is exchanged while they train (tune and improve then agree on process 0's choice).
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import models
from workflow import data
from workflow.engine.evaluator import add_sums, padded_batches
from workflow.engine.loop import now, schedule_chunks
from workflow.engine.loop_form import StepLoop
from workflow.engine.optimizer import build_optimizer
from workflow.engine.programs import few_runs_options
from workflow.engine.state import Task, TrainState, build_model, create_train_state, model_kwargs
from workflow.engine.step import make_train_step
from workflow.engine.tasks import TaskKind

TRIAL_AXIS = "trials"

# On the CPU a vmapped LSTM trains slower than its trials one by one (the per-trial recurrent
# matmuls of every time step become small batched matmuls), while the MLP gains:
# benchmarks/search_throughput.py --model=lstm (or mlp) measures both.
UNBATCHED_ON_CPU = ("lstm",)


class KeepProbability(nnx.Variable):
    """A TrialDropout's share of units kept (1 - its rate), as state: each trial's own."""


class TrialDropout(nnx.Dropout):
    """nnx.Dropout that keeps the share of units in its KeepProbability variable, so that
    trials trained side by side in one program drop at rates of their own; at the same rate,
    the same draws and outputs as nnx.Dropout."""

    def __call__(
        self, inputs: jax.Array, *, deterministic: bool | None = None, rngs=None
    ) -> jax.Array:
        """The inputs with each unit dropped at the rate and the survivors rescaled (train);
        unchanged when deterministic (eval)."""
        if self.deterministic if deterministic is None else deterministic:
            return inputs
        stream = self.rngs if rngs is None else rngs
        if isinstance(stream, nnx.Rngs):
            stream = stream[self.rng_collection]
        key = stream() if isinstance(stream, nnx.RngStream) else stream
        keep = self.keep[...]
        shape = [1 if dim in self.broadcast_dims else n for dim, n in enumerate(inputs.shape)]
        mask = jnp.broadcast_to(jax.random.bernoulli(key, keep, shape), inputs.shape)
        return jax.lax.select(mask, inputs / keep.astype(inputs.dtype), jnp.zeros_like(inputs))


def per_trial_dropout(model: nnx.Module, above: float, rate=None) -> None:
    """Make every nnx.Dropout of `model` with a rate above `above` a TrialDropout, in place,
    that drops at min(its rate, `rate`) (a trial's, traced under vmap), or at its own rate when
    `rate` is None. The class of the layer changes, not where it sits: the model's own code
    calls it. A subclass with a __call__ of its own (a TrialDropout among them) is left as it
    is: its rate may mean something else there."""
    layers = [
        node
        for _, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Dropout)
        and type(node).__call__ is nnx.Dropout.__call__
        and node.rate > above
    ]
    for layer in layers:
        # 1 - rate in Python, as nnx.Dropout computes it: the configured rate's very draws.
        keep = jnp.asarray(1.0 - layer.rate, jnp.float32)
        if rate is not None:
            keep = jnp.maximum(keep, 1.0 - jnp.asarray(rate, jnp.float32))
        layer.__class__ = TrialDropout
        layer.keep = nnx.data(KeepProbability(keep))


def trials_per_program(config: ml_collections.ConfigDict) -> int:
    """How many trials to vmap into one program: config.search.trials_per_program, or one for
    models that batching slows down on this backend."""
    if jax.default_backend() == "cpu" and config.model.name in UNBATCHED_ON_CPU:
        return 1
    return config.search.trials_per_program


@dataclasses.dataclass(frozen=True)
class TrialHparams:
    """The per-trial hyperparameters of one batch of trials (equal-length sequences);
    `clip_norm` (0: no clipping) for a runner built with `clip_per_trial`, `weight_decay`
    (AdamW's) for one built with `weight_decay_per_trial`, None otherwise."""

    learning_rate: Sequence[float]
    l2: Sequence[float]
    seed: Sequence[int]
    clip_norm: Sequence[float] | None = None
    weight_decay: Sequence[float] | None = None
    # The rate of the dropout layers above a runner's `dropout_above`, as a cap: min(the
    # layer's own rate, it); 1.0 (or None) keeps them as built.
    dropout_rate: Sequence[float] | None = None

    def __post_init__(self):
        n = len(self.learning_rate)
        if not n or len(self.l2) != n or len(self.seed) != n:
            raise ValueError("learning_rate, l2 and seed need one (equal, non-zero) count")
        if self.clip_norm is not None and len(self.clip_norm) != n:
            raise ValueError("clip_norm needs one value per trial")
        if self.weight_decay is not None and len(self.weight_decay) != n:
            raise ValueError("weight_decay needs one value per trial")
        if self.dropout_rate is not None and len(self.dropout_rate) != n:
            raise ValueError("dropout_rate needs one value per trial")

    def __len__(self) -> int:
        return len(self.learning_rate)


@dataclasses.dataclass
class TrialsResult:
    """What each trial did: per-trial arrays with a leading trial axis."""

    initial_loss: np.ndarray  # mean training loss of the first log window
    final_loss: np.ndarray  # mean training loss of the last log window
    train_loss_curve: np.ndarray  # (trials, windows) mean training loss per log window
    curve_steps: np.ndarray  # (windows,) last step of each window
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    diverged_at: np.ndarray  # first step with a NaN/inf loss, or -1
    steps: int
    seconds: float
    # name -> (trials, steps): every step's training metrics (loss, accuracy, grad_norm...)
    step_metrics: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    # (trials, points) eval-mode val loss at `val_curve_steps` (run's val_every; else empty)
    val_loss_curve: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))
    val_curve_steps: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))

    @property
    def improved(self) -> np.ndarray:
        """The workflow's ✓: the loss went down (by 10%) and never became NaN/inf."""
        return (self.diverged_at < 0) & (self.final_loss < 0.9 * self.initial_loss)


def trial_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over the devices (this process's local devices by default)."""
    devices = list(devices if devices is not None else jax.local_devices())
    return Mesh(np.array(devices), (TRIAL_AXIS,))


def padded_count(num_trials: int, num_devices: int) -> int:
    """The trial count rounded up to a multiple of the devices (the mesh splits it evenly)."""
    return -(-num_trials // num_devices) * num_devices


def _pad(values: Sequence, count: int) -> list:
    """Repeat the last value up to `count` entries: padding trials are copies, then dropped."""
    values = list(values)
    return values + [values[-1]] * (count - len(values))


def make_trials_multi_step(task: Task, form: str = "auto") -> StepLoop:
    """K steps of every trial per call, `(states, x, y, indices) -> (states, metrics)`: all
    trials share the gathered batch; under `lax.scan` or one compiled step per step, as `form`
    (config.loop) says or as measured faster (engine.loop_form)."""
    train_step = jax.vmap(make_train_step(task), in_axes=(0, None))

    def trials_step(states, x, y, idx):
        return train_step(states, {"x": x[idx], "y": y[idx]})

    return StepLoop(trials_step, num_shared=2, form=form)


def make_trials_evaluator(task: Task, batch_size: int) -> Callable:
    """Loss and score (the task's 1 - error, engine/tasks.py) of every trial over a split:
    (trials,) arrays."""

    def eval_batch(params, model_state, x, y, mask):
        model = nnx.merge(task.eval_graphdef, params, model_state)
        logits = model(x)
        return jnp.sum(task.loss_fn(logits, y) * mask), task.kind.batch_sums(logits, y, mask)

    batched = jax.jit(jax.vmap(eval_batch, in_axes=(0, 0, None, None, None)))

    def evaluate(states, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total_loss, totals = 0.0, None
        for xb, yb, mask in padded_batches(x, y, batch_size):
            loss, sums = batched(states.params, states.model_state, xb, yb, mask)
            total_loss, totals = total_loss + loss, add_sums(totals, sums)
        totals = jax.device_get(totals)
        scores = [
            task.kind.summarize({k: v[i] for k, v in totals.items()}, len(x))["accuracy"]
            for i in range(len(np.asarray(total_loss)))
        ]
        return np.asarray(total_loss) / len(x), np.asarray(scores, np.float64)

    return evaluate


class TrialRunner:
    """Builds, trains and evaluates batches of trials of one config; compiles each program once."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        input_shape: Sequence[int],
        num_classes: int,
        mesh: Mesh | None = None,
        task_kind: TaskKind | None = None,
        clip_per_trial: bool = False,
        weight_decay_per_trial: bool = False,
        dropout_above: float | None = None,
    ):
        self.config = config
        self.mesh = mesh or trial_mesh()
        self.clip_per_trial = clip_per_trial
        self.weight_decay_per_trial = weight_decay_per_trial
        self.dropout_above = dropout_above
        model = build_model(config, input_shape, num_classes)
        if dropout_above is not None:
            per_trial_dropout(model, dropout_above)
        # task_kind: the dataset's (Dataset.task, regression's target statistics with it).
        self.task, _ = create_train_state(model, config, task_kind=task_kind)
        # The clipping norm (AdamW's weight decay) becomes a per-trial injected hyperparameter.
        if clip_per_trial or weight_decay_per_trial:
            tx = build_optimizer(
                config.optimizer,
                float(config.l2),
                int(config.num_steps),
                clip_per_trial=clip_per_trial,
                weight_decay_per_trial=weight_decay_per_trial,
            )
            self.task = dataclasses.replace(self.task, tx=tx)
        self._init = jax.jit(
            jax.vmap(self._init_one_fn(config, tuple(input_shape), num_classes)),
            out_shardings=NamedSharding(self.mesh, PartitionSpec(TRIAL_AXIS)),
            # Compiled as initialize compiles a single run's: the same initial values.
            compiler_options=few_runs_options(),
        )
        self._multi_step = make_trials_multi_step(self.task, config.get("loop", "auto"))
        self._evaluate = make_trials_evaluator(self.task, config.eval_batch_size)

    def _init_one_fn(self, config, input_shape, num_classes) -> Callable:
        kwargs = model_kwargs(config)
        tx = self.task.tx

        def init_one(seed, learning_rate, l2, clip_norm, weight_decay, dropout_rate):
            # The same streams as build_model's nnx.Rngs(seed, dropout=seed + 1).
            rngs = nnx.Rngs(jax.random.key(seed), dropout=jax.random.key(seed + 1))
            model = models.build_model(
                config.model.name, input_shape, num_classes, rngs=rngs, **kwargs
            )
            if self.dropout_above is not None:
                per_trial_dropout(model, self.dropout_above, dropout_rate)
            model.train()
            _, params, model_state = nnx.split(model, nnx.Param, ...)
            opt_state = tx.init(params)
            opt_state.hyperparams["learning_rate"] = learning_rate
            opt_state.hyperparams["l2"] = l2
            if self.clip_per_trial:
                opt_state.hyperparams["clip_norm"] = clip_norm
            if self.weight_decay_per_trial:
                opt_state.hyperparams["weight_decay"] = weight_decay
            return TrainState(jnp.zeros((), jnp.int32), params, model_state, opt_state)

        return init_one

    def init(self, hparams: TrialHparams) -> TrainState:
        """The stacked initial states (padded to a multiple of the devices)."""
        count = padded_count(len(hparams), self.mesh.size)
        if self.clip_per_trial and hparams.clip_norm is None:
            raise ValueError("a runner with clip_per_trial needs each trial's clip_norm")
        if self.weight_decay_per_trial and hparams.weight_decay is None:
            raise ValueError("a runner with weight_decay_per_trial needs each trial's weight_decay")
        clip = hparams.clip_norm or [float(self.config.optimizer.clip_norm)] * len(hparams)
        decay = hparams.weight_decay or [float(self.config.optimizer.weight_decay)] * len(hparams)
        dropout = hparams.dropout_rate or [1.0] * len(hparams)
        return self._init(
            jnp.asarray(_pad(hparams.seed, count), jnp.int32),
            jnp.asarray(_pad(hparams.learning_rate, count), jnp.float32),
            jnp.asarray(_pad(hparams.l2, count), jnp.float32),
            jnp.asarray(_pad(clip, count), jnp.float32),
            jnp.asarray(_pad(decay, count), jnp.float32),
            jnp.asarray(_pad(dropout, count), jnp.float32),
        )

    @property
    def loop(self) -> dict | None:
        """The form the trials' steps run in (LoopChoice.to_json()); None before the first run.
        One batch's program: a batch of another trial count measures its own."""
        choice = self._multi_step.choice
        return choice.to_json() if choice else None

    def evaluate(self, states, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Loss and accuracy of every trial (padding included) on (x, y)."""
        return self._evaluate(states, x, y)

    def _lanes(self, hparams: TrialHparams, stored: list, width: int) -> TrainState:
        """The states of one program of `width` lanes: `stored` states (host copies, one per
        trial) stacked, or fresh ones of `hparams` when `stored` is empty; padded with copies
        of the last trial."""
        if not stored:
            padded = _select_hparams(hparams, _pad(range(len(hparams)), width))
            return self.init(padded)
        count = padded_count(width, self.mesh.size)
        lanes = _pad(_pad(stored, width), count)
        # jnp, not np: a model's RNG state holds typed PRNG keys, which numpy cannot stack.
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *lanes)
        return jax.device_put(stacked, NamedSharding(self.mesh, PartitionSpec(TRIAL_AXIS)))

    def run_halving(
        self,
        hparams: TrialHparams,
        dataset: data.Dataset,
        rungs: Sequence[int],
        width: int,
        *,
        keep: Callable[[list[float], list[float]], list[int]],
        on_batch: Callable[[int, list[int], TrialsResult], bool],
        on_rung: Callable[[int, list[int], list[int]], None],
        progress: Callable[[int], None] = lambda steps: None,
        lane_runner: Callable[[int], "TrialRunner"] | None = None,
        on_states: Callable[[int, list[int], TrainState, TrialsResult], None] | None = None,
        goal: Callable[[int, float], bool] | None = None,
    ) -> float:
        """Train the trials of `hparams` (one per slot of a group) to each rung in turn, in
        programs of `width` lanes, the ones `keep(val losses, val accuracies at the rung)`
        names going on from their own states. After each program, `on_batch(rung, slots,
        result)` gets its trials' numbers (result: every step of each trial so far; True stops
        everything); after each rung but the last, `on_rung(rung, kept, cut)`. Returns the
        seconds spent.

        `lane_runner(i)`: the runner that trains trial i (default: this one); the trials of one
        runner (a group of the search space) fill programs of their own, in trial order.
        `on_states(rung, slots, states, result)` gets each program's states before `on_batch`
        (to keep a trial as trained: `trained_trial`).

        `goal(step, val_accuracy)`: whether a trial there meets the goal. With it, a program's
        trials are evaluated on val between rungs too, every `goal_check_calls` host calls: at
        the first such evaluation where one meets it, the program ends there (on_states and
        on_batch get it, `result.steps` the step) and so does the halving, whatever on_batch
        returns.

        After a rung, the trials kept train on best first (by their val loss there): the one
        likeliest to meet a goal ends first. A trial's step t trains on the batch of step t
        whatever its lane and rung, so the trials that reach the last rung end with the
        numbers of an unpruned run."""
        t_start = now()
        runner_of = lane_runner or (lambda i: self)
        lanes_of = program_lanes(width, jax.default_backend())
        x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
        alive, stored = list(range(len(hparams))), {}
        chunks = {i: [] for i in range(len(hparams))}  # slot -> its chunks' per-step metrics
        previous = 0

        def ended(rung_index, batch, window, states, val_loss, val_accuracy):
            """A program's trials summarized where it ended, passed on: (result, stop?)."""
            result = summarize_trials(
                stack_metrics([chunks[slot] for slot in batch]),
                window,
                val_loss[: len(batch)],
                val_accuracy[: len(batch)],
                now() - t_start,
            )
            if on_states is not None:
                on_states(rung_index, batch, states, result)
            return result, on_batch(rung_index, batch, result)

        for rung_index, rung in enumerate(rungs):
            last = rung_index == len(rungs) - 1
            val, score = {}, {}
            for runner, batch in _programs(alive, width, runner_of):
                config = runner.config
                states = runner._lanes(
                    _select_hparams(hparams, batch),
                    [stored.pop(slot) for slot in batch] if previous else [],
                    lanes_of(batch),
                )
                window = max(1, min(config.log_every, rung // 4))
                step, calls, check_every = previous, 0, goal_check_calls(len(dataset.x_val), config)
                for k in schedule_chunks(previous, rung, config.steps_per_call, ()):
                    indices = data.batch_indices(
                        len(dataset.x_train), config.batch_size, config.seed, step, k
                    )
                    states, metrics = runner._multi_step(
                        states, x_train, y_train, jnp.asarray(indices)
                    )
                    chunk = {name: np.asarray(v) for name, v in jax.device_get(metrics).items()}
                    for lane, slot in enumerate(batch):
                        chunks[slot].append({name: v[:, lane] for name, v in chunk.items()})
                    step += k
                    progress(k * len(batch))
                    calls += 1
                    if goal is not None and step < rung and calls % check_every == 0:
                        evaluated = runner._evaluate(states, dataset.x_val, dataset.y_val)
                        if any(goal(step, float(a)) for a in evaluated[1][: len(batch)]):
                            ended(rung_index, batch, window, states, *evaluated)
                            return now() - t_start
                val_loss, val_accuracy = runner._evaluate(states, dataset.x_val, dataset.y_val)
                if not last:
                    host = jax.device_get(states)
                    for lane, slot in enumerate(batch):
                        stored[slot] = jax.tree.map(lambda leaf, i=lane: leaf[i], host)
                result, stop = ended(rung_index, batch, window, states, val_loss, val_accuracy)
                val.update({slot: float(result.val_loss[i]) for i, slot in enumerate(batch)})
                score.update({slot: float(result.val_accuracy[i]) for i, slot in enumerate(batch)})
                if stop:
                    return now() - t_start
            if last:
                break
            kept = [alive[i] for i in keep([val[s] for s in alive], [score[s] for s in alive])]
            cut = [slot for slot in alive if slot not in kept]
            on_rung(rung_index, kept, cut)
            for slot in cut:
                stored.pop(slot, None)
                chunks.pop(slot)
            alive, previous = sorted(kept, key=lambda slot: (val[slot], slot)), rung
        return now() - t_start

    def run(
        self,
        hparams: TrialHparams,
        dataset: data.Dataset,
        num_steps: int,
        *,
        progress: Callable[[int], None] = lambda steps: None,
        initial_states: TrainState | None = None,
        val_every: int = 0,
    ) -> tuple[TrainState, TrialsResult]:
        """Train every trial `num_steps` steps from its initialization (or from
        `initial_states`, `init(hparams)` changed by the caller); evaluate each on val (also
        every `val_every` steps, 0: at the end only: the result's val curve)."""
        t_start = now()
        num_trials, config = len(hparams), self.config
        states = self.init(hparams) if initial_states is None else initial_states
        x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
        window = max(1, min(config.log_every, num_steps // 4))
        chunks, step, val_curve = [], 0, []
        # Chunks need not end on log windows (the curve is cut from the per-step losses):
        # at most two chunk lengths, so at most two compiles per trial length (three with
        # `val_every`, whose points they end on).
        every = (val_every,) if val_every > 0 else ()
        for k in schedule_chunks(0, num_steps, config.steps_per_call, every):
            indices = data.batch_indices(
                len(dataset.x_train), config.batch_size, config.seed, step, k
            )
            states, metrics = self._multi_step(states, x_train, y_train, jnp.asarray(indices))
            chunks.append({name: np.asarray(v) for name, v in jax.device_get(metrics).items()})
            step += k
            progress(k)
            if val_every > 0 and (step % val_every == 0 or step == num_steps):
                val_curve.append((step, self._evaluate(states, dataset.x_val, dataset.y_val)))
        if val_curve and val_curve[-1][0] == num_steps:
            val_loss, val_accuracy = val_curve[-1][1]
        else:
            val_loss, val_accuracy = self._evaluate(states, dataset.x_val, dataset.y_val)
        per_step = {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}
        result = summarize_trials(
            {name: values[:, :num_trials].T for name, values in per_step.items()},
            window,
            val_loss[:num_trials],
            val_accuracy[:num_trials],
            now() - t_start,
        )
        if val_curve:
            result.val_curve_steps = np.asarray([s for s, _ in val_curve])
            result.val_loss_curve = np.stack([v[0][:num_trials] for _, v in val_curve], axis=1)
        return states, result


# Between rungs, trials are checked against a goal as often as that costs at most this fraction
# of their training: a forward pass over an example costs about a third of a training step's.
GOAL_CHECK_OVERHEAD = 0.1


def goal_check_calls(num_val: int, config: ml_collections.ConfigDict) -> int:
    """Every how many host calls the trials are evaluated on the `num_val` val examples for a
    goal between rungs: every call unless that costs more than GOAL_CHECK_OVERHEAD of the
    training (a val set large beside a call's `steps_per_call * batch_size` examples)."""
    trained = 3 * config.steps_per_call * config.batch_size
    return max(1, math.ceil(num_val / (trained * GOAL_CHECK_OVERHEAD)))


def program_lanes(width: int, backend: str) -> Callable[[Sequence[int]], int]:
    """The lanes of a halving program of trials `batch`: as many as its trials on the CPU,
    where every lane costs its compute (a narrower program is one more compile); the search's
    `width` on an accelerator, whose lanes are free and where one compiled shape then serves
    every rung and round (a compile there costs more than the padding lanes)."""
    if backend == "cpu":
        return len
    return lambda batch: width


def _programs(
    alive: Sequence[int], width: int, runner_of: Callable[[int], "TrialRunner"]
) -> list[tuple["TrialRunner", list[int]]]:
    """The programs that train the trials `alive`: each runner's trials (in order, runners in
    the order of their first trial) in consecutive programs of up to `width` lanes."""
    by_runner: dict[int, tuple[TrialRunner, list[int]]] = {}
    for index in alive:
        runner = runner_of(index)
        by_runner.setdefault(id(runner), (runner, []))[1].append(index)
    return [
        (runner, indices[first : first + width])
        for runner, indices in by_runner.values()
        for first in range(0, len(indices), width)
    ]


def _select_hparams(hparams: TrialHparams, indices: Sequence[int]) -> TrialHparams:
    """The hyperparameters of the entries `indices` of `hparams`, in that order."""
    clip, decay, dropout = hparams.clip_norm, hparams.weight_decay, hparams.dropout_rate
    return TrialHparams(
        learning_rate=[hparams.learning_rate[i] for i in indices],
        l2=[hparams.l2[i] for i in indices],
        seed=[hparams.seed[i] for i in indices],
        clip_norm=None if clip is None else [clip[i] for i in indices],
        weight_decay=None if decay is None else [decay[i] for i in indices],
        dropout_rate=None if dropout is None else [dropout[i] for i in indices],
    )


def stack_metrics(chunks_per_trial: Sequence[Sequence[dict]]) -> dict[str, np.ndarray]:
    """name -> (trials, steps) from each trial's chunks of per-step metrics (name -> (k,))."""
    names = chunks_per_trial[0][0]
    return {
        name: np.stack([np.concatenate([c[name] for c in chunks]) for chunks in chunks_per_trial])
        for name in names
    }


def summarize_trials(
    step_metrics: dict[str, np.ndarray],
    window: int,
    val_loss: np.ndarray,
    val_accuracy: np.ndarray,
    seconds: float,
) -> TrialsResult:
    """Per-trial curves and verdicts from every step's training metrics (name -> (trials,
    steps)), the loss among them."""
    step_losses = step_metrics["loss"]
    num_trials, num_steps = step_losses.shape
    finite = np.isfinite(step_losses)
    diverged_at = np.where(finite.all(1), -1, np.argmin(finite, axis=1) + 1)
    num_windows = num_steps // window
    curve = step_losses[:, : num_windows * window].reshape(num_trials, num_windows, window)
    curve = curve.mean(-1)
    bad = (diverged_at >= 0) | ~np.isfinite(val_loss)
    return TrialsResult(
        initial_loss=curve[:, 0],
        final_loss=curve[:, -1],
        train_loss_curve=curve,
        curve_steps=np.arange(1, num_windows + 1) * window,
        val_loss=np.where(bad, np.inf, val_loss),
        val_accuracy=np.where(bad, 0.0, val_accuracy),
        diverged_at=diverged_at,
        steps=num_steps,
        seconds=seconds,
        step_metrics=step_metrics,
    )


def trial_state(states: TrainState, index: int) -> TrainState:
    """One trial's state out of the stacked states (for a checkpoint or a closer look)."""
    return jax.tree.map(lambda leaf: leaf[index], states)


@dataclasses.dataclass(frozen=True)
class TrainedTrial:
    """One trial as its program trained it, to record as a training run without training it
    again (experiment.record_trial): its final state on the host, every step's training
    metrics (name -> (steps,)), its val numbers at earlier rungs (metrics.jsonl
    records) and the wall seconds of its program (shared with the other lanes)."""

    state: TrainState
    step_metrics: dict[str, np.ndarray]
    seconds: float
    val_records: tuple[dict, ...] = ()

    @property
    def num_steps(self) -> int:
        """The steps it trained."""
        return len(self.step_metrics["loss"])


def trained_trial(
    states: TrainState, result: TrialsResult, lane: int, val_records: Sequence = ()
) -> TrainedTrial:
    """The trial at `lane` of a program's final `states` and `result`, copied to the host."""
    return TrainedTrial(
        state=jax.device_get(trial_state(states, lane)),
        step_metrics={name: np.asarray(v[lane]) for name, v in result.step_metrics.items()},
        seconds=float(result.seconds),
        val_records=tuple(val_records),
    )
