"""The zoo's cases: a broken (or clean) setup built only from config overrides and import paths.

Each broken case names the finding id the debug stage must rank first; a clean case names None
and must give no finding of severity warning or error. `build_config` returns the setup with the
stage's default debug budgets; tests shrink them with `with_budget`.

Choices where two ids could fit (what a practitioner needs to do next decides):

* learning rate 10 (Adam): `lr_too_high`. The loss does not climb without bound (Adam's steps
  are bounded by the learning rate), it jumps up and stays far above ln C; the fix is one knob,
  lowering the learning rate, which `lr_too_high` names. `loss_exploding` would send them
  looking for a numerical bug (a log of zero, an exploding init) that is not there.
* learning rate 1e-8: `lr_too_low`. The run never leaves its initial loss (an error-severity
  `loss_plateau`); the learning rate explains the plateau, so the stage promotes `lr_too_low`
  to the plateau's severity and ranks the cause above the symptom.
* exploding initialization (weights x100): `initial_loss_off`. With saturated softmax outputs
  the step-0 gradient stays under the exploding threshold (the logits, not the gradients,
  explode: initial loss ~9e3 against ln C = 2.3), so the out-of-range initial loss is the
  evidence that points at the initialization.
* l2 = 1e3: `loss_plateau`. The penalty dominates the loss, the weights collapse to zero and
  the loss stalls near ln C; the learning rate is fine, so neither lr id would help.
* dropout 0.9: `dropout_too_high`. The initial loss is off too (train mode rescales the tenth
  of the units it keeps by 10), but `initial_loss_off` would send the practitioner to the
  initialization; the rate is what to change, and the finding names it.
* a model two units wide: `model_too_small`. It cannot memorize one batch, but nothing in the
  code is wrong: what the practitioner needs to hear is that the model lacks capacity (an
  underfit) and to make it larger, not to hunt for a bug behind `cannot_overfit_batch`.
* labels past the classes cannot reach a gather: the loader's validation refuses them (exit 2,
  one line), so the gather case is a table the user wrote short (class weights for 9 of 10
  classes), which JAX clamps.
"""

import dataclasses
from collections.abc import Callable

import ml_collections

from tests.conftest import load_config, small_config


@dataclasses.dataclass(frozen=True)
class Case:
    """One setup of the zoo: its name, the expected top finding (None: clean) and its config."""

    name: str
    expected_id: str | None
    build_config: Callable[[], ml_collections.ConfigDict]
    # In the default test run, at small budgets (the default run must stay under a minute).
    fast: bool = True
    known_issue: str | None = None  # a detector bug that ranks another finding first
    # A config change repairs it (a knob, not code): the cases `debug.fix` must repair
    # (benchmarks/bugzoo.py's repair rate).
    config_fixable: bool = False


def with_budget(
    config: ml_collections.ConfigDict, overfit_steps: int, train_steps: int
) -> ml_collections.ConfigDict:
    """The config with the debug stage's budgets replaced."""
    config.debug.overfit_steps = overfit_steps
    config.debug.train_steps = train_steps
    return config


def synthetic(
    kind: str = "tabular",
    model: str = "",
    *,
    model_name: str | None = None,
    loss: str | None = None,
    dataset: str | None = None,
    **overrides,
) -> Callable[[], ml_collections.ConfigDict]:
    """A builder of a small synthetic config with broken pieces plugged in by import path."""

    def build() -> ml_collections.ConfigDict:
        config = small_config(kind, model, **overrides)
        if model_name:
            config.model = ml_collections.ConfigDict({"name": model_name})
        if loss:
            config.loss = loss
        if dataset:
            config.dataset.name = dataset
            config.dataset.kwargs = ml_collections.ConfigDict()
        return config

    return build


def _real(path: str, model: str | None) -> Callable[[], ml_collections.ConfigDict]:
    """A builder of a real config (configs/<path>:<model>) with the progress bar off."""

    def build() -> ml_collections.ConfigDict:
        config = load_config(path, model)
        config.progress = False
        return config

    return build


def _user_model(
    path: str, arg: str | None, model_name: str
) -> Callable[[], ml_collections.ConfigDict]:
    """A builder of a real config with a user's model plugged in by import path."""

    def build() -> ml_collections.ConfigDict:
        config = _real(path, arg)()
        config.model = ml_collections.ConfigDict({"name": model_name})
        return config

    return build


def _flax_mnist_cnn_28x28() -> ml_collections.ConfigDict:
    """The Flax MNIST example's CNN, unchanged, on digits upscaled to MNIST's 28x28."""
    config = _user_model("configs/digits.py", None, "tests.bugzoo.models:FlaxMnistCNN")()
    config.dataset.name = "tests.bugzoo.pieces:digits_28x28"
    config.dataset.kwargs = ml_collections.ConfigDict()
    return config


BROKEN: list[Case] = [
    Case(
        "softmax_output",
        "softmax_before_loss",
        synthetic(model_name="tests.check_bugs:SoftmaxMLP"),
    ),
    Case(
        "sigmoid_head_into_logits_loss",
        "softmax_before_loss",
        synthetic(model_name="tests.bugzoo.models:SigmoidHeadMLP"),
    ),
    Case(
        "tanh_head_into_logits_loss",
        "softmax_before_loss",
        synthetic(model_name="tests.bugzoo.models:TanhHeadMLP"),
        fast=False,
    ),
    Case(
        "flipped_loss_sign",
        "loss_increasing",
        synthetic(loss="tests.curve_bugs:negated_cross_entropy"),
    ),
    Case(
        "lr_10_adam",
        "lr_too_high",
        synthetic(**{"optimizer.learning_rate": 10.0}),
        fast=False,
        config_fixable=True,
    ),
    Case(
        "lr_1e-8",
        "lr_too_low",
        synthetic(**{"optimizer.learning_rate": 1e-8}),
        config_fixable=True,
    ),
    Case(
        "pixels_x255_unnormalized",
        "inputs_not_normalized",
        synthetic(
            "image", "mlp", dataset="tests.check_bugs:pixel_images", **{"dataset.normalize": False}
        ),
        fast=False,
        config_fixable=True,
    ),
    Case(
        "shuffled_labels",
        "labels_corrupted",
        synthetic(dataset="tests.curve_bugs:random_labels"),
        fast=False,
    ),
    Case("log_of_zero", "nan_or_inf", synthetic(loss="tests.broken:log_of_margin_loss")),
    Case("dead_relu_init", "dead_units", synthetic(model_name="tests.check_bugs:DeadReluMLP")),
    Case(
        "stop_gradient_layer",
        "no_gradient",
        synthetic(model_name="tests.check_bugs:StopGradientMLP"),
        fast=False,
    ),
    Case(
        "dropout_ignores_eval",
        "train_eval_mode",
        synthetic(model_name="tests.check_bugs:AlwaysDropoutMLP"),
        fast=False,
    ),
    Case(
        "norm_over_batch_axis",
        "batch_dependence",
        synthetic(model_name="tests.check_bugs:BatchAxisNormMLP"),
    ),
    Case(
        "regression_n1_vs_n",
        "shape_mismatch",
        synthetic(loss="tests.bugzoo.pieces:expected_class_regression"),
    ),
    Case(
        "exploding_init",
        "initial_loss_off",
        synthetic(model_name="tests.check_bugs:ScaledInitMLP"),
        fast=False,
    ),
    Case(
        "l2_1e3",
        "loss_plateau",
        synthetic(l2=1e3),
        fast=False,
        config_fixable=True,
    ),
    Case(
        "label_noise_10pct",
        "train_labels_noisy",
        synthetic(dataset="tests.bugzoo.pieces:noisy_labels_10"),
        fast=False,
    ),
    Case(
        "label_noise_30pct",
        "train_labels_noisy",
        synthetic(dataset="tests.bugzoo.pieces:noisy_labels_30"),
    ),
    Case(
        "test_leaked_into_train",
        "test_leaked_into_train",
        synthetic(dataset="tests.bugzoo.pieces:leaked_test_split"),
    ),
    Case(
        "label_column_in_inputs",
        "target_in_inputs",
        synthetic(dataset="tests.bugzoo.pieces:label_column_in_inputs"),
        fast=False,
    ),
    Case(
        "duplicated_training_examples",
        "duplicate_examples",
        synthetic(dataset="tests.bugzoo.pieces:duplicated_train"),
        fast=False,
    ),
    Case(
        "test_images_transposed",
        "test_split_differs",
        synthetic("image", "mlp", dataset="tests.bugzoo.pieces:transposed_test_images"),
        fast=False,
    ),
    Case(
        "class_imbalance_1_to_50",
        "labels_corrupted",
        synthetic(dataset="tests.bugzoo.pieces:imbalanced_1_to_50"),
        fast=False,
    ),
    Case(
        "deep_linear_stack",
        "model_is_linear",
        synthetic(model_name="tests.bugzoo.models:DeepLinearMLP"),
    ),
    Case(
        "relu_on_logits",
        "softmax_before_loss",
        synthetic(model_name="tests.bugzoo.models:ReluLogitsMLP"),
        fast=False,
    ),
    Case(
        "constant_labels",
        "labels_corrupted",
        synthetic(dataset="tests.check_bugs:constant_labels"),
    ),
    Case(
        "log_of_softmax_overflow",
        "nan_or_inf",
        synthetic(
            "image",
            "mlp",
            dataset="tests.check_bugs:pixel_images",
            loss="tests.bugzoo.pieces:log_of_softmax",
            **{"dataset.normalize": False},
        ),
        fast=False,
    ),
    Case(
        "deep_sigmoid_stack",
        "vanishing_gradients",
        synthetic(model_name="tests.check_bugs:DeepSigmoidMLP"),
        fast=False,
    ),
    Case(
        "sqrt_of_zero_norm",
        "nan_or_inf",
        synthetic(loss="tests.check_bugs:sqrt_norm_loss"),
        fast=False,
    ),
    Case(
        "float16_overflow",
        "nan_or_inf",
        synthetic(
            "image",
            "mlp",
            model_name="tests.bugzoo.models:Float16MLP",
            dataset="tests.check_bugs:pixel_images",
            **{"dataset.normalize": False},
        ),
        fast=False,
    ),
]

# Issue 16's further kinds: data split and normalization, layer settings, capacity, and the
# bugs only JAX has (keys not split, indices clamped by gathers).
BROKEN += [
    Case(
        "normalized_per_split",
        "split_normalized_separately",
        synthetic(dataset="tests.bugzoo.pieces:normalized_per_split"),
    ),
    Case(
        "normalized_with_test_statistics",
        "split_normalized_separately",
        synthetic(
            dataset="tests.bugzoo.pieces:normalized_with_test_statistics",
            **{"dataset.normalize": False},
        ),
        fast=False,
    ),
    Case(
        "sorted_by_class_then_split",
        "split_from_sorted_data",
        synthetic(dataset="tests.bugzoo.pieces:sorted_then_split"),
    ),
    # Three BatchNorm layers: at batch size 2 their eval-mode val loss ends far above batch size
    # 32's on the same examples (the counterfactual's test). One BatchNorm layer
    # (tests.check_bugs:DropoutBatchNormMLP) at batch 2 does as well as batch 32 on this data:
    # no bug to find there.
    Case(
        "batchnorm_batch_size_2",
        "batchnorm_small_batch",
        synthetic(model_name="tests.bugzoo.models:BatchNormMLP", batch_size=2),
        fast=False,
        config_fixable=True,
    ),
    Case(
        "dropout_0.9",
        "dropout_too_high",
        synthetic(model_name="tests.bugzoo.models:HighDropoutMLP"),
    ),
    Case(
        "model_far_too_small",
        "model_too_small",
        synthetic(model_name="tests.bugzoo.models:TinyMLP"),
        fast=False,
    ),
    Case(
        "gradients_accumulated_never_reset",
        "gradients_never_reset",
        synthetic(**{"optimizer.name": "tests.bugzoo.pieces:adam_accumulating_never_reset"}),
    ),
    Case(
        "warmup_schedule_ends_at_zero",
        "lr_schedule_zero",
        synthetic(
            **{"optimizer.schedule.name": "tests.bugzoo.pieces:warmup_decay_sized_to_the_warmup"}
        ),
        config_fixable=True,
    ),
    Case(
        "prng_key_reused_every_step",
        "prng_key_reused",
        synthetic(model_name="tests.bugzoo.models:FixedKeyDropoutMLP"),
    ),
    Case(
        "prng_key_not_split_between_layers",
        "prng_key_shared",
        synthetic(model_name="tests.bugzoo.models:SharedKeyDropoutMLP"),
    ),
    Case(
        "dropout_layers_seeded_alike",
        "prng_key_shared",
        synthetic(model_name="tests.bugzoo.models:TwinRngsDropoutMLP"),
        fast=False,
    ),
    Case(
        "class_weights_shorter_than_classes",
        "index_out_of_range",
        synthetic(loss="tests.bugzoo.pieces:class_weighted_cross_entropy"),
        fast=False,
    ),
    Case(
        "token_ids_past_embedding_table",
        "index_out_of_range",
        synthetic(
            model_name="tests.bugzoo.models:ClampedTableTokenClassifier",
            dataset="tests.bugzoo.pieces:token_topics",
        ),
    ),
    Case(
        "embedding_smaller_than_vocabulary",
        "index_out_of_range",
        synthetic(
            model_name="tests.bugzoo.models:SmallEmbedTokenClassifier",
            dataset="tests.bugzoo.pieces:token_topics",
        ),
        fast=False,
    ),
]

CLEAN: list[Case] = [
    Case("clean_synthetic_mlp", None, synthetic()),
    Case(
        "clean_dropout_batchnorm",
        None,
        synthetic(model_name="tests.check_bugs:DropoutBatchNormMLP"),
    ),
    Case("clean_user_mlp", None, synthetic(model_name="tests.bugzoo.models:UserMLP")),
    Case(
        "clean_user_optimizer_and_schedule",
        None,
        synthetic(
            **{
                "optimizer.name": "tests.bugzoo.pieces:adam_by_hand",
                "optimizer.schedule.name": "tests.bugzoo.pieces:warmup_then_cosine_over_the_run",
            }
        ),
    ),
    Case(
        "clean_flax_mnist_cnn",
        None,
        synthetic("image", model_name="benchmarks.user_models:FlaxCNN"),
        fast=False,
    ),
    Case(
        "clean_cnn_dropout_batchnorm",
        None,
        synthetic("image", model_name="tests.bugzoo.models:DropoutBatchNormCNN"),
        fast=False,
    ),
    Case("clean_flax_mnist_cnn_28x28", None, _flax_mnist_cnn_28x28, fast=False),
    Case("clean_mnist1d_mlp", None, _real("configs/mnist1d.py", "mlp"), fast=False),
    Case("clean_mnist1d_tcn", None, _real("configs/mnist1d.py", "tcn"), fast=False),
    Case("clean_mnist1d_lstm", None, _real("configs/mnist1d.py", "lstm"), fast=False),
    Case("clean_digits_lenet", None, _real("configs/digits.py", "lenet"), fast=False),
    Case("clean_digits_mlp", None, _real("configs/digits.py", "mlp"), fast=False),
    # The two setups an lr_too_low false alarm was reported on (issue 16): a user's 1-D conv on
    # MNIST-1D, and the synthetic sequence config (its LSTM memorizes a batch only at 10x 3e-4).
    Case(
        "clean_mnist1d_user_conv1d",
        None,
        _user_model("configs/mnist1d.py", "mlp", "tests.bugzoo.models:Conv1DClassifier"),
        fast=False,
    ),
    Case("clean_synthetic_sequence", None, _real("configs/synthetic.py", "sequence"), fast=False),
    # The Flax NNX basics' MLP (Linear, BatchNorm, Dropout, gelu) as the docs write it, and a
    # user's plain MLP on the digits images.
    Case(
        "clean_flax_nnx_mlp",
        None,
        synthetic(model_name="benchmarks.user_models:FlaxMLP"),
        fast=False,
    ),
    Case(
        "clean_digits_user_mlp",
        None,
        _user_model("configs/digits.py", None, "tests.bugzoo.models:UserMLP"),
        fast=False,
    ),
]

CLEAN += [
    Case(
        "clean_normalized_with_train_statistics",
        None,
        synthetic(
            dataset="tests.bugzoo.pieces:normalized_with_train_statistics",
            **{"dataset.normalize": False},
        ),
    ),
    Case(
        "clean_sorted_by_class_loader",
        None,
        synthetic(dataset="tests.bugzoo.pieces:sorted_by_class"),
        fast=False,
    ),
    Case(
        "clean_hand_dropout_split_keys",
        None,
        synthetic(model_name="tests.bugzoo.models:SplitKeyDropoutMLP"),
    ),
    Case(
        "clean_token_bag_classifier",
        None,
        synthetic(
            model_name="tests.bugzoo.models:TokenBagClassifier",
            dataset="tests.bugzoo.pieces:token_topics",
        ),
    ),
]

CASES: list[Case] = BROKEN + CLEAN

# The fault category of each broken case, as the benchmark reports them (the published fault
# taxonomies' top levels: Humbatova et al. 2020, DeepFD, TheDeepChecker), with "jax" for the bugs
# only JAX has.
CATEGORIES = ("data", "model", "loss", "optimization", "jax")
CATEGORY_OF = {
    "pixels_x255_unnormalized": "data",
    "shuffled_labels": "data",
    "constant_labels": "data",
    "label_noise_10pct": "data",
    "label_noise_30pct": "data",
    "test_leaked_into_train": "data",
    "duplicated_training_examples": "data",
    "label_column_in_inputs": "data",
    "test_images_transposed": "data",
    "class_imbalance_1_to_50": "data",
    "softmax_output": "model",
    "sigmoid_head_into_logits_loss": "model",
    "tanh_head_into_logits_loss": "model",
    "relu_on_logits": "model",
    "dead_relu_init": "model",
    "dropout_ignores_eval": "model",
    "norm_over_batch_axis": "model",
    "exploding_init": "model",
    "deep_sigmoid_stack": "model",
    "deep_linear_stack": "model",
    "flipped_loss_sign": "loss",
    "log_of_zero": "loss",
    "regression_n1_vs_n": "loss",
    "sqrt_of_zero_norm": "loss",
    "log_of_softmax_overflow": "loss",
    "lr_10_adam": "optimization",
    "lr_1e-8": "optimization",
    "l2_1e3": "optimization",
    "stop_gradient_layer": "jax",
    "float16_overflow": "jax",
    "normalized_per_split": "data",
    "normalized_with_test_statistics": "data",
    "sorted_by_class_then_split": "data",
    "gradients_accumulated_never_reset": "optimization",
    "warmup_schedule_ends_at_zero": "optimization",
    "batchnorm_batch_size_2": "model",
    "dropout_0.9": "model",
    "model_far_too_small": "model",
    "prng_key_reused_every_step": "jax",
    "prng_key_not_split_between_layers": "jax",
    "dropout_layers_seeded_alike": "jax",
    "class_weights_shorter_than_classes": "jax",
    "token_ids_past_embedding_table": "jax",
    "embedding_smaller_than_vocabulary": "jax",
}


def category(case: Case) -> str:
    """The case's fault category (CATEGORIES), or "clean"."""
    return "clean" if case.expected_id is None else CATEGORY_OF[case.name]


# ----------------------------------------------------------------------------- other tasks
# Regression and multi-label setups (config.task, issue 14), broken and clean, in a block of
# their own. The broken ones carry the faults a regression or multi-label model really has: a
# head that squashes what the loss expects unbounded (a sigmoid at step 0, a tanh seen after
# memorizing a batch), an exploding init, a learning rate far too low.


def task_setup(
    setup: str, model_name: str | None = None, **overrides
) -> Callable[[], ml_collections.ConfigDict]:
    """A builder of configs/tasks.py:<setup> at a small size, another model plugged in."""

    def build() -> ml_collections.ConfigDict:
        config = load_config("configs/tasks.py", setup)
        if setup == "regression":
            config.dataset.kwargs.num_train = 600
            config.dataset.kwargs.num_test = 200
        config.num_steps = 60
        config.batch_size = 32
        config.eval_batch_size = 256
        config.optimizer.learning_rate = 3e-3
        config.progress = False
        if model_name:
            config.model = ml_collections.ConfigDict({"name": model_name})
        config.update_from_flattened_dict(overrides) if overrides else None
        return config

    return build


TASK_BROKEN: list[Case] = [
    Case(
        "regression_targets_shuffled",
        "train_labels_noisy",
        task_setup("diabetes", **{"dataset.name": "tests.bugzoo.pieces:diabetes_targets_shuffled"}),
        fast=False,
    ),
    Case(
        "regression_missing_target_code",
        "extreme_values",
        task_setup(
            "diabetes", **{"dataset.name": "tests.bugzoo.pieces:diabetes_missing_target_code"}
        ),
        fast=False,
    ),
    Case(
        "regression_sigmoid_head",
        "softmax_before_loss",
        task_setup("regression", "tests.bugzoo.models:SigmoidHeadMLP"),
    ),
    Case(
        "regression_tanh_head",
        "softmax_before_loss",
        task_setup("regression", "tests.bugzoo.models:TanhHeadMLP"),
        fast=False,
    ),
    # Weights x100 under mean squared error: unlike a saturating cross-entropy (the
    # classification case, initial_loss_off), the gradient grows with the outputs, so the
    # step-0 gradients do explode and exploding_gradients is the first thing to read; the
    # initial_loss_off beside it points at the initialization.
    Case(
        "regression_exploding_init",
        "exploding_gradients",
        task_setup("regression", "tests.check_bugs:ScaledInitMLP"),
        fast=False,
    ),
    Case(
        "regression_lr_1e-8",
        "lr_too_low",
        task_setup("regression", **{"optimizer.learning_rate": 1e-8}),
        # A regression's batch MSE is too noisy beside its level for the curve to be called a
        # plateau: lr_too_low comes from the stalled overfit run, confirmed by the trials.
        fast=False,
        config_fixable=True,
    ),
    Case(
        "multilabel_sigmoid_head",
        "softmax_before_loss",
        task_setup("multilabel", "tests.bugzoo.models:SigmoidHeadMLP"),
    ),
    Case(
        "multilabel_exploding_init",
        "initial_loss_off",
        task_setup("multilabel", "tests.check_bugs:ScaledInitMLP"),
        fast=False,
    ),
]

TASK_CLEAN: list[Case] = [
    Case("clean_regression_mlp", None, task_setup("regression")),
    Case(
        "clean_regression_user_mlp",
        None,
        task_setup("regression", "tests.bugzoo.models:UserMLP"),
        fast=False,
    ),
    Case("clean_diabetes_mlp", None, task_setup("diabetes"), fast=False),
    Case("clean_multilabel_mlp", None, task_setup("multilabel")),
]

CASES += TASK_BROKEN + TASK_CLEAN
CATEGORY_OF.update(
    {
        "regression_targets_shuffled": "data",
        "regression_missing_target_code": "data",
        "regression_sigmoid_head": "model",
        "regression_tanh_head": "model",
        "regression_exploding_init": "model",
        "regression_lr_1e-8": "optimization",
        "multilabel_sigmoid_head": "model",
        "multilabel_exploding_init": "model",
    }
)
