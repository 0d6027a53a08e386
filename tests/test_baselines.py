"""configs/baselines.py end to end on tfds.testing.mock_data, and the text path it relies on.

The real data cannot be downloaded here: each baseline trains a few steps on mock examples of
its dataset's shapes; the published numbers are reproduced on an accelerator with the data.
"""

import json
import os

import numpy as np
import pytest

from tests.conftest import load_config, run_stage
from workflow import data
from workflow.data import sources
from workflow.errors import UsageError

tfds = pytest.importorskip("tensorflow_datasets")

# A few steps of every baseline at a tiny batch: the recipe runs, not its result.
FAST = {
    "num_steps": 4,
    "batch_size": 8,
    "steps_per_call": 2,
    "log_every": 2,
    "eval_every": 2,
    "checkpoint_every": 4,
    "eval_batch_size": 64,
}


def run_baseline(name: str, workdir, num_examples: int = 24, **overrides):
    """prepare + train_and_report of baseline `name` on mock data, as start_simple runs it."""
    from workflow import experiment

    config = load_config("configs/baselines.py", name)
    config.update_from_flattened_dict({**FAST, **overrides})
    with tfds.testing.mock_data(num_examples=num_examples):
        setup = experiment.prepare(config)
        summary = experiment.train_and_report(setup, str(workdir), "start_simple", None)
    assert summary.status == "ok", summary.findings
    assert summary.metrics["steps"] == 4
    assert json.loads((workdir / "summary.json").read_text())["stage"] == "start_simple"
    return summary


# ----------------------------------------------------------------------------- configs


def test_each_baseline_carries_its_recipe_and_target():
    lenet = load_config("configs/baselines.py", "mnist_lenet")
    assert lenet.dataset.name == "tfds:mnist" and lenet.model.name == "lenet"
    assert lenet.optimizer.name == "adam" and lenet.goal.test_error == 0.01
    fmnist = load_config("configs/baselines.py", "fashion_mnist_lenet")
    assert fmnist.dataset.name == "tfds:fashion_mnist" and fmnist.goal.test_error == 0.10

    cifar = load_config("configs/baselines.py", "cifar10_resnet20")
    assert (cifar.model.name, cifar.model.depth, cifar.model.norm) == ("resnet20", 20, "batch")
    opt = cifar.optimizer
    assert (opt.name, opt.learning_rate, opt.momentum) == ("momentum", 0.1, 0.9)
    assert opt.schedule.name == "piecewise" and tuple(opt.schedule.boundaries) == (32000, 48000)
    assert opt.schedule.scale == 0.1
    assert (cifar.batch_size, cifar.num_steps) == (128, 64000)
    # The loss's l2 * sum(w^2) has the gradient 2 * l2 * w: the paper's 1e-4 weight decay.
    assert 2 * cifar.l2 == pytest.approx(1e-4) and opt.weight_decay == 0.0
    aug = cifar.augment
    assert aug.enabled and aug.image.max_shift == 4 and aug.image.flip
    assert cifar.dataset.normalize and cifar.goal.test_error == pytest.approx(1 - 0.9125)

    imdb = load_config("configs/baselines.py", "imdb_lstm")
    assert imdb.dataset.name == "tfds:imdb_reviews"
    assert imdb.dataset.kwargs.vocab_size == imdb.model.vocab_size == 20000
    assert imdb.model.name == "lstm" and imdb.early_stopping.enabled


def test_unknown_baseline_is_a_usage_error_and_exits_2(tmp_path):
    with pytest.raises(UsageError, match="unknown baseline 'resnet'.*mnist_lenet.*imdb_lstm"):
        load_config("configs/baselines.py", "resnet")
    with pytest.raises(UsageError, match="needs a baseline"):
        load_config("configs/baselines.py")
    workdir = tmp_path / "run"
    result = run_stage(
        "start_simple", "--config=configs/baselines.py:cifar100_resnet", f"--workdir={workdir}"
    )
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "'cifar100_resnet'" in line and "cifar10_resnet20" in line and "\n" not in line
    assert "Traceback" not in result.stderr and not workdir.exists()


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow  # LeNet on mock tfds:mnist also runs by default in test_start_simple
def test_mnist_lenet_trains_end_to_end_on_mock_data(tmp_path):
    summary = run_baseline("mnist_lenet", tmp_path)
    assert summary.config["model"]["name"] == "lenet"
    assert summary.dataset["input_shape"] == [28, 28, 1]
    assert summary.dataset["normalized"]


@pytest.mark.slow
def test_imdb_lstm_trains_end_to_end_on_mock_data(tmp_path):
    summary = run_baseline("imdb_lstm", tmp_path, **{"dataset.kwargs.max_length": 16})
    ds = summary.dataset
    assert ds["kind"] == "sequence" and ds["input_shape"] == [16, 1] and not ds["normalized"]
    vocab = ds["vocabulary"]
    assert 2 < vocab["size"] <= 20000 and vocab["max_length"] == 16
    words = json.loads(open(vocab["file"]).read())["words"]
    assert words[:2] == ["<pad>", "<unk>"] and len(words) == vocab["size"]
    assert "words" not in vocab  # the summary names the file; the words stay out of it
    layers = {layer["path"]: layer for layer in summary.model_summary}
    assert layers["embed"]["type"] == "Embed"


def test_noise_augmentation_of_token_ids_is_refused_naming_the_value():
    from workflow import experiment

    config = load_config("configs/baselines.py", "imdb_lstm")
    config.update_from_flattened_dict({**FAST, "dataset.kwargs.max_length": 8})
    config.augment.enabled = True
    config.augment.sequence.noise_std = 0.1
    with tfds.testing.mock_data(num_examples=24):
        with pytest.raises(UsageError, match=r"augment.sequence.noise_std=0.1.*token ids"):
            experiment.prepare(config.copy_and_resolve_references())
        config.augment.sequence.noise_std = 0.0  # time shifts alone are fine for token ids
        setup = experiment.prepare(config)
    assert setup.task.augment is not None


@pytest.mark.slow
def test_fashion_mnist_lenet_trains_end_to_end_on_mock_data(tmp_path):
    summary = run_baseline("fashion_mnist_lenet", tmp_path)
    assert summary.dataset["name"] == "tfds:fashion_mnist"


@pytest.mark.slow
def test_cifar10_resnet20_trains_end_to_end_on_mock_data(tmp_path):
    # 50 mock examples, so val_fraction 0.02 leaves one for val; steps cross a lr boundary.
    summary = run_baseline(
        "cifar10_resnet20", tmp_path, num_examples=50, **{"optimizer.schedule.boundaries": (2,)}
    )
    assert summary.dataset["input_shape"] == [32, 32, 3]
    assert summary.dataset["splits"]["val"]["size"] == 1
    assert summary.config["augment"]["kind"] == "image"


# ----------------------------------------------------------------------------- text path


def test_tokenize_lowercases_words_and_drops_markup():
    assert data.tokenize(b"A <br />GREAT film, isn't it? 10/10") == [
        "a",
        "great",
        "film",
        "isn't",
        "it",
        "10",
        "10",
    ]
    vocab = data.build_vocabulary([["b", "a", "c"], ["a", "b"], ["a"]], vocab_size=4)
    assert vocab == ["<pad>", "<unk>", "a", "b"]  # by frequency; "c" did not make the cut
    ids = data.encode_tokens([["a", "c", "b"], ["b", "a", "a", "b", "a"]], vocab, max_length=4)
    np.testing.assert_array_equal(ids, [[2, 1, 3, 0], [3, 2, 2, 3]])  # unknown 1, padding 0


REVIEWS = {
    # Each training review has a word of its own, so the one the val carve takes is known by
    # the word missing from the vocabulary. The last is cut at max_length 4.
    "train": [
        ("good film one", 1),
        ("a good film two", 1),
        ("bad film three", 0),
        ("bad plot four", 0),
        ("bad acting five is bad", 0),
    ],
    "test": [("good zebra film", 1), ("plot", 0)],
}
MARKERS = ("one", "two", "three", "four", "five")


def test_vocabulary_comes_from_the_trained_examples_only(monkeypatch):
    """The tfds text path on fixed reviews: a word seen only in test, or only in the example
    carved off for val, is unknown (1); sequences are cut and padded to max_length."""

    def source(builder, name, split, data_dir):
        return [{"text": text, "label": label} for text, label in REVIEWS[split]]

    monkeypatch.setattr(sources, "_tfds_source", source)
    cfg = data.default_config()
    cfg.name = "tfds:imdb_reviews"
    cfg.val_fraction = 0.2  # one of the five
    cfg.kwargs.max_length = 4
    ds = data.load_dataset(cfg, seed=0)
    assert ds.kind == "sequence" and ds.input_shape == (4, 1) and ds.x_train.dtype == np.int32
    assert ds.normalization is None  # token ids are never normalized
    words = ds.info["vocabulary"]["words"]
    carved = [i for i, marker in enumerate(MARKERS) if marker not in words]
    assert len(carved) == 1 and len(ds.y_val) == 1
    trained = [data.tokenize(text)[:4] for i, (text, _) in enumerate(REVIEWS["train"])]
    val_tokens = trained.pop(carved[0])
    assert words[:2] == ["<pad>", "<unk>"] and set(words[2:]) == {t for r in trained for t in r}
    index = {w: i for i, w in enumerate(words)}

    def ids(tokens):
        return [index.get(t, 1) for t in tokens] + [0] * (4 - len(tokens))

    np.testing.assert_array_equal(ds.x_val[:, :, 0], [ids(val_tokens)])
    assert ds.x_val[0, val_tokens.index(MARKERS[carved[0]]), 0] == 1
    np.testing.assert_array_equal(
        ds.x_test[:, :, 0], [ids(["good", "zebra", "film"]), ids(["plot"])]
    )
    assert ds.x_test[0, 1, 0] == 1  # "zebra" is in no training review
    assert sorted(map(tuple, ds.x_train[:, :, 0])) == sorted(tuple(ids(r)) for r in trained)
    vocab = ds.info["vocabulary"]
    assert vocab["truncated"]["train"] == 0.2 and vocab["unknown_rate"]["test"] > 0
    assert json.loads(open(vocab["file"]).read())["words"] == words
    assert os.path.dirname(vocab["file"]) == str(data.cache_dir())
    again = data.load_dataset(cfg, seed=0)  # another stage: the same vocabulary and file
    assert again.info["vocabulary"]["sha256"] == vocab["sha256"]
    cfg.kwargs.vocab_size = 4  # the two most frequent trained words; the rest are unknown
    small = data.load_dataset(cfg, seed=0)
    assert small.info["vocabulary"]["words"] == words[:4] and small.x_train.max() == 3


def test_text_options_are_checked():
    cfg = data.default_config()
    cfg.name = "tfds:imdb_reviews"
    cfg.kwargs.vocab_size = 2
    with pytest.raises(UsageError, match="vocab_size=2 must be an integer >= 3"):
        data.load_dataset(cfg, seed=0)
    cfg.kwargs = {"max_length": 8}
    cfg.name = "tfds:mnist"
    with pytest.raises(UsageError, match="apply to text features only"):
        data.load_dataset(cfg, seed=0)
    cfg.kwargs = {"text_key": "review"}
    cfg.name = "tfds:imdb_reviews"
    with pytest.raises(UsageError, match="no feature text .review.*text, label"):
        data.load_dataset(cfg, seed=0)


# ----------------------------------------------------------------------------- models on token ids


@pytest.mark.parametrize(
    "name, options",
    [
        ("lstm", {"readout": "last"}),
        ("lstm", {"readout": "mean"}),
        # Slow: building and compiling a transformer takes ~10 s on the 2-core CPU.
        pytest.param("transformer", {"patch_size": 1}, marks=pytest.mark.slow),
        pytest.param("transformer", {"patch_size": 2, "pooling": "cls"}, marks=pytest.mark.slow),
    ],
)
def test_embedding_models_ignore_padding(name, options):
    """With vocab_size set, an example's logits do not change with the padding after it, and
    ids fed as floats (as the shape checks trace them) give the same logits."""
    import jax.numpy as jnp
    from flax import nnx

    import models

    sizes = {"lstm": {"hidden_size": 8, "embed_size": 4}, "transformer": {"d_model": 8}}[name]
    model = models.build_model(name, (8, 1), 3, rngs=nnx.Rngs(0), vocab_size=20, **sizes, **options)
    model.eval()
    ids = np.array([[3, 5, 7, 1, 0, 0, 0, 0], [3, 5, 7, 9, 2, 4, 11, 19]], np.int32)[..., None]

    @nnx.jit  # one program for the three calls: eager ops compile one by one, slowly
    def run(model, ids):
        return model(ids), model(ids[:1, :4]), model(ids.astype(jnp.float32))

    logits, prefix, from_floats = (np.asarray(a) for a in run(model, jnp.asarray(ids)))
    np.testing.assert_allclose(logits[0], prefix[0], atol=1e-5)
    np.testing.assert_allclose(from_floats, logits, atol=1e-6)
    assert not np.allclose(logits[0], logits[1])


def test_embedding_options_are_checked():
    from flax import nnx

    import models

    with pytest.raises(models.ModelOptionError, match="vocab_size=1 is invalid"):
        models.build_model("lstm", (8, 1), 3, rngs=nnx.Rngs(0), vocab_size=1)
    shaped = r"come shaped \(T, 1\); the input has 2 features"
    with pytest.raises(models.ModelOptionError, match=shaped):
        models.build_model("transformer", (8, 2), 3, rngs=nnx.Rngs(0), vocab_size=10)
