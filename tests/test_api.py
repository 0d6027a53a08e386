"""workflow.api: the stages from Python, with a model object, data in memory or in files, a
Result that renders in Jupyter, no global side effects, and the command line's one-line errors."""

import json
import sys

import matplotlib
import numpy as np
import pytest
from flax import nnx
from sklearn import datasets

import models
from tests.user_setups import Model, wine_csv
from workflow import api
from workflow.diagnostics.findings import Finding
from workflow.errors import UsageError

FAST = {"debug.overfit_steps": 150, "debug.train_steps": 60, "progress": False}


@pytest.fixture(scope="module")
def wine():
    x, y = datasets.load_wine(return_X_y=True)
    return {"x": x.astype(np.float32), "y": y}


# Slow: the README guide's Python example (tests/test_user_guide.py) passes a module instance
# by default; arrays as data by test_a_factory_gets_the_input_shape_and_the_class_count.
@pytest.mark.slow
def test_debug_takes_a_module_instance_and_arrays_and_returns_a_result(wine, tmp_path):
    before = matplotlib.get_backend()
    argv = list(sys.argv)
    result = api.debug(
        Model(13, 32, 3, rngs=nnx.Rngs(0)), wine, workdir=str(tmp_path / "run"), **FAST
    )
    assert result.stage == "debug" and result.status in ("ok", "failed")
    assert all(isinstance(f, Finding) for f in result.findings)
    assert result.metrics["short_run_steps"] == 60
    assert result.metrics["short_run_val_accuracy"] > 0.5
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved == result.summary and saved["status"] == result.status
    assert saved["config"]["model"] == {"name": "Model@python"}
    assert "Model@python" in models.LOCAL_MODELS and "Model@python" not in models.MODELS
    assert saved["dataset"]["num_classes"] == 3 and saved["dataset"]["splits"]["test"]["size"] == 36
    # Nothing global changed: the backend, the command line; the next step is a call.
    assert matplotlib.get_backend() == before and sys.argv == argv
    if result.ok:
        assert result.summary["next"][0].startswith("workflow.api.evaluate(")
    page = result._repr_html_()
    assert "debug: <span style='color:" in page and "<img src='data:image/png;base64," in page


# Slow: a class's options from the config are proven by default in tests/test_user_model.py.
@pytest.mark.slow
def test_a_free_class_gets_its_options_from_dotted_overrides(tmp_path):
    path = wine_csv(tmp_path)
    options = {"model.kwargs.din": 13, "model.kwargs.dmid": 16, "model.kwargs.dout": 3}
    result = api.debug(Model, path, workdir=str(tmp_path / "run"), **options, **FAST)
    assert result.summary["config"]["model"] == {
        "name": "tests.user_setups:Model",
        "din": 13,
        "dmid": 16,
        "dout": 3,
    }
    assert result.summary["config"]["dataset"]["name"] == str(path)


def test_a_factory_gets_the_input_shape_and_the_class_count(wine, tmp_path):
    seen = {}

    def factory(input_shape, num_outputs, *, rngs):
        seen["args"] = (input_shape, num_outputs)
        return Model(input_shape[0], 8, num_outputs, rngs=rngs)

    api.start_simple(factory, wine, workdir=str(tmp_path / "run"), num_steps=40, progress=False)
    assert seen["args"] == ((13,), 3)


def test_bad_input_raises_usage_error_with_the_command_line_s_line(wine, tmp_path):
    with pytest.raises(UsageError) as e:
        api.debug(Model, wine, workdir=str(tmp_path / "a"))
    assert str(e.value).startswith("model 'tests.user_setups:Model' takes (din, dmid, dout, *")
    with pytest.raises(UsageError, match=r"data file 'nothing.csv' does not exist"):
        api.debug(None, "nothing.csv", workdir=str(tmp_path / "b"))
    with pytest.raises(UsageError, match=r"unknown config key 'optimizer.lr'; optimizer has"):
        api.debug(None, wine, workdir=str(tmp_path / "c"), **{"optimizer.lr": 1.0})
    with pytest.raises(UsageError, match=r"data \(the arrays given\) holds inputs; expected"):
        api.debug(None, {"inputs": wine["x"]}, workdir=str(tmp_path / "d"))
    with pytest.raises(UsageError, match="give the data"):
        api.debug(Model)
    # A NaN among arrays handed over: named as the arrays given, not by their registered name.
    x = wine["x"].copy()
    x[7, 2] = np.nan
    with pytest.raises(UsageError) as e:
        api.debug(None, {"x": x, "y": wine["y"]}, workdir=str(tmp_path / "e"))
    assert str(e.value).startswith("dataset (the arrays given) x_train has 1 non-finite values")
    assert not (tmp_path / "e").exists()


# Slow: evaluate and tune through the API are proven by default in tests/test_tasks.py, a
# config file by every stage's CLI test.
@pytest.mark.slow
def test_evaluate_and_tune_on_a_config_file(tmp_path):
    evaluated = api.evaluate(
        config="configs/synthetic.py:tabular",
        workdir=str(tmp_path / "evaluate"),
        **{"dataset.kwargs.num_train": 400, "num_steps": 60, "eval_every": 20, "progress": False},
    )
    assert evaluated.summary["bias_variance"]["rows"]
    assert evaluated.metrics["test_accuracy"] > 0.5
    tuned = api.tune(
        config="configs/synthetic.py:tabular",
        workdir=str(tmp_path / "tune"),
        **{
            "dataset.kwargs.num_train": 400,
            "num_steps": 60,
            "eval_every": 20,
            "progress": False,
            "search.num_trials": 4,
            "search.rounds": 1,
            "search.range_test.enabled": False,
            "search.retrain_best": False,
        },
    )
    assert tuned.stage == "tune" and len(tuned.summary["trials"]) == 4


# Small budgets for the training stages from Python (a few seconds each).
SMALL_RUN = {
    "dataset.kwargs.num_train": 400,
    "dataset.kwargs.num_test": 200,
    "num_steps": 100,
    "batch_size": 32,
    "eval_every": 50,
    "checkpoint_every": 50,
    "progress": False,
    "evaluate.train_sizes": (),
}


@pytest.mark.slow
def test_improve_from_python_on_a_regression(tmp_path):
    """api.improve with task=regression: the baseline and remedies compared in RMSE, a decision
    and its metrics in the task's terms."""
    result = api.improve(
        config="configs/tasks.py:regression",
        workdir=str(tmp_path / "improve"),
        **SMALL_RUN,
        **{"improve.max_candidates": 2, "search.range_test.enabled": False},
    )
    assert result.stage == "improve" and result.status == "ok"
    candidates = result.summary["candidates"]
    assert candidates[0]["name"] == "baseline" and len(candidates) == 3
    baseline = json.loads((tmp_path / "improve" / "baseline" / "summary.json").read_text())
    assert candidates[0]["val_error"] == pytest.approx(baseline["metrics"]["val_rmse"])
    assert result.summary["decision"]["why"]
    assert "baseline_val_error" in result.metrics and "baseline_val_accuracy" not in result.metrics
    assert "| candidate | change | val RMSE |" in (tmp_path / "improve" / "report.md").read_text()


@pytest.mark.slow
def test_run_from_python_meets_an_easy_goal(tmp_path):
    """api.run: start simple, debug, evaluate; the goal met, the Result is the run's."""
    result = api.run(
        config="configs/synthetic.py:tabular",
        workdir=str(tmp_path / "run"),
        **{**SMALL_RUN, "num_steps": 300, "debug.train_steps": 60, "debug.overfit_steps": 200},
    )
    assert result.stage == "run" and result.status == "ok"
    assert [s["name"] for s in result.summary["steps"]] == [
        "1_start_simple",
        "2_debug",
        "3_evaluate",
    ]
    assert any(f.id == "goal_met" for f in result.findings)
    assert result.metrics["test_accuracy"] > 0.9
    assert (tmp_path / "run" / "report.html").exists()


def test_a_written_config_s_next_step_is_a_call_in_python_and_a_command_outside():
    """tune's and improve's best_config.py: run on from Python as an api call on the config
    alone (it names the model and data this process registered, tuned options included)."""
    from workflow import experiment

    outside = experiment.config_command("evaluate", "t/best_config.py", "t/evaluate")
    assert outside == "python -m workflow.evaluate --config=t/best_config.py --workdir=t/evaluate"
    experiment.IN_PYTHON["active"] = True
    try:
        inside = experiment.config_command("evaluate", "t/best_config.py", "t/evaluate")
    finally:
        experiment.IN_PYTHON["active"] = False
    assert inside == "workflow.api.evaluate(config='t/best_config.py', workdir='t/evaluate')"


def test_a_config_naming_another_process_s_objects_says_so(tmp_path):
    """A best_config.py written by workflow.api names the data and model that process held:
    elsewhere, one line saying so and what to do, exit 2, nothing written."""
    from tests.conftest import run_stage

    workdir = tmp_path / "evaluate"
    flag = "--config=configs/custom.py:arrays-0123abcd@python"
    result = run_stage("evaluate", flag, f"--workdir={workdir}")
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert "data 'arrays-0123abcd@python'" in line and "exists only in that process" in line
    assert "api.evaluate(" in line and not workdir.exists()
    with pytest.raises(models.ModelOptionError, match="model 'Net@python' was handed over"):
        models.get_model_class("Net@python")
