"""The improve stage: the workflow's decision list, the candidates run, the best kept and why."""

import json
import os

import pytest

from tests.conftest import ROOT, read_summary, small_config
from workflow import config_lib, data, evaluate, experiment, files, improve
from workflow.data import synthetic
from workflow.search import remedies


def _underfit_config():
    """An MLP with two hidden units: clearly underfit, and too small for any learning rate."""
    config = small_config("tabular")
    config.model.hidden_sizes = (2,)
    config.optimizer.learning_rate = 1e-2
    config.num_steps = 100
    config.eval_every = 50
    config.checkpoint_every = 50
    config.search.range_test.num_steps = 60
    config.search.range_test.repeats = 1
    config.improve.max_candidates = 2  # a bigger and a deeper MLP: cheap enough by default
    return config


class _Data:
    """Just what the remedies read from a dataset."""

    def __init__(self, kind="tabular", n_train=540, input_shape=(20,), info=None):
        self.kind = kind
        self.x_train = [0] * n_train
        self.input_shape = input_shape
        self.info = info or {}


def _names(out):
    return [r.name for r in out]


def test_underfit_remedies_follow_the_workflow_order():
    config = small_config("tabular")
    names = _names(remedies.candidates(config, _Data(), ["underfit"], suggested_lr=1e-2))
    assert names == [
        "baseline",
        "bigger model",
        "deeper model",
        "train longer",
        "re-tuned lr",
    ]
    bigger = remedies.candidates(config, _Data(), ["underfit"])[1].config
    assert tuple(bigger.model.hidden_sizes) == tuple(2 * h for h in config.model.hidden_sizes)
    # Less regularization only when there is some; the lr only when the suggestion differs.
    config.l2 = 1e-3
    config.model.dropout_rate = 0.3
    out = remedies.candidates(
        config, _Data(), ["underfit"], suggested_lr=config.optimizer.learning_rate
    )
    less = next(r for r in out if r.name == "less regularization")
    assert less.config.l2 == 0 and less.config.model.dropout_rate == 0
    assert "re-tuned lr" not in _names(out)


def test_underfit_escalates_to_the_next_architecture():
    lstm = small_config("sequence", "lstm")
    names = _names(remedies.candidates(lstm, _Data("sequence", input_shape=(40, 1)), ["underfit"]))
    assert "escalate to transformer" in names or "escalate to wavenet" in names
    lenet = small_config("image", "lenet")
    out = remedies.candidates(lenet, _Data("image", input_shape=(8, 8, 1)), ["underfit"])
    escalated = [r for r in out if r.name.startswith("escalate")]
    assert escalated and escalated[0].config.model.name == "resnet_small"  # 8x8 fits no ResNet-20


def test_overfit_remedies_add_data_regularize_and_shrink():
    config = small_config("tabular")
    out = remedies.candidates(config, _Data(n_train=100), ["overfit"], available_train=540)
    names = _names(out)
    assert names[:2] == ["baseline", "more data"]
    assert out[1].config.dataset.train_size == 200
    assert {"L2 0.0001", "L2 0.001", "dropout", "smaller model"} <= set(names)
    # No more data to add: no such remedy.
    assert "more data" not in _names(
        remedies.candidates(config, _Data(), ["overfit"], available_train=540)
    )
    assert _names(remedies.candidates(config, _Data(), ["val_overfit"])) == [
        "baseline",
        "bigger val split",
    ]
    assert _names(remedies.candidates(config, _Data(), ["goal_met"])) == ["baseline"]


def test_more_data_is_drawn_from_a_generator_at_its_full_size():
    config = small_config("tabular")  # 600 generated examples, all in use
    generated = _Data(info={"options": {"num_train": 600}})
    out = remedies.candidates(config, generated, ["overfit"], available_train=540)
    more = next(r for r in out if r.name == "more data")
    assert more.config.dataset.kwargs.num_train == 1200 and more.config.dataset.train_size is None
    assert "num_train 600 → 1,200" in more.change and "same test split" in more.change
    assert "generator" in more.reason
    # A subset of the data at hand grows first: the generator is left as it is.
    config.dataset.train_size = 100
    subset = remedies.candidates(
        config, _Data(n_train=100, info=generated.info), ["overfit"], available_train=540
    )
    assert subset[1].config.dataset.train_size == 200
    assert subset[1].config.dataset.kwargs.num_train == 600
    # MNIST-1D: twice the training examples, a test split of the same size.
    args = {"num_samples": 5000, "train_split": 0.8}
    kwargs, change = remedies.generated_more("mnist1d", {"generator_args": args})
    assert kwargs["num_samples"] == 9000 and int(9000 * kwargs["train_split"]) == 8000
    assert "8,000 train, 1,000 test" in change
    # Data of a fixed size (digits, a TFDS set) at its full size: nothing more to add.
    fixed = _Data(info={"source": "digits"})
    config.dataset.train_size = None
    out = remedies.candidates(config, fixed, ["overfit"], available_train=540)
    assert "more data" not in _names(out)
    config.dataset.name = "digits"
    assert remedies.more_data(config, generated, 540) is None


def test_more_data_on_the_default_mnist1d_config_whose_generator_is_at_its_defaults():
    # configs/mnist1d.py leaves the generator's arguments out of its (locked) kwargs.
    config = config_lib.load_config_file(os.path.join(ROOT, "configs/mnist1d.py"))
    config.lock()  # as --config gives it to the stages
    assert "num_samples" not in config.dataset.kwargs
    info = {"generator_args": {"num_samples": 5000, "train_split": 0.8}}
    more, change, _ = remedies.more_data(config, _Data(n_train=3600, info=info), 3600)
    assert more.dataset.kwargs.num_samples == 9000 and more.dataset.train_size is None
    assert "num_samples 5,000 → 9,000" in change


def test_more_generated_examples_keep_the_synthetic_test_split():
    small = data.load_dataset(small_config("tabular").dataset, seed=0)
    config = small_config("tabular")
    more = remedies.more_data(config, small, evaluate.available_train_examples(small))[0]
    bigger = data.load_dataset(more.dataset, seed=0)
    assert len(bigger.y_train) == 2 * len(small.y_train)
    # Normalization statistics come from the training split, so compare the raw test inputs.
    raw = [synthetic.make_synthetic(c.dataset.kwargs.to_dict(), seed=0) for c in (config, more)]
    assert (raw[0]["x_test"] == raw[1]["x_test"]).all()
    assert (raw[0]["y_test"] == raw[1]["y_test"]).all()


def test_an_escalated_model_is_written_as_a_loadable_config(tmp_path):
    source = os.path.join(ROOT, "configs/synthetic.py") + ":sequence"
    base = config_lib.load_config_file(*source.split(":"))
    escalated = remedies.candidates(base, _Data("sequence", input_shape=(64, 1)), ["underfit"])
    wavenet = next(r for r in escalated if r.name == "escalate to wavenet").config
    path = str(tmp_path / "best_config.py")
    (tmp_path / "best_config.py").write_text(
        config_lib.config_file_text(path, source, wavenet, "escalated")
    )
    loaded = config_lib.load_config_file(path)
    # The new architecture's options only: none of the LSTM's (hidden_size, readout) remain,
    # which WaveNet would reject.
    assert loaded.model.to_dict() == wavenet.model.to_dict()
    assert "hidden_size" not in loaded.model and loaded.optimizer == base.optimizer


def test_a_gain_within_the_noise_keeps_the_starting_point():
    def outcome(name, val):
        return improve.Outcome(
            remedies.Remedy(name, "underfit", "", "", None), 0.1, val, val, 10, 1.0
        )

    base, slightly, clearly = outcome("baseline", 0.30), outcome("a", 0.29), outcome("b", 0.15)
    chosen, why = improve.choose([base, slightly], n_val=400)
    assert chosen is base and "within the noise" in why
    chosen, why = improve.choose([base, slightly, clearly], n_val=400)
    assert chosen is clearly and "30.00% → 15.00%" in why


def test_improve_fixes_an_underfit_model_and_says_why(tmp_path, monkeypatch):
    config = _underfit_config()
    setup = experiment.prepare(config)

    def no_range_test(setup):
        raise AssertionError("the range test ran, but its lr is past max_candidates")

    monkeypatch.setattr(improve, "range_test_suggestion", no_range_test)
    source = os.path.join(ROOT, "configs/synthetic.py") + ":tabular"
    summary = improve.run_improve(setup, str(tmp_path / "improve"), source)
    assert read_summary(tmp_path / "improve") == files.to_jsonable(summary.to_json())
    assert summary.verdicts == ["underfit"] or "underfit" in summary.verdicts
    candidates = summary.candidates
    assert candidates[0]["name"] == "baseline" and len(candidates) >= 3
    # The baseline is the evaluated run of the same length: its numbers, not a retrained copy.
    evaluated = json.load(open(tmp_path / "improve" / "baseline" / "summary.json"))["metrics"]
    assert candidates[0]["val_error"] == pytest.approx(1 - evaluated["val_accuracy"])
    chosen = summary.decision["chosen"]
    assert chosen != "baseline" and "val error" in summary.decision["why"]
    best = next(c for c in candidates if c["name"] == chosen)
    assert best["val_error"] < candidates[0]["val_error"]
    assert summary.metrics["test_accuracy"] == pytest.approx(1 - best["test_error"])
    assert all(c["loop"]["form"] in ("scan", "step") for c in candidates)  # how each one ran
    report = open(tmp_path / "improve" / "report.md").read()
    assert "| candidate | change | val error |" in report and "Decision" in report
    assert os.path.getsize(tmp_path / "improve" / "plots" / "candidates.png") > 0
    # The choice is written as a config every stage accepts.
    chosen_config = config_lib.load_config_file(summary.best_config)
    assert json.loads(chosen_config.to_json_best_effort()) != json.loads(
        config.to_json_best_effort()
    )
    assert summary.next[0].startswith("python -m workflow.evaluate --config=")


def test_a_regression_s_candidates_read_in_rmse():
    """The candidates table names the task's error: a regression's val and test RMSE."""
    from workflow.improve import report as improve_report
    from workflow.reporting.summary import Summary

    def candidate(name, val, test):
        return {"name": name, "change": "-", "val_error": val, "test_error": test}

    candidates = [candidate("baseline", 61.38, 56.71), candidate("L2 0.0001", 61.26, 56.58)]
    for c in candidates:
        c |= {"num_params": 100, "seconds": 1.2, "loop": None, "reason": "-"}
    decision = {"chosen": "baseline", "why": "within the noise", "notes": []}
    summary = Summary(
        stage="improve",
        status="ok",
        config={"task": "regression"},
        metrics={},
        findings=[],
        candidates=candidates,
        decision=decision,
    )
    text = dict(improve_report.report_sections(summary, None))["Candidates (runs of equal length)"]
    assert "| candidate | change | val RMSE | Δ val | test RMSE |" in text
    assert "| L2 0.0001 | - | 61.26 | -0.12 | 56.58 |" in text
