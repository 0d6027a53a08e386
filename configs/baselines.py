"""Published baselines to reproduce on an accelerator: `get_config(name)` for one of BASELINES.

Each needs its TFDS data prepared offline (`tfds build <name> --file_format=array_record` on a
connected machine, then --config.dataset.data_dir=DIR); without it the stage exits 2 saying where
it looked. tests/test_baselines.py runs each one end to end on `tfds.testing.mock_data`.

Times on one H100 are estimates, not timed reproductions (the data cannot be downloaded here).
At large batches our trainer runs LeNet at ~1.4-1.7M examples/s, ResNet-20 at ~102,000 float32 /
184,000 bfloat16 (batch 2048) and a 128-unit LSTM on length-40 sequences at ~950,000
(benchmarks/gpu_suite.py), but these recipes' batches of 128 are bound by kernel launches and
sequential steps, not arithmetic. So each estimate below is num_steps divided by the training
steps/s of that very config (its model, batch, optimizer, schedule and augmentation) measured on
one H100 80GB (jax 0.11.2, 2026-11-26) on random inputs of the dataset's shape, 500 steps per
call. Loading, compiling and evaluation come on top: every record is read one at a time
through `tfds.data_source` (tens of seconds for 50-70k examples), compiling takes 1-16 s.

mnist_lenet
    python -m workflow.start_simple --config=configs/baselines.py:mnist_lenet \\
        --workdir=runs/mnist_lenet
    Target: >= 99% test accuracy; LeCun et al. (1998) report 0.95% test error (99.05%) for
    LeNet-5 without distortions.
    Recipe: our LeNet (conv 5x5 6 → pool → conv 5x5 16 → pool → 120 → 84 → 10, ReLU and max
    pooling where the paper had sigmoids and subsampling), inputs normalized per channel with
    train statistics, Adam 1e-3 with a cosine decay to 0, batch 128, 4,500 steps (~10.7 epochs
    of the 54,000 examples left after carving 6,000 for val).
    Expected: ~99.0-99.2% test accuracy; ~1 s of training steps (4,740 steps/s measured, i.e.
    607k examples/s), so reading the 70k records and evaluating dominate the run.

fashion_mnist_lenet
    python -m workflow.start_simple --config=configs/baselines.py:fashion_mnist_lenet \\
        --workdir=runs/fashion_mnist_lenet
    Target: >= 90% test accuracy (configs/tfds_image.py's goal); Xiao et al. (2017) report
    89.7% for the best of their scikit-learn benchmarks (an RBF SVC).
    Recipe: mnist_lenet's, unchanged.
    Expected: ~90-91% test accuracy (LeNet-5-sized CNNs land there without augmentation);
    time as mnist_lenet.

cifar10_resnet20
    python -m workflow.start_simple --config=configs/baselines.py:cifar10_resnet20 \\
        --workdir=runs/cifar10_resnet20
    Target: 91.25% test accuracy: 8.75% test error for ResNet-20 in He et al. (2016), Table 6.
    Recipe (the paper's section 4.2): ResNet-20 (option-A shortcuts, BatchNorm; 0.27M
    parameters), SGD with momentum 0.9, learning rate 0.1 divided by 10 at 32k and 48k steps,
    64k steps at batch 128, weight decay 1e-4 (config.l2 = 5e-5, see below), 4-pixel padding
    with a random 32x32 crop and a horizontal flip, inputs normalized per channel. The paper
    trains on all 50k images (its 45k/5k split only chose the schedule); here 1,000 are held
    out for val (val_fraction 0.02), so 49,000 train.
    Expected: ~91% test accuracy (the paper's single runs; reimplementations land 91-92%);
    ~2.6 minutes of training steps (406 steps/s measured float32, 52k examples/s: half the
    batch-2048 throughput, which would take 80 s), ~2.0 minutes with --config.dtype=bfloat16
    (529 steps/s), plus 32 evaluations.

imdb_lstm
    python -m workflow.start_simple --config=configs/baselines.py:imdb_lstm \\
        --workdir=runs/imdb_lstm
    Target: 86.5% test accuracy: 13.50% test error for an LSTM trained from random
    initialization ("LSTM with tuning and dropout") in Dai & Le (2015), Table 1. IMDB rather
    than SST-2: GLUE's SST-2 test labels are hidden and this TFDS install has no `glue` builder,
    while imdb_reviews has a labelled 25k test split.
    Recipe: the text path of workflow/data/text.py: lower-case word tokens, a 20,000-id vocabulary
    (0 padding, 1 unknown) from the training examples, the first 256 tokens of each review
    (padded at the end); the LSTM embeds ids to 128 features, runs 128 units over the sequence
    with padding masked, reads out the mean hidden state over real tokens, dropout 0.5, Dense.
    Adam 1e-3, batch 128, 2,000 steps (~11 epochs of the 22,500 examples left after carving
    2,500 for val) with early stopping on val accuracy (patience 4 evaluations, one per ~1.1
    epochs): the 2.6M-parameter embedding overfits within a few epochs, and the reported model
    is the best evaluated one.
    Expected: ~86-88% test accuracy; ~17 s of training steps at most (119 steps/s measured,
    the same in bfloat16: each step runs 256 recurrent steps in sequence, forward and back),
    less when early stopping ends it; tokenizing the 50k reviews adds ~10-20 s on the host.

Weight decay: the paper's SGD adds 1e-4 * w to each gradient (Caffe/Torch weight decay, i.e. a
(1e-4 / 2) * ||w||^2 term in the loss). Our config.l2 adds l2 * sum(w^2) to the loss, whose
gradient 2 * l2 * w engine.build_optimizer adds with optax.add_decayed_weights(2 * l2) before
momentum, so l2 = 5e-5 reproduces 1e-4 exactly, on every parameter (BatchNorm scales and offsets
included, as Torch's SGD did). optimizer.weight_decay is AdamW's decoupled decay, not this.
"""

import ml_collections

from workflow import config_lib
from workflow.errors import UsageError

BASELINES = ("mnist_lenet", "fashion_mnist_lenet", "cifar10_resnet20", "imdb_lstm")

# The paper's weight decay coefficient and our L2 weight that yields it (see the docstring).
HE_WEIGHT_DECAY = 1e-4
HE_L2 = HE_WEIGHT_DECAY / 2


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of baseline `arg`, one of BASELINES."""
    if arg not in BASELINES:
        given = f"unknown baseline {arg!r}" if arg else "configs/baselines.py needs a baseline"
        raise UsageError(
            f"{given}; valid: {', '.join(BASELINES)} (--config=configs/baselines.py:<name>)"
        )
    return {
        "mnist_lenet": lambda: _lenet("mnist", 0.01, "LeNet-5 in LeCun et al. (1998): 99.05%"),
        "fashion_mnist_lenet": lambda: _lenet(
            "fashion_mnist",
            0.10,
            "configs/tfds_image.py's goal; Xiao et al. (2017): 89.7% for an RBF SVC",
        ),
        "cifar10_resnet20": _cifar10_resnet20,
        "imdb_lstm": _imdb_lstm,
    }[arg]()


def _accelerator_defaults(config: ml_collections.ConfigDict) -> None:
    """Settings of every baseline: fewer, longer host calls; no per-step progress bar."""
    config.steps_per_call = 500
    config.log_every = 100
    config.eval_batch_size = 1000
    config.progress = False


def _set_schedule(config: ml_collections.ConfigDict, **values) -> None:
    """Set keys of config.optimizer.schedule (engine.lr_multiplier), keeping the base
    config's other keys so every schedule's options stay overridable from the command line."""
    if config.optimizer.get("schedule") is None:
        config.optimizer.schedule = ml_collections.ConfigDict()
    for key, value in values.items():
        config.optimizer.schedule[key] = value


def _lenet(name: str, goal: float, source: str) -> ml_collections.ConfigDict:
    config = config_lib.base_config(f"tfds:{name}", config_lib.model_config("lenet"))
    _accelerator_defaults(config)
    config.optimizer.learning_rate = 1e-3
    _set_schedule(config, name="cosine", warmup_steps=0)
    config.batch_size = 128
    config.num_steps = 4500
    config.eval_every = 500
    config.checkpoint_every = 4500
    config.goal.test_error = goal
    config.goal.source = source
    return config


def _cifar10_resnet20() -> ml_collections.ConfigDict:
    config = config_lib.base_config("tfds:cifar10", config_lib.model_config("resnet20"))
    _accelerator_defaults(config)
    # The paper trains on all 50k; keep a small val split to watch the run, not to select it.
    config.dataset.val_fraction = 0.02
    config.optimizer.name = "momentum"
    config.optimizer.learning_rate = 0.1
    config.optimizer.momentum = 0.9
    _set_schedule(config, name="piecewise", boundaries=(32000, 48000), scale=0.1)
    config.l2 = HE_L2  # gradient 2 * l2 * w = 1e-4 * w: the paper's weight decay
    config.batch_size = 128
    config.num_steps = 64000
    config.eval_every = 2000
    config.checkpoint_every = 8000
    config.augment.enabled = True
    config.augment.image.max_shift = 4
    config.augment.image.flip = True
    # Zero padding of normalized images pads with the mean colour, as the paper's zero padding
    # of mean-subtracted images did.
    config.augment.image.pad_mode = "constant"
    config.goal.test_error = 0.0875
    config.goal.source = "ResNet-20 in He et al. (2016), Table 6: 8.75% test error"
    return config


def _imdb_lstm() -> ml_collections.ConfigDict:
    vocab_size = 20000  # one number for the data's ids and the model's embedding table
    model = config_lib.model_config(
        "lstm",
        hidden_size=128,
        vocab_size=vocab_size,
        embed_size=128,
        readout="mean",
        dropout_rate=0.5,
    )
    config = config_lib.base_config("tfds:imdb_reviews", model)
    _accelerator_defaults(config)
    config.dataset.kwargs = ml_collections.ConfigDict(
        {"text_key": "text", "vocab_size": vocab_size, "max_length": 256}
    )
    config.optimizer.learning_rate = 1e-3
    config.batch_size = 128
    config.num_steps = 2000
    config.eval_every = 200
    config.checkpoint_every = 1000
    config.early_stopping.enabled = True
    config.early_stopping.patience = 4
    config.goal.test_error = 0.135
    config.goal.source = "LSTM from random initialization in Dai & Le (2015), Table 1: 13.50%"
    return config
