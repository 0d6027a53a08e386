"""The training engine: one pure step over split NNX state, and everything that runs it.

    state        TrainState (what a step changes) and Task (what it reads), built from a config
    optimizer    the optax chain: base rule, L2 as a gradient term, lr schedule
    step         the pure train step, K steps per call (a train loop), the eval pass of one batch
    loop_form    K steps under lax.scan or one compiled step per call: the faster, measured
    loop         `fit`: train to num_steps, logging, evaluating, checkpointing, stopping on NaN
    evaluator    loss and accuracy over a whole split
    early_stopping, checkpoints, sharding, distributed, trials (many runs as one program),
    programs (one-off compiled programs), losses, augment

The names most callers need are re-exported here: `engine.fit`, `engine.TrainState`, ...
"""

from workflow.engine.early_stopping import EarlyStopping, checkpoints_to_keep
from workflow.engine.evaluator import Evaluator, padded_batches
from workflow.engine.loop import (
    FitResult,
    first_nonfinite,
    fit,
    format_rate,
    now,
    params_finite,
    schedule_chunks,
    window_records,
)
from workflow.engine.loop_form import LoopChoice, StepLoop
from workflow.engine.optimizer import build_optimizer, lr_multiplier
from workflow.engine.programs import few_runs_options, initialize, jit_for_few_runs
from workflow.engine.sharding import (
    batch_sharding,
    data_mesh,
    device_blocks,
    index_sharding,
    replicated,
)
from workflow.engine.state import (
    Task,
    TrainState,
    build_model,
    check_output_shape,
    copy_state,
    create_train_state,
    forward,
    init_seed,
    model_kwargs,
)
from workflow.engine.step import (
    block_gather,
    fresh_variables,
    make_eval_batch,
    make_indexed_step,
    make_multi_step,
    make_train_loop,
    make_train_step,
)

__all__ = [
    "EarlyStopping",
    "Evaluator",
    "FitResult",
    "LoopChoice",
    "StepLoop",
    "Task",
    "TrainState",
    "batch_sharding",
    "block_gather",
    "build_model",
    "build_optimizer",
    "check_output_shape",
    "checkpoints_to_keep",
    "copy_state",
    "create_train_state",
    "data_mesh",
    "device_blocks",
    "few_runs_options",
    "first_nonfinite",
    "fit",
    "format_rate",
    "forward",
    "fresh_variables",
    "index_sharding",
    "initialize",
    "jit_for_few_runs",
    "lr_multiplier",
    "make_eval_batch",
    "make_indexed_step",
    "make_multi_step",
    "make_train_loop",
    "make_train_step",
    "init_seed",
    "model_kwargs",
    "now",
    "padded_batches",
    "params_finite",
    "replicated",
    "schedule_chunks",
    "window_records",
]
