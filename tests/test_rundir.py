"""The run directory: RunDir writes every file, on process 0 only, atomically; summary.json is
one declared Summary that reads back as it was written."""

import json
import os

import ml_collections
import pytest

from workflow import files
from workflow.diagnostics.findings import Finding
from workflow.engine import distributed
from workflow.reporting import rundir
from workflow.reporting.summary import Summary
from workflow.run import Step


def tiny_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"model": {"name": "mlp"}, "dataset": {"name": "d"}})


def tiny_summary(**sections) -> Summary:
    finding = Finding("loss_plateau", "warning", "flat", {"step": 40}, ["raise the lr"])
    return Summary(
        stage="start_simple",
        status="ok",
        config={"model": {"name": "mlp"}, "dataset": {"name": "d"}},
        metrics={"test_accuracy": 0.5, "val_loss": float("nan")},
        findings=[finding],
        next=["python -m workflow.debug"],
        device="cpu",
        **sections,
    )


def draw():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


def write_everything(run: rundir.RunDir, source: str) -> list[str]:
    """Every writing method of RunDir once; the names of the drawings made."""
    drawn = []
    run.create(tiny_config())
    run.open(tiny_config(), resume_step=None)
    run.log({"step": 1, "train_loss": 0.5})
    run.close()
    run.write_json(rundir.NORMALIZATION, {"mean": [0.0], "std": [1.0]})
    run.write_text(rundir.MODEL_SUMMARY, "layers\n")
    run.write_summary(tiny_summary())
    run.write_report("title", [("Findings", "none")])
    run.append_to_report("Out of memory", "none")
    run.save_figure(rundir.PLOT_LEARNING_CURVES, lambda: drawn.append("curves") or draw())
    rundir.RunDir(os.path.join(run.path, rundir.BASELINE)).copy_from(source)
    return drawn


def test_every_write_is_a_no_op_on_processes_other_than_0(tmp_path, monkeypatch):
    source = tmp_path / "finished"
    source.mkdir()
    (source / "summary.json").write_text("{}")
    monkeypatch.setattr(distributed, "is_writer", lambda: False)
    run = rundir.RunDir(str(tmp_path / "run"))
    drawn = write_everything(run, str(source))
    assert drawn == [], "a plot is not even drawn on another process"
    assert not (tmp_path / "run").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    run.remove()
    assert (tmp_path / "run" / "config.json").exists()


def test_process_0_writes_every_file_atomically(tmp_path):
    source = tmp_path / "finished"
    source.mkdir()
    (source / "summary.json").write_text("{}")
    run = rundir.RunDir(str(tmp_path / "run"))
    assert write_everything(run, str(source)) == ["curves"]
    files = sorted(
        str(p.relative_to(tmp_path / "run"))
        for p in (tmp_path / "run").rglob("*")
        if p.is_file() and "tensorboard" not in p.parts
    )
    assert files == [
        "baseline/summary.json",
        "config.json",
        "metrics.jsonl",
        "model_summary.txt",
        "normalization.json",
        "plots/learning_curves.png",
        "report.md",
        "summary.json",
    ]
    assert all(name in rundir.FILES or name.split("/")[0] in rundir.FILES for name in files)
    report = (tmp_path / "run" / "report.md").read_text()
    assert report == "# title\n\n## Findings\n\nnone\n\n## Out of memory\n\nnone\n"
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ('{"step": 1, "train_loss": 0.5}\n')
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["metrics"] == {
        "test_accuracy": 0.5,
        "val_loss": "nan",
    }
    assert (tmp_path / "run" / "plots" / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_a_file_that_is_not_declared_is_refused(tmp_path):
    with pytest.raises(ValueError, match="declare it in FILES"):
        rundir.RunDir(str(tmp_path)).write_text("notes.txt", "x")


# summary.json as each stage writes it (sections abridged; the stages' own tests check the
# full files round-trip too, through tests/conftest.py's read_summary).
COMMON = {
    "stage": "start_simple",
    "status": "ok",
    "config": {"model": {"name": "mlp"}, "dataset": {"name": "d"}},
    "metrics": {"test_accuracy": 0.5, "val_loss": "nan"},
    "findings": [
        {
            "id": "loss_plateau",
            "severity": "warning",
            "message": "flat",
            "evidence": {"step": 40},
            "suggestions": ["raise the lr"],
        }
    ],
    "next": ["python -m workflow.debug --workdir=runs/debug"],
    "dataset": {"name": "d", "splits": {"train": {"size": 10}}},
    "device": "cpu",
    "model_summary": [{"path": "", "type": "MLP", "param_count": 10}],
}
STAGE_SUMMARIES = {
    "start_simple": COMMON,
    "debug": {**COMMON, "stage": "debug", "metrics": {"overfit_passed": True}},
    "evaluate": {
        **COMMON,
        "stage": "evaluate",
        "bias_variance": {"rows": [["a", "b", "c"]], "decomposition": "x", "tolerances": {}},
        "train_size": {"steps": 60, "points": [{"fraction": 0.5}]},
        "error_analysis": {"splits": {"train": {}}},
    },
    "tune": {
        **{k: v for k, v in COMMON.items() if k != "model_summary"},
        "stage": "tune",
        "best": None,
        "best_config": None,
        "overrides": [],
        "range_test": None,  # disabled: written as null
        "improved_band": None,
        "rounds": [{"index": 0}],
        "trials": [],
    },
    "improve": {
        **{k: v for k, v in COMMON.items() if k != "model_summary"},
        "stage": "improve",
        "verdicts": ["underfit"],
        "candidates": [{"name": "baseline"}],
        "decision": {"chosen": None, "why": "nothing beat it"},
        "best_config": None,
        "bias_variance": None,
    },
    "run": {
        **{k: v for k, v in COMMON.items() if k not in ("model_summary", "dataset")},
        "stage": "run",
        "stopped": None,
        "final": {"step": "3_evaluate"},
        "reproduce": ["python -m workflow.evaluate"],
        "steps": [{"name": "1_start_simple"}],
    },
    "out of memory": {
        **{k: v for k, v in COMMON.items() if k not in ("model_summary", "dataset")},
        "status": "failed",
        "metrics": {},
        "memory": {"attempts": [{"batch_size": 32}], "estimate": {}},
    },
}


@pytest.mark.parametrize("stage", list(STAGE_SUMMARIES))
def test_each_stages_summary_reads_back_and_writes_the_same(stage, tmp_path):
    written = STAGE_SUMMARIES[stage]
    summary = Summary.from_json(written)
    assert summary.to_json() == written
    assert all(isinstance(f, Finding) for f in summary.findings)
    run = rundir.RunDir(str(tmp_path))
    run.write_summary(summary)
    assert json.loads((tmp_path / "summary.json").read_text()) == written
    assert run.read_summary() == summary


def test_absent_sections_stay_out_of_the_file_and_grouped_ones_come_together():
    assert set(tiny_summary().to_json()) == {
        "stage",
        "status",
        "config",
        "metrics",
        "findings",
        "next",
        "device",
    }
    tuned = tiny_summary(trials=[], rounds=[]).to_json()
    assert tuned["range_test"] is None and tuned["best_config"] is None  # the tune group
    assert "candidates" not in tuned and "stopped" not in tuned


def test_a_misspelled_field_fails():
    summary = tiny_summary()
    with pytest.raises(AttributeError):
        summary.bias_varaince = {}
    with pytest.raises(AttributeError):
        _ = summary.bias_varaince
    with pytest.raises(TypeError):
        tiny_summary(bias_varaince={})
    with pytest.raises(ValueError, match="undeclared keys \\['bias_varaince'\\]"):
        Summary.from_json({**COMMON, "bias_varaince": {}})
    with pytest.raises(ValueError, match="incomplete"):
        Summary.from_json({k: v for k, v in COMMON.items() if k != "metrics"})


def test_workflow_steps_read_back_from_workflow_json():
    step = Step("3_evaluate", "evaluate", "runs/x/3_evaluate", "configs/c.py", tiny_summary())
    again = Step.from_json(json.loads(json.dumps(files.to_jsonable(step.to_json()))))
    assert again.name == step.name and again.summary.findings == step.summary.findings
    assert again.summary.to_json()["metrics"] == {"test_accuracy": 0.5, "val_loss": "nan"}


def test_a_run_directory_written_before_keys_were_added_still_resumes():
    from workflow import config_lib

    new = rundir.config_to_dict(config_lib.load_config_file("configs/mnist1d.py"))
    old = {k: v for k, v in new.items() if k not in ("task", "tensorboard")}
    old["optimizer"] = {
        k: v for k, v in new["optimizer"].items() if k not in ("clip_norm", "accumulate_steps")
    }
    old["loss"] = "softmax_cross_entropy"  # before config.loss = "auto" (the task's own loss)
    assert rundir.config_refusal(rundir.TRAINING, old, new) is None
    # A key the run did set to something else is still a different run.
    assert "loss" in rundir.config_refusal(rundir.TRAINING, {**old, "loss": "mse"}, new)
    assert "task" in rundir.config_refusal(rundir.TRAINING, {**old, "task": "regression"}, new)
