"""Training throughput of our trainer against plain JAX, an nnx.jit loop and PyTorch eager.

Models: the MNIST-1D paper's MLP (40-100-100-10), CNN (tcn defaults) and LSTM from our zoo, and
models as a user writes them from `flax.nnx` layers alone (benchmarks/user_models.py, plugged
in unchanged as the workflow builds any model):

  flax_cnn   the Flax MNIST example's CNN (nnx.Conv 32/64 channels) on 28x28x1 synthetic images
  flax_mlp   the Flax NNX basics' MLP (Linear, BatchNorm, Dropout) on MNIST-1D
  flax_lstm  nnx.RNN over nnx.LSTMCell on MNIST-1D

At batch 100, with Adam, it times in one process:

  ours            workflow.engine.make_train_loop, the loop `fit` runs: `steps_per_call` steps
                  per call, under lax.scan or one compiled step per call as it measures faster
                  for the model (workflow/engine/loop_form.py; the choice is in `ours_loop`),
                  with fit's per-call host work (batch indices, fetching the step metrics, the
                  finiteness checks).
  nnx.jit loop    an `nnx.jit` train step (nnx.Optimizer, nnx.value_and_grad) called once per
                  step from Python, as the Flax MNIST example does; batches sliced on the host.
  scan reference  a minimal jax.jit + lax.scan loop over the split parameters (the rest of the
                  model's state carried along) with optax.adam, batches gathered on device by
                  the same index arrays.
  torch eager     the paper models in PyTorch, one eager step per batch; only when `import
                  torch` works.

Requirement, for every model: ours >= 0.9 x the faster of the nnx.jit loop and the scan
reference (`ours_over_best`: the median over rounds of ours' rate over the better of the two in
that round). Aim for the paper's CNN and LSTM: ours >= 1.5 x PyTorch eager.

Every method trains on the same batch order (workflow.data.batch_indices). Compilation and a
warm-up call are excluded. The methods are timed in rounds: each round runs one block of
`--steps` steps of every method (default 100, 4 for flax_cnn, whose scan reference takes
seconds per step on the CPU), in an order shuffled from round to round. Other processes and
the CPU's clock change the speed of the machine from second to second, and between runs of
this script by 10-20%; blocks of one round see nearly the same machine, so each ratio is the
median over rounds of the per-round ratio, printed with its quartiles. A second, separately
compiled copy of the scan reference (`--control`) shows how far two identical programs differ
in the same run: read ratios within that spread as equal. PyTorch runs on its default thread
count unless --torch_threads is given; its two OpenMP threads slow down many-fold while
another process busies one of two cores, so compare with --torch_threads=1 on a shared machine.

Command:
    python -m benchmarks.train_throughput --out=/tmp/throughput.json
    python -m benchmarks.train_throughput --models=flax_cnn,flax_mlp,flax_lstm
"""

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from benchmarks import common
from workflow import config_lib, data, engine, experiment
from workflow.data import synthetic

if TYPE_CHECKING:
    import torch

# Runs `num_steps` training steps starting at step `first` and returns once they are done.
Runner = Callable[[int, int], None]

METHODS = ("ours", "nnx_jit_loop", "scan_reference", "torch_eager")
LABELS = {
    "ours": "ours",
    "nnx_jit_loop": "nnx.jit loop",
    "scan_reference": "scan ref",
    "torch_eager": "torch eager",
}
MIN_RATIO_TO_BEST = 0.9  # required: ours >= 0.9 x the faster of the nnx.jit loop and the scan
MIN_RATIO_TO_TORCH = 1.5  # aim for the CNN and the LSTM: ours >= 1.5 x PyTorch eager
# User-style models (benchmarks/user_models.py): name -> (class path, the paper model whose data
# and setting it takes, or None for 28x28x1 synthetic images).
USER_MODELS = {
    "flax_cnn": ("benchmarks.user_models:FlaxCNN", None),
    "flax_mlp": ("benchmarks.user_models:FlaxMLP", "mlp"),
    "flax_lstm": ("benchmarks.user_models:FlaxLSTM", "lstm"),
}
ALL_MODELS = (*common.MODELS, *USER_MODELS)
# One call of ours (100 steps) per timed block, in many rounds: on this machine the speed of
# identical programs swings by 20-40% from one second to the next (VM neighbours), and only blocks
# a few milliseconds apart see the same machine. Measured with the control: blocks of 1,000 MLP
# steps in 15 rounds put two identical programs 0.91-1.04 apart, 100-step blocks in 150 rounds
# 1.00 both times.
DEFAULT_STEPS = 100
# ...but 4 for the Flax CNN: its scan reference runs seconds per step on the CPU.
MODEL_STEPS = {"flax_cnn": 4}
# Pause after a block of these methods before timing the next one (see measure).
SETTLE_SECONDS = {"torch_eager": 0.05}
# Rounds per model: about 1-2 minutes each (flax_cnn: 5), most of it in the slowest method.
DEFAULT_REPEATS = {
    "mlp": 150,
    "cnn": 60,
    "lstm": 15,
    "flax_cnn": 8,
    "flax_mlp": 100,
    "flax_lstm": 15,
}


def benchmark_config(name: str, steps: int) -> ml_collections.ConfigDict:
    """The config of benchmark model `name`: a paper model in the paper's setting, or a
    user-style model in its paper model's setting (the CNN on 28x28x1 synthetic images)."""
    if name in common.MODELS:
        return common.paper_config(name, steps=steps)
    path, paper_model = USER_MODELS[name]
    if paper_model is not None:
        config = common.paper_config(paper_model, steps=steps)
    else:
        config = common.paper_config("mlp", steps=steps)
        config.dataset = config_lib.base_config("synthetic", config.model).dataset
        options = synthetic.synthetic_options("image")
        options.update(image_size=28, channels=1, num_train=2000)
        config.dataset.kwargs = ml_collections.ConfigDict(options)
        config.optimizer.learning_rate = 1e-3
    config.model = config_lib.model_config(path)
    return config


def ours_runner(setup: experiment.Setup, chunk: int) -> tuple[Runner, engine.StepLoop]:
    """Our trainer's loop with the host work `engine.fit` does per call, and the loop (whose
    `choice` says which form it runs in, after the first call)."""
    config, dataset = setup.config, setup.dataset
    multi_step = engine.make_train_loop(setup.task, form=config.loop)
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    state = setup.state

    def run(first: int, num_steps: int) -> None:
        nonlocal state
        for step in range(first, first + num_steps, chunk):
            indices = data.batch_indices(len(x), config.batch_size, config.seed, step, chunk)
            state, metrics = multi_step(state, x, y, jnp.asarray(indices))
            metrics = jax.device_get(metrics)
            bad = engine.first_nonfinite(np.asarray(metrics["loss"]))
            bad_grad = engine.first_nonfinite(np.asarray(metrics["grad_norm"]))
            if bad is not None or bad_grad is not None or not engine.params_finite(state):
                raise FloatingPointError(f"ours diverged near step {step}")

    return run, multi_step


def nnx_jit_loop_runner(setup: experiment.Setup) -> Runner:
    """One `nnx.jit` step per batch from a Python loop, as in the Flax MNIST example."""
    config, dataset = setup.config, setup.dataset
    model = engine.build_model(config, dataset.input_shape, dataset.num_classes)
    optimizer = nnx.Optimizer(model, optax.adam(config.optimizer.learning_rate), wrt=nnx.Param)

    @nnx.jit
    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x, y) -> jax.Array:
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    x, y = dataset.x_train, dataset.y_train

    def run(first: int, num_steps: int) -> None:
        loss = None
        for idx in data.batch_indices(len(x), config.batch_size, config.seed, first, num_steps):
            loss = train_step(model, optimizer, x[idx], y[idx])
        jax.block_until_ready(loss)

    return run


def scan_reference_runner(setup: experiment.Setup, chunk: int) -> Runner:
    """A minimal jax.jit + lax.scan training loop over split NNX parameters with optax.adam; the
    rest of the model's state (Dropout's RNG, BatchNorm's statistics) carried from step to step."""
    config, dataset = setup.config, setup.dataset
    model = engine.build_model(config, dataset.input_shape, dataset.num_classes)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(config.optimizer.learning_rate)
    opt_state = tx.init(params)

    def loss_fn(params, rest, x, y):
        # New Variables at this trace level: BatchNorm may update its statistics here.
        model = nnx.merge(graphdef, params, jax.tree.map(lambda leaf: leaf, rest))
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, nnx.split(model, nnx.Param, ...)[2]

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def train_chunk(params, opt_state, rest, x, y, indices):
        def step(carry, idx):
            params, opt_state, rest = carry
            (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, rest, x[idx], y[idx]
            )
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, rest), loss

        (params, opt_state, rest), losses = jax.lax.scan(step, (params, opt_state, rest), indices)
        return params, opt_state, rest, losses

    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)

    def run(first: int, num_steps: int) -> None:
        nonlocal params, opt_state, rest
        for step in range(first, first + num_steps, chunk):
            indices = data.batch_indices(len(x), config.batch_size, config.seed, step, chunk)
            params, opt_state, rest, losses = train_chunk(
                params, opt_state, rest, x, y, jnp.asarray(indices)
            )
            jax.device_get(losses)

    return run


def torch_available() -> bool:
    """Whether PyTorch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def torch_model(setup: experiment.Setup) -> "tuple[torch.nn.Module, torch.Tensor]":
    """The benchmark model rebuilt in PyTorch, with its input layout: (model, x_train)."""
    import torch
    from torch import nn

    model, x = setup.model, setup.dataset.x_train  # x is (N, T, 1)
    num_classes = setup.dataset.num_classes
    name = setup.config.model.name
    if name == "mlp":
        sizes = (x.shape[1] * x.shape[2], *model.hidden_sizes)
        layers = [nn.Flatten()]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes)), torch.tensor(x)
    if name == "tcn":
        layers, cin = [], x.shape[2]
        for cout, k, s in zip(model.channels, model.kernel_sizes, model.strides, strict=True):
            layers += [nn.Conv1d(cin, cout, k, stride=s, padding=model.padding), nn.ReLU()]
            cin = cout
        head = nn.Linear(model.lengths[-1] * cin, num_classes)
        x_ncw = torch.tensor(x.transpose(0, 2, 1).copy())  # Conv1d takes (N, C, T)
        return nn.Sequential(*layers, nn.Flatten(), head), x_ncw
    if name == "lstm":

        class TorchLSTM(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(x.shape[2], model.hidden_size, batch_first=True)
                self.out = nn.Linear(model.hidden_size, num_classes)

            def forward(self, inputs):
                hidden, _ = self.lstm(inputs)
                last = hidden[:, -1] if model.readout == "last" else hidden.mean(1)
                return self.out(last)

        return TorchLSTM(), torch.tensor(x)
    raise ValueError(f"no PyTorch version of model {name!r}")


def torch_eager_runner(setup: experiment.Setup) -> Runner:
    """A plain PyTorch eager training loop over the same batches."""
    import torch

    config = setup.config
    torch.manual_seed(config.seed)
    model, x = torch_model(setup)
    y = torch.tensor(setup.dataset.y_train, dtype=torch.long)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optimizer.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run(first: int, num_steps: int) -> None:
        indices = data.batch_indices(len(x), config.batch_size, config.seed, first, num_steps)
        for idx in torch.from_numpy(indices):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()

    return run


def measure(
    runners: dict[str, Runner], steps: int, repeats: int, chunk: int
) -> dict[str, list[float]]:
    """Steps/s of each runner in each of `repeats` rounds of alternating blocks of `steps` steps.

    Every round times each runner once, in an order shuffled from round to round (a fixed
    cyclic order would always time the same method right after the same other one), so the
    blocks of one round saw nearly the same machine: their ratio cancels the drifts of the
    CPU's speed (other processes, frequency) that separate runs of the script do not.
    """
    names = list(runners)
    next_step = dict.fromkeys(names, 0)
    for name in names:  # compile, then one more call so caches and allocators are warm
        for _ in range(2):
            runners[name](next_step[name], chunk)
            next_step[name] += chunk
    rates = {name: [] for name in names}
    order = np.random.default_rng(0)
    for _ in range(repeats):
        for name in order.permutation(names):
            t0 = time.perf_counter()
            runners[name](next_step[name], steps)
            seconds = time.perf_counter() - t0
            next_step[name] += steps
            rates[name].append(steps / seconds)
            # PyTorch's OpenMP threads spin for a while after their last parallel region,
            # holding a core that the next block timed would otherwise have.
            time.sleep(SETTLE_SECONDS.get(name, 0.0))
    return rates


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """Median and quartiles of the per-round ratios of two methods' rates."""
    ratios = np.asarray(numerator) / np.asarray(denominator)
    low, median, high = np.percentile(ratios, [25, 50, 75])
    return {"median": float(median), "q25": float(low), "q75": float(high)}


def benchmark_model(
    name: str, steps: int, repeats: int, use_torch: bool, control: bool = True
) -> dict[str, Any]:
    """Steps/s of every method for benchmark model `name`, and ours' ratios to the others.

    Rates are medians over the rounds; each ratio is the median of the per-round ratios, with
    its quartiles (`ours_over_best`: over the faster of the nnx.jit loop and the scan reference
    in each round). With `control`, a second, separately compiled scan reference is timed as
    well: its ratio to the first is how far two identical programs differ on this machine.
    """
    config = benchmark_config(name, steps)
    setup = experiment.prepare(config)
    chunk = min(config.steps_per_call, steps)
    ours, loop = ours_runner(setup, chunk)
    runners = {
        "ours": ours,
        "nnx_jit_loop": nnx_jit_loop_runner(setup),
        "scan_reference": scan_reference_runner(setup, chunk),
    }
    if use_torch and name in common.MODELS:
        runners["torch_eager"] = torch_eager_runner(setup)
    if control:
        runners["scan_control"] = scan_reference_runner(setup, chunk)
    rates = measure(runners, steps, repeats, chunk)
    result: dict[str, Any] = {
        f"{method}_steps_per_s": float(np.median(rates[method])) if method in rates else None
        for method in METHODS
    }
    for method in METHODS[1:]:
        ratio = paired_ratio(rates["ours"], rates[method]) if method in rates else None
        result[f"ours_over_{method}"] = ratio["median"] if ratio else None
        result[f"ours_over_{method}_quartiles"] = [ratio["q25"], ratio["q75"]] if ratio else None
    best = np.maximum(rates["nnx_jit_loop"], rates["scan_reference"])
    ratio = paired_ratio(rates["ours"], list(best))
    result["ours_over_best"] = ratio["median"]
    result["ours_over_best_quartiles"] = [ratio["q25"], ratio["q75"]]
    if control:
        ratio = paired_ratio(rates["scan_control"], rates["scan_reference"])
        result["control_over_scan_reference"] = ratio["median"]
        result["control_over_scan_reference_quartiles"] = [ratio["q25"], ratio["q75"]]
    result["ours_loop"] = loop.choice.to_json()
    result["steps_per_block"] = steps
    result["rounds"] = repeats
    result["steps_per_call"] = chunk
    return result


def check(results: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(failures of the requirement, misses of the CNN/LSTM aim), one line each."""
    failures, misses = [], []
    for name, result in results.items():
        if result["ours_over_best"] < MIN_RATIO_TO_BEST:
            failures.append(
                f"{name}: ours is {result['ours_over_best']:.2f} x the faster of the nnx.jit "
                f"loop and the scan reference (required >= {MIN_RATIO_TO_BEST})"
            )
    for name in ("cnn", "lstm"):
        ratio = results.get(name, {}).get("ours_over_torch_eager")
        if ratio is not None and ratio < MIN_RATIO_TO_TORCH:
            misses.append(
                f"{name}: ours is {ratio:.2f} x torch eager (aim >= {MIN_RATIO_TO_TORCH})"
            )
    return failures, misses


def parse_models(text: str) -> list[str]:
    """Comma-separated benchmark model names, checked against ALL_MODELS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ALL_MODELS]
    if unknown or not names:
        raise ValueError(f"unknown model(s) {unknown or text!r}; valid: {', '.join(ALL_MODELS)}")
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        help="steps per timed block, 1..100 or a multiple of 100 (default: one call of ours, "
        + ", ".join(f"{k} {v}" for k, v in MODEL_STEPS.items())
        + ")",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="rounds of timed blocks (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_REPEATS.items())
        + ")",
    )
    parser.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a second copy of the scan reference: the noise between equal programs",
    )
    parser.add_argument(
        "--models",
        default=",".join(ALL_MODELS),
        help="comma-separated subset of " + ", ".join(ALL_MODELS),
    )
    parser.add_argument(
        "--torch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time PyTorch eager when it is installed",
    )
    parser.add_argument(
        "--torch_threads",
        type=int,
        default=0,
        help="torch.set_num_threads(N) before timing; 0 keeps torch's default",
    )
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="exit 1 when ours is below 0.9 x the faster of the nnx.jit loop and the scan "
        "reference on a model",
    )
    parser.add_argument("--out", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.steps is not None and (args.steps < 1 or args.steps > 100 and args.steps % 100):
        parser.error("--steps must be 1..100 or a multiple of 100 (the trainer's steps_per_call)")
    try:
        args.models = parse_models(args.models)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write --out; 1 when a requirement fails."""
    args = parse_args(argv)
    use_torch = args.torch and torch_available()
    if use_torch and args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    results = {}
    for name in args.models:
        repeats = args.repeats or DEFAULT_REPEATS[name]
        steps = args.steps or MODEL_STEPS.get(name, DEFAULT_STEPS)
        results[name] = benchmark_model(name, steps, repeats, use_torch, args.control)
        print(
            f"{name}: " + ", ".join(f"{k}={v:.4g}" for k, v in results[name].items() if _number(v))
        )

    headers = ["model", "block", "rounds", "ours' loop"]
    headers += [f"{LABELS[m]} steps/s" for m in METHODS]
    headers += ["ours/best", "ours/scan", "ours/nnx.jit", "ours/torch", "scan copy/scan"]
    rows = [
        [name, r["steps_per_block"], r["rounds"], r["ours_loop"]["form"]]
        + [r[f"{m}_steps_per_s"] for m in METHODS]
        + [
            format_ratio(r.get(key), r.get(f"{key}_quartiles"))
            for key in (
                "ours_over_best",
                "ours_over_scan_reference",
                "ours_over_nnx_jit_loop",
                "ours_over_torch_eager",
                "control_over_scan_reference",
            )
        ]
        for name, r in results.items()
    ]
    settings = {
        "batch_size": common.PAPER_BATCH_SIZE,
        "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        # Other processes' load over the last 1, 5 and 15 minutes, as the run ended.
        "load_average": list(os.getloadavg()),
        "torch_threads": None,
    }
    if use_torch:
        import torch

        settings["torch_version"] = torch.__version__
        settings["torch_threads"] = torch.get_num_threads()
        settings["torch_threads_default"] = args.torch_threads == 0
    print()
    print(format_settings(settings))
    print(common.format_table(headers, rows))

    failures, misses = check(results)
    for name, result in results.items():
        verdict = "ok" if result["ours_over_best"] >= MIN_RATIO_TO_BEST else "FAILED"
        print(
            f"requirement {name}: ours / faster of nnx.jit loop and scan reference = "
            f"{result['ours_over_best']:.3g} (>= {MIN_RATIO_TO_BEST}): {verdict}"
        )
    for line in misses:
        print(f"aim missed: {line}")
    for line in failures:
        print(f"FAILED: {line}")
    if args.out:
        mlp = results.get("mlp", {})
        payload = {
            "ours_steps_per_s": mlp.get("ours_steps_per_s"),
            "nnx_jit_loop_steps_per_s": mlp.get("nnx_jit_loop_steps_per_s"),
            "scan_reference_steps_per_s": mlp.get("scan_reference_steps_per_s"),
            "torch_eager_steps_per_s": mlp.get("torch_eager_steps_per_s"),
            "models": results,
            "settings": settings,
        }
        common.write_json(args.out, payload)
        print(f"wrote {args.out}")
    return 1 if failures and args.check else 0


def format_settings(settings: dict) -> str:
    """One line describing how the numbers were measured."""
    threads = settings["torch_threads"]
    if threads:
        how = "torch's default" if settings["torch_threads_default"] else "--torch_threads"
        torch_note = f", torch on {threads} thread{'s' if threads > 1 else ''} ({how})"
    else:
        torch_note = ", torch not timed"
    return (
        f"{settings['jax_backend']} backend, batch {settings['batch_size']}, medians over "
        "`rounds` rounds of alternating blocks of `block` steps (ratios: median of the "
        f"per-round ratios, quartiles in brackets){torch_note}"
    )


def format_ratio(median: float | None, quartiles: list[float] | None) -> str:
    """A ratio with its quartiles, e.g. '0.95 [0.93, 0.97]'; '-' when not measured."""
    if median is None:
        return "-"
    if not quartiles:
        return f"{median:.3g}"
    return f"{median:.3g} [{quartiles[0]:.3g}, {quartiles[1]:.3g}]"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


if __name__ == "__main__":
    sys.exit(main())
