"""Smoke tests of the benchmark scripts at tiny sizes: they run end to end and write their JSON."""

import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch):
    # benchmarks/ is run from the repository root (python -m benchmarks....), not installed.
    monkeypatch.syspath_prepend(str(ROOT))


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_reproduce_mnist1d_writes_json(tmp_path):
    from benchmarks import reproduce_mnist1d

    out = tmp_path / "reproduce.json"
    argv = ["--steps=20", "--models=mlp", "--seeds=0,1,2", "--no-check", f"--out={out}"]
    assert reproduce_mnist1d.main(argv) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["mlp"]
    mlp = results["mlp"]
    runs = [mlp["runs"][seed]["test_accuracy"] for seed in ("0", "1", "2")]
    assert mlp["seeds"] == [0, 1, 2] and len(set(runs)) > 1  # three different runs
    assert mlp["test_accuracy"] == pytest.approx(np.mean(runs))  # the floor applies to the mean
    assert mlp["test_accuracy_std"] == pytest.approx(np.std(runs, ddof=1))
    assert mlp["wall_seconds"] > 0
    assert results["mlp"]["train_size"] == 4000  # the paper's split: all 4,000 train examples
    assert results["mlp"]["test_size"] == 1000


def test_reproduce_mnist1d_check_names_failed_models():
    from benchmarks import reproduce_mnist1d

    results = {
        "mlp": {"status": "ok", "test_accuracy": 0.70},
        "cnn": {"status": "ok", "test_accuracy": 0.50},
        "lstm": {"status": "diverged", "test_accuracy": 0.10},
    }
    lines = reproduce_mnist1d.failures(results)
    assert [line.split(":")[0] for line in lines] == ["cnn", "lstm"]
    # A floor on the mean: one unlucky seed under it does not fail a model whose mean clears it.
    runs = {
        seed: {"status": "ok", "test_accuracy": acc, "wall_seconds": 1.0, "steps_per_s": 1.0}
        | {"steps": 6000, "train_size": 4000, "test_size": 1000, "model": {}}
        for seed, acc in ((0, 0.917), (1, 0.925), (2, 0.927))
    }
    cnn = reproduce_mnist1d.over_seeds(runs)
    assert (
        cnn["test_accuracy"] == pytest.approx(0.923)
        and reproduce_mnist1d.failures({"cnn": cnn}) == []
    )
    runs[1]["test_accuracy"] = 0.90
    assert reproduce_mnist1d.failures({"cnn": reproduce_mnist1d.over_seeds(runs)})


@pytest.mark.slow
def test_train_throughput_writes_json(tmp_path):
    from benchmarks import train_throughput

    out = tmp_path / "throughput.json"
    argv = ["--steps=20", "--repeats=1", "--models=mlp", "--no-check", f"--out={out}"]
    assert train_throughput.main(argv) == 0
    results = json.loads(out.read_text())
    for key in ("ours_steps_per_s", "nnx_jit_loop_steps_per_s", "scan_reference_steps_per_s"):
        assert results[key] > 0
    mlp = results["models"]["mlp"]
    for method in ("ours", "nnx_jit_loop", "scan_reference"):
        assert mlp[f"{method}_steps_per_s"] > 0
    # Ratios are medians of per-round ratios, inside their quartiles; one round has no spread.
    low, high = mlp["ours_over_scan_reference_quartiles"]
    assert low == pytest.approx(mlp["ours_over_scan_reference"]) == pytest.approx(high)
    assert mlp["ours_over_scan_reference"] == pytest.approx(
        mlp["ours_steps_per_s"] / mlp["scan_reference_steps_per_s"]
    )
    assert mlp["control_over_scan_reference"] > 0
    if _torch_available():
        assert mlp["torch_eager_steps_per_s"] > 0
        assert mlp["ours_over_torch_eager"] > 0
    else:
        assert mlp["torch_eager_steps_per_s"] is None
        assert mlp["ours_over_torch_eager"] is None


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm"])
def test_torch_models_match_ours(name):
    torch = pytest.importorskip("torch")
    import models
    from benchmarks import common, train_throughput
    from workflow import experiment

    setup = experiment.prepare(common.paper_config(name, steps=20))
    model, x = train_throughput.torch_model(setup)
    assert model(x[:2]).shape == (2, setup.dataset.num_classes)
    # Same architecture, same parameter count; torch's LSTM has a second bias vector.
    extra = 4 * setup.model.hidden_size if name == "lstm" else 0
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == models.count_params(setup.model) + extra
    assert isinstance(x, torch.Tensor)


def test_parse_models_rejects_unknown_names():
    from benchmarks import common

    assert common.parse_models("mlp, lstm") == ["mlp", "lstm"]
    with pytest.raises(ValueError, match="gru"):
        common.parse_models("mlp,gru")


@pytest.mark.slow  # kept out of the default run for time; runs with -m slow
def test_search_throughput_writes_json(tmp_path):
    import math
    import os
    import subprocess
    import sys

    out = tmp_path / "search_throughput.json"
    argv = ["--steps=10", "--sizes=1,8", "--sequential_runs=2", "--repeats=1"]
    argv += ["--num_samples=500", f"--out={out}"]  # few examples: generated in under a second
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.search_throughput", *argv],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())

    def positive(value) -> bool:
        return isinstance(value, float) and math.isfinite(value) and value > 0

    assert positive(results["sequential_trials_per_s"])
    assert list(results["batched"]) == ["1", "8"]
    assert all(positive(rate) for rate in results["batched"].values())
    for n, rate in results["batched"].items():
        ratio = results["ratio_to_sequential"][n]
        assert ratio == pytest.approx(rate / results["sequential_trials_per_s"])
        assert positive(results["wall_seconds"][n])
        assert results["compile_seconds"][n] >= 0
    assert positive(results["wall_seconds"]["sequential"])
    assert results["steps"] == 10 and results["model"] == "mlp"


@pytest.mark.slow
def test_compile_cache_setup_times_each_set_up_choice(tmp_path):
    from benchmarks import compile_cache

    out = tmp_path / "setup.json"
    assert compile_cache.main(["--setup", "--config=configs/synthetic.py", f"--out={out}"]) == 0
    results = json.loads(out.read_text())
    assert set(results["seconds"]) == set(compile_cache.SETUP_PARTS)
    assert all(seconds > 0 for seconds in results["seconds"].values())
    assert results["init_eager_over_program"] > 0


@pytest.mark.slow
def test_compile_cache_second_run_reaches_its_first_step_sooner(tmp_path):
    from benchmarks import compile_cache

    out = tmp_path / "cache.json"
    assert compile_cache.main(["--config=configs/synthetic.py", f"--out={out}"]) == 0
    results = json.loads(out.read_text())
    assert results["first_run"]["first_loss"] == results["second_run"]["first_loss"]
    assert results["ratio_first_over_second"]["first_step_seconds"] > 1.0


@pytest.mark.slow
def test_fault_campaign_subset_writes_its_json(tmp_path):
    from benchmarks import faults

    out = tmp_path / "faults.json"
    only = "unknown_model,checkpoint_swapped,kill_tune_at_point_1,full_disk_8k"
    code = faults.main([f"--only={only}", f"--out={out}", f"--scratch={tmp_path / 'scratch'}"])
    results = json.loads(out.read_text())
    assert set(results) == {"tried", "survived", "cases"}
    cases = results["cases"]
    order = [fault.name for fault in faults.CASES]  # the campaign's order, not --only's
    assert [c["name"] for c in cases] == sorted(only.split(","), key=order.index)
    for record in cases:
        assert set(record) == {
            "name",
            "done",
            "expected",
            "observed",
            "survived",
            "skipped",
            "seconds",
        }
        assert record["done"] and record["expected"] and record["observed"]
    tried = [c for c in cases if not c["skipped"]]
    assert results["tried"] == len(tried) >= 3  # the full disk needs root, the rest run anywhere
    assert results["survived"] == sum(c["survived"] for c in tried)
    # These promises hold on this branch: a bad model name, a changed checkpoint, a killed search.
    assert all(c["survived"] for c in cases if c["name"] != "full_disk_8k"), cases
    assert code == (0 if results["survived"] == results["tried"] else 1)
    assert not (tmp_path / "scratch").exists()  # removed unless --keep


def test_time_to_goal_writes_the_issues_json_and_table(tmp_path, monkeypatch):
    from benchmarks import time_to_goal

    calls = []

    def fake_run(config, workdir, *overrides):  # a workflow.run without training
        calls.append(overrides)
        fixed = "--config.search.stop_at_goal=False" in overrides
        return {
            "workflow_seconds": 200.0 if fixed else 80.0,
            "test_accuracy": 0.96 if fixed else 0.97,
            "goal_met": True,
            "searches": [
                {
                    "trials": 40 if fixed else 12,
                    "search_seconds": 150.0 if fixed else 30.0,
                    "search_stop": None if fixed else {},
                }
            ],
        }

    monkeypatch.setattr(time_to_goal, "run_workflow", fake_run)
    out = tmp_path / "ttg.json"
    assert time_to_goal.main(["--problems=mnist1d", f"--out={out}"]) == 0
    result = json.loads(out.read_text())["mnist1d"]
    assert result["seconds_to_goal"] == 80.0 and result["test_accuracy"] == 0.97
    assert result["baseline_seconds"] == 200.0 and result["baseline_test_accuracy"] == 0.96
    row = time_to_goal.table({"mnist1d": result}).splitlines()[-1].split()
    assert row == ["mnist1d", "80", "30", "yes", "97.00%", "200", "150", "yes", "96.00%", "2.50x"]
    # The baseline is the old search: no stop at the goal and no pruning.
    assert calls == [(), ("--config.search.stop_at_goal=False", "--config.search.prune_rungs=1")]
    with pytest.raises(SystemExit):
        time_to_goal.main(["--problems=imagenet"])
    with pytest.raises(SystemExit):
        time_to_goal.main(["--problems=mnist1d", "--seeds=0,0"])


def test_time_to_goal_over_seeds_judges_the_mean_paired_difference(tmp_path, monkeypatch):
    from benchmarks import time_to_goal

    # Seed by seed, the stop-at-goal run is 1 point worse, the same, then 1 point better.
    accuracy = {"0": 0.94, "1": 0.95, "2": 0.96}

    def fake_run(config, workdir, *overrides):
        fixed = "--config.search.stop_at_goal=False" in overrides
        seed = next(o for o in overrides if o.startswith("--config.seed=")).split("=")[1]
        return {
            "workflow_seconds": 200.0 if fixed else 90.0,
            "test_accuracy": 0.95 if fixed else accuracy[seed],
            "goal_met": True,
            "searches": [],  # the goal met before any search: '-' in the table
        }

    monkeypatch.setattr(time_to_goal, "run_workflow", fake_run)
    out = tmp_path / "ttg.json"
    assert time_to_goal.main(["--problems=synthetic", "--seeds=0,1,2", f"--out={out}"]) == 0
    result = json.loads(out.read_text())["synthetic"]
    assert sorted(result["seeds"]) == ["0", "1", "2"]
    assert result["test_accuracy"] == pytest.approx(0.95)
    assert result["accuracy_difference"] == pytest.approx(0.0)
    assert result["accuracy_difference_se"] == pytest.approx(0.01 / 3**0.5)
    assert result["same_or_better"] and result["half_time"]
    lines = time_to_goal.table({"synthetic": result}).splitlines()
    assert lines[2].split()[:4] == ["synthetic", "0", "90", "-"]
    assert "synthetic mean" in lines[-1]


@pytest.mark.slow
def test_grain_pipeline_writes_each_pipelines_rate_and_ratio(tmp_path):
    from benchmarks import grain_pipeline

    out = tmp_path / "grain.json"
    argv = ["--cases=mlp_mnist1d", "--rounds=1", "--mlp_steps=200", f"--out={out}"]
    assert grain_pipeline.main(argv) == 0
    mlp = json.loads(out.read_text())["cases"]["mlp_mnist1d"]
    for pipeline in ("memory", "grain", "grain_workers"):
        assert mlp[f"{pipeline}_examples_per_s"] > 0
    assert mlp["grain_over_memory"] == pytest.approx(
        mlp["grain_examples_per_s"] / mlp["memory_examples_per_s"]
    )


@pytest.mark.slow
def test_grain_sources_writes_each_size_and_pipelines_rate_and_peak_memory(tmp_path):
    from benchmarks import grain_pipeline

    out = tmp_path / "sources.json"
    argv = ["--sources", "--source_sizes=200,400", "--image_size=8", "--source_steps=40"]
    assert grain_pipeline.main([*argv, f"--out={out}"]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "grain_sources" and set(result["sizes"]) == {"200", "400"}
    for runs in result["sizes"].values():
        assert set(runs) == set(grain_pipeline.SOURCE_PIPELINES)
        for run in runs.values():
            assert run["examples_per_s"] > 0 and run["peak_rss_mb"] > 0
        assert runs["grain_lazy_workers"]["workers_peak_rss_mb"] > 0  # a worker process ran
    assert result["sizes"]["400"]["memory"]["train_examples"] > 200


def test_grain_pipeline_refuses_an_unknown_case():
    from benchmarks import grain_pipeline

    assert grain_pipeline.main(["--cases=resnet_imagenet"]) == 2
