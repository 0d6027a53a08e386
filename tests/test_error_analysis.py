"""Error analysis: the numbers on hand-made predictions, each finding fired and kept quiet, the
plots and report tables, and the evaluate stage with label noise planted in one class."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import small_config
from workflow import evaluate, experiment
from workflow.diagnostics import error_analysis as ea
from workflow.diagnostics.findings import ERROR_ANALYSIS, declared_ids
from workflow.evaluate import report as evaluate_report
from workflow.reporting import rundir
from workflow.run import report as run_report

C = 10


def probabilities(predicted: np.ndarray, confidence: np.ndarray, num_classes: int = C):
    """Rows that give `predicted` probability `confidence` and share the rest evenly."""
    n = len(predicted)
    probs = np.tile(((1.0 - confidence) / (num_classes - 1))[:, None], (1, num_classes))
    probs[np.arange(n), predicted] = confidence
    return probs


def simulate(
    counts,
    error: float = 0.05,
    class_error: dict | None = None,
    confident: float = 0.0,
    class_confident: dict | None = None,
    absorbed: tuple[int, float, float] | None = None,
    seed: int = 0,
):
    """Labels and probabilities of a model that errs on each class at its rate.

    Ordinary errors go to another class at ~55% confidence (near the boundary); the
    `confident` share of each class (`class_confident` for some) is predicted as another class
    at 97%, as mislabelled examples are; `absorbed=(c, share, confidence)` sends that share of
    every other class's examples to c (at 97%: class c's examples carry other labels; at 55%:
    the model takes other inputs for c). Correct predictions: 85-99%.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    rng.shuffle(labels)
    n = len(labels)
    predicted, confidence = labels.copy(), rng.uniform(0.85, 0.99, n)
    rates = np.array([(class_error or {}).get(c, error) for c in labels])
    sure = np.array([(class_confident or {}).get(c, confident) for c in labels])
    u = rng.uniform(size=n)
    # Mistakes go to another class about as often as it occurs, as a model's do.
    other = rng.permutation(labels)
    other = np.where(other == labels, (labels + rng.integers(1, C, n)) % C, other)
    hard = u < rates
    noisy = (u >= rates) & (u < rates + sure)
    predicted[hard | noisy] = other[hard | noisy]
    confidence[hard] = rng.uniform(0.45, 0.65, hard.sum())
    confidence[noisy] = 0.97
    if absorbed:
        cls, share, sure_of = absorbed
        moved = (labels != cls) & (rng.uniform(size=n) < share)
        predicted[moved], confidence[moved] = cls, sure_of
    return labels, probabilities(predicted, confidence)


def analysis_of(train, val) -> dict:
    return {"splits": {"train": ea.split_analysis(*train, C), "val": ea.split_analysis(*val, C)}}


def found(train, val, train_counts) -> dict:
    """The findings of a simulated train/val pair, by id (checked well formed)."""
    findings = ea.findings(analysis_of(train, val), train_counts)
    for f in findings:
        assert f.id in declared_ids(ERROR_ANALYSIS) and f.severity in ("info", "warning")
        assert f.message and f.evidence and f.suggestions
        json.dumps(f.to_json(), allow_nan=False)
    ids = [f.id for f in findings]
    assert len(ids) == len(set(ids))
    return {f.id: f for f in findings}


BALANCED = [400] * C


# ----------------------------------------------------------------------------- numbers


def test_confusion_matrix_per_class_error_and_top_confusions():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1, 0, 2, 2, 1])
    matrix = ea.confusion_matrix(labels, predicted, 4)
    assert matrix.tolist() == [[2, 2, 0, 0], [1, 2, 0, 0], [0, 1, 2, 0], [0, 0, 0, 0]]
    errors, counts = ea.per_class_error(matrix)
    assert counts.tolist() == [4, 3, 3, 0]
    assert errors[:3] == pytest.approx([0.5, 1 / 3, 1 / 3]) and np.isnan(errors[3])
    assert ea.top_confusions(matrix, k=5) == [
        {"true": 0, "predicted": 1, "count": 2, "rate": 0.5},
        {"true": 1, "predicted": 0, "count": 1, "rate": pytest.approx(1 / 3)},
        {"true": 2, "predicted": 1, "count": 1, "rate": pytest.approx(1 / 3)},
    ]


def test_the_worst_examples_are_the_most_confident_mistakes_named_by_split_position():
    labels = np.array([0, 1, 2, 0, 1])
    probs = probabilities(np.array([0, 2, 0, 1, 1]), np.array([0.99, 0.6, 0.95, 0.8, 0.9]), 3)
    assert ea.most_confident_errors(labels, probs).tolist() == [2, 3, 1]
    assert ea.most_confident_errors(labels, probs, k=1).tolist() == [2]
    # A subset of a split: positions 10, 20, ... of the split, as the report names them.
    split = ea.split_analysis(labels, probs, 3, indices=np.arange(5) * 10, total=1000)
    assert [w["index"] for w in split["worst_examples"]] == [20, 30, 10]
    assert split["worst_examples"][0] == {
        "index": 20,
        "true": 2,
        "predicted": 0,
        "confidence": pytest.approx(0.95),
        "true_probability": pytest.approx(0.025),
    }
    assert split["examples"] == 5 and split["total"] == 1000
    assert split["error"] == pytest.approx(0.6)
    assert split["class_errors"] == [0.5, 0.5, 1.0] and split["class_counts"] == [2, 2, 1]
    assert split["predicted_counts"] == [2, 2, 1] and split["predicted_error_counts"] == [1, 1, 1]
    json.dumps(split, allow_nan=False)


def test_a_large_split_is_subsampled_the_same_way_every_time():
    assert ea.subset_indices(300, 500).tolist() == list(range(300))
    idx = ea.subset_indices(100_000, 4000)
    assert len(idx) == 4000 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, ea.subset_indices(100_000, 4000))


def test_confident_means_as_sure_as_most_correct_predictions():
    assert ea.confidence_threshold(np.full(100, 0.99)) == ea.CONFIDENCE
    assert ea.confidence_threshold(np.linspace(0.3, 0.7, 101)) == pytest.approx(0.4)
    assert ea.confidence_threshold(np.zeros(0)) == ea.CONFIDENCE


# ----------------------------------------------------------------------------- findings


def test_a_class_that_fails_fires_and_names_what_it_is_taken_for():
    train = simulate(BALANCED, error=0.02, class_error={3: 0.30}, seed=1)
    val = simulate([200] * C, error=0.05, class_error={3: 0.40}, seed=2)
    f = found(train, val, BALANCED)
    assert list(f) == ["class_error_concentrated"] and f["class_error_concentrated"].severity == (
        "info"
    )
    e = f["class_error_concentrated"].evidence
    assert e["class"] == 3 and e["split"] == "val" and e["grouped_by"] == "label"
    assert e["class_error"] > 0.3 and e["also_on_train"] is True
    assert "on the training data" in f["class_error_concentrated"].message
    assert "seen too" in f["class_error_concentrated"].suggestions[0]
    # Failing only on val: fitted on seen examples, not on new ones.
    clean_train = simulate(BALANCED, error=0.02, seed=1)
    only_val = found(clean_train, val, BALANCED)["class_error_concentrated"]
    assert only_val.evidence["also_on_train"] is False
    assert "not new ones" in only_val.suggestions[0]


@pytest.mark.parametrize("seed", range(20))
def test_ordinary_noise_between_classes_stays_quiet(seed):
    # Every class truly errs 5% (plus 3% confident mistakes, like uniform label noise); only
    # sampling varies between classes.
    train = simulate(BALANCED, error=0.05, confident=0.03, seed=100 + seed)
    val = simulate([40] * C, error=0.05, confident=0.03, seed=200 + seed)
    assert found(train, val, BALANCED) == {}


def test_a_real_but_small_difference_between_classes_is_not_a_finding():
    # 8% against 5% on 5,000 examples a class is significant, but under twice the overall error.
    train = simulate([5000] * C, error=0.05, class_error={3: 0.08}, seed=3)
    val = simulate([500] * C, error=0.05, class_error={3: 0.08}, seed=4)
    assert found(train, val, [5000] * C) == {}


def test_a_class_that_absorbs_other_classes_examples_fires_by_prediction():
    train = simulate(BALANCED, error=0.02, seed=5)
    val = simulate([200] * C, error=0.02, absorbed=(4, 0.04, 0.55), seed=6)
    f = found(train, val, BALANCED)["class_error_concentrated"]
    assert f.evidence["grouped_by"] == "prediction" and f.evidence["class"] == 4
    assert "predicts as class 4" in f.message


def test_a_class_with_too_few_examples_and_high_error_fires():
    counts = [400] * C
    counts[7] = 40
    train = simulate(counts, error=0.02, seed=7)
    val = simulate([200] * C, error=0.04, class_error={7: 0.35}, seed=8)
    f = found(train, val, counts)
    assert list(f) == ["class_too_few_examples"]  # explained once: not also "concentrated"
    few = f["class_too_few_examples"]
    assert few.severity == "warning" and few.evidence["class"] == 7
    assert few.evidence["train_examples"] == 40 and few.evidence["median_train_examples"] == 400
    assert "collect more examples of class 7" in few.suggestions[0]
    # The same errors with as many examples as the others: a failing class, not a small one.
    balanced = found(simulate(BALANCED, error=0.02, seed=7), val, BALANCED)
    assert list(balanced) == ["class_error_concentrated"]
    # Few examples but no more errors than the others: nothing to say.
    fine = simulate([200] * C, error=0.04, seed=8)
    assert found(train, fine, counts) == {}


def test_confident_mistakes_concentrated_in_one_class_suggest_label_noise():
    # 15% of the training examples labelled 2 look like other classes (predicted at 97%).
    train = simulate(BALANCED, error=0.02, confident=0.005, class_confident={2: 0.15}, seed=9)
    val = simulate([40] * C, error=0.05, seed=10)
    f = found(train, val, BALANCED)
    assert list(f) == ["label_noise_suspected"]  # class 2's error is explained by its labels
    noise = f["label_noise_suspected"]
    assert noise.severity == "warning"
    e = noise.evidence
    assert e["class"] == 2 and e["split"] == "train" and e["grouped_by"] == "label"
    # A model that underfits: its confident errors may be its own confusions, at most info.
    [weak] = ea.findings(analysis_of(train, val), BALANCED, underfit=True)
    assert weak.id == "label_noise_suspected" and weak.severity == "info"
    assert "the model underfits" in weak.message
    assert e["rate"] > 0.1 and e["other_classes_rate"] < 0.02
    assert "relabel" in noise.suggestions[0]
    # Class 5's examples carrying other labels: the model confidently calls them 5.
    scattered = simulate(BALANCED, error=0.02, absorbed=(5, 0.03, 0.97), seed=11)
    by_prediction = found(scattered, val, BALANCED)["label_noise_suspected"]
    assert by_prediction.evidence["grouped_by"] == "prediction"
    assert by_prediction.evidence["class"] == 5


def test_a_hard_class_is_not_called_label_noise():
    # Class 2 errs 30% near the boundary (55% confidence): a failing class, not wrong labels.
    train = simulate(BALANCED, error=0.02, class_error={2: 0.30}, confident=0.005, seed=12)
    val = simulate([40] * C, error=0.05, seed=13)
    assert list(found(train, val, BALANCED)) == ["class_error_concentrated"]


# ----------------------------------------------------------------------------- plots, report


def small_analysis(kind: str) -> tuple[dict, dict]:
    """An analysis of 4 classes with a few worst examples, and their inputs for the kind."""
    rng = np.random.default_rng(0)
    shapes = {"image": (6, 6, 1), "sequence": (20, 2), "tabular": (12,)}
    splits, inputs = {}, {}
    for split, n in (("train", 80), ("val", 20)):
        labels = rng.integers(0, 4, n)
        predicted = np.where(rng.uniform(size=n) < 0.3, (labels + 1) % 4, labels)
        result = ea.split_analysis(labels, probabilities(predicted, rng.uniform(0.5, 1, n), 4), 4)
        inputs[split] = rng.standard_normal((len(result["worst_examples"]), *shapes[kind]))
        for w, x in zip(result["worst_examples"], inputs[split], strict=True):
            w["inputs"] = [float(v) for v in x.ravel()[: ea.TABLE_FEATURES]]
        splits[split] = result
    return {"num_features": int(np.prod(shapes[kind])), "splits": splits}, inputs


def test_plots_draw_each_kind_as_a_person_looks_at_it(tmp_path):
    for kind in ("image", "sequence", "tabular"):
        analysis, inputs = small_analysis(kind)
        setup = SimpleNamespace(
            dataset=SimpleNamespace(kind=kind, name="data"),
            config=SimpleNamespace(model=SimpleNamespace(name=kind)),
        )
        run = rundir.RunDir(str(tmp_path / kind))
        plots = evaluate_report.save_error_analysis_plots(run, setup, analysis, inputs)
        assert (tmp_path / kind / "plots" / "confusion_matrix.png").stat().st_size > 1000
        if kind == "tabular":  # a table in the report instead of a picture
            assert list(plots) == ["confusion matrix"]
        else:
            assert (tmp_path / kind / "plots" / "worst_examples.png").stat().st_size > 1000


def test_the_report_shows_classes_train_against_val_and_the_confusions():
    analysis, _ = small_analysis("tabular")
    blocks = ea.report_blocks(analysis, "tabular")
    tables = [b for b in blocks if b[0] == "table"]
    per_class, pairs, worst = tables
    assert per_class[1] == ["class", "train examples", "train error", "val examples", "val error"]
    assert len(per_class[2]) == 5 and per_class[2][-1][0] == "all"
    assert pairs[1] == ["true → predicted", "val mistakes", "train mistakes"]
    first = analysis["splits"]["val"]["top_confusions"][0]
    assert pairs[2][0][0] == f"{first['true']} → {first['predicted']}"
    assert worst[1][:5] == ["split", "example", "true", "predicted", "confidence"]
    assert worst[1][-1] == "…" and len(worst[1]) == 5 + ea.TABLE_FEATURES + 1
    assert {row[0] for row in worst[2]} == {"train", "val"}
    markdown = ea.blocks_markdown(blocks)
    assert "| class | train examples | train error | val examples | val error |" in markdown


# ----------------------------------------------------------------------------- the stage


def test_evaluate_analyzes_errors_and_calls_planted_label_noise(tmp_path):
    setup = experiment.prepare(small_config())
    y = setup.dataset.y_train
    rng = np.random.default_rng(0)
    # 30 examples of other classes labelled 3: about 40% of what carries label 3.
    y[rng.choice(np.flatnonzero(y != 3), 30, replace=False)] = 3
    summary = evaluate.run_evaluate(setup, str(tmp_path))
    assert summary.status == "ok"  # error-analysis findings never change the exit code
    by_id = {f.id: f for f in summary.findings}
    noise = by_id["label_noise_suspected"]
    assert noise.evidence["class"] == 3 and noise.evidence["split"] == "train"
    splits = summary.error_analysis["splits"]
    assert set(splits) == {"train", "val"}
    train = splits["train"]
    assert train["examples"] == len(y) and len(train["class_errors"]) == C
    assert train["class_errors"][3] > 2 * train["error"]
    assert 0 < len(train["worst_examples"]) <= ea.WORST_EXAMPLES
    assert all(y[w["index"]] == w["true"] for w in train["worst_examples"])
    # The analyzed model is the reported one: its errors are the summary's.
    for split in ("train", "val"):
        assert splits[split]["error"] == pytest.approx(summary.metrics[f"{split}_error"])
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert (
        stored["error_analysis"]["splits"]["val"]["class_counts"] == splits["val"]["class_counts"]
    )
    report = (tmp_path / "report.md").read_text()
    assert "## Error analysis" in report and "![confusion matrix](plots/confusion_matrix.png)" in (
        report
    )
    assert "| class | train examples | train error | val examples | val error |" in report
    assert "The most confidently wrong examples" in report  # tabular: a table, not a grid
    assert (tmp_path / "plots" / "confusion_matrix.png").stat().st_size > 1000

    # workflow.run's report shows the final model's analysis and embeds its plots.
    step = type("Step", (), {"summary": summary, "workdir": str(tmp_path)})()
    blocks = run_report.error_blocks(step)
    assert [b for b in blocks if b[0] == "image"][0][1].endswith("confusion_matrix.png")
    html = run_report.to_html("t", [("Error analysis of the final model", blocks)])
    assert html.count('src="data:image/png;base64,') == 1 and "train error" in html


@pytest.mark.slow
@pytest.mark.parametrize("plant", ["few", "scattered"])
def test_evaluate_calls_a_small_class_and_a_class_that_absorbs_others(tmp_path, plant):
    setup = experiment.prepare(small_config())
    ds, rng = setup.dataset, np.random.default_rng(0)
    if plant == "few":  # class 3 cut to 5 training examples
        keep = np.ones(len(ds.y_train), bool)
        keep[np.flatnonzero(ds.y_train == 3)[5:]] = False
        ds.x_train, ds.y_train = ds.x_train[keep], ds.y_train[keep]
    else:  # half of class 3's examples carry other labels
        idx = rng.choice(np.flatnonzero(ds.y_train == 3), (ds.y_train == 3).sum() // 2, False)
        ds.y_train[idx] = (3 + rng.integers(1, C, len(idx))) % C
    summary = evaluate.run_evaluate(setup, str(tmp_path))
    by_id = {f.id: f for f in summary.findings}
    if plant == "few":
        assert by_id["class_too_few_examples"].evidence["class"] == 3
    else:
        e = by_id["class_error_concentrated"].evidence
        assert e["class"] == 3 and e["grouped_by"] == "prediction"
    assert summary.status == "ok"


@pytest.mark.slow
def test_an_image_run_draws_its_worst_examples_from_the_early_stopped_model(tmp_path):
    config = small_config(
        "image",
        **{
            "early_stopping.enabled": True,
            "early_stopping.metric": "val_loss",
            "early_stopping.patience": 1,
            "num_steps": 100,
        },
    )
    summary = evaluate.run_evaluate(experiment.prepare(config), str(tmp_path))
    m, splits = summary.metrics, summary.error_analysis["splits"]
    assert m["best_step"] < m["steps"]  # stopped after its best evaluation
    for split in ("train", "val"):  # the best evaluated state, not the last one
        assert splits[split]["error"] == pytest.approx(m[f"{split}_error"])
    assert splits["train"]["worst_examples"]
    report = (tmp_path / "report.md").read_text()
    assert "![worst examples](plots/worst_examples.png)" in report
    assert (tmp_path / "plots" / "worst_examples.png").stat().st_size > 1000


def _input_split(x: np.ndarray, wrong: np.ndarray) -> dict:
    """A minimal split analysis carrying only what the input detector reads."""
    return {"error": float(wrong.mean()), "input_bins": ea.input_bins(x, wrong)}


def test_errors_on_inputs_of_one_kind_fire_input_errors_concentrated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 10))
    x[:200] *= 4.0  # a quarter of the inputs at another scale (a second sensor, say)
    wrong = rng.random(800) < 0.08
    wrong[:200] = rng.random(200) < 0.45  # ... which the model mostly gets wrong
    finding = ea.input_finding({"val": _input_split(x, wrong)})
    assert finding is not None and finding.id == "input_errors_concentrated"
    assert finding.severity == "info"
    assert finding.evidence["descriptor"] in ("std", "max_abs")
    assert finding.evidence["bin"] == ea.INPUT_BINS - 1  # the largest-scale inputs
    assert finding.evidence["bin_error"] > 0.3 and "highest" in finding.message


def test_errors_unrelated_to_the_inputs_stay_quiet():
    quiet = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(800, 10))
        x[:200] *= 4.0
        wrong = rng.random(800) < 0.15  # the same error rate whatever the input
        quiet += ea.input_finding({"val": _input_split(x, wrong)}) is None
    assert quiet == 20


def test_input_bins_hold_equal_counts_even_with_ties():
    x = np.zeros((100, 3))
    x[:10] = 1.0
    bins = ea.input_bins(x, np.zeros(100, bool))
    assert bins["mean"]["examples"] == [25, 25, 25, 25]
