"""Checkpoints a user reads with Orbax's standard API, and the older flat layout still resumes."""

import json
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from tests.conftest import ROOT, same_numbers, small_config, train_run
from workflow import engine, experiment
from workflow.engine import checkpoints

FLAX_MLP = "benchmarks.user_models:FlaxMLP"  # Linear, BatchNorm, Dropout: a model_state


def docs_snippet() -> str:
    """The restore snippet of docs/run-directory.md, as a user copies it."""
    with open(os.path.join(ROOT, "docs", "run-directory.md")) as f:
        page = f.read()
    section = page.split("## Checkpoints outside the workflow", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def restored_by_the_workflow(config, workdir):
    """The state the workflow itself resumes from: its newest checkpoint."""
    setup = experiment.prepare(config)
    ckpt = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"))
    try:
        state, step, skipped = ckpt.restore_latest(setup.state)
    finally:
        ckpt.close()
    assert step == config.num_steps and not skipped
    return setup, state


def leaves(tree) -> list[np.ndarray]:
    """A tree's arrays (typed PRNG keys as their key data), in path order."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = []
    for _, x in sorted(flat, key=lambda item: jax.tree_util.keystr(item[0])):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(np.asarray(x))
    return out


@pytest.mark.parametrize("model", ["", FLAX_MLP], ids=["mlp", "flax_mlp_batchnorm"])
def test_the_docs_snippet_restores_a_run_with_orbax_and_nnx_alone(model, tmp_path, monkeypatch):
    config = small_config("tabular", model)
    workdir = str(tmp_path / "run")
    train_run(config, workdir)
    monkeypatch.chdir(tmp_path)
    os.rename(workdir, tmp_path / "runs_start_simple")
    scope: dict = {}
    exec(docs_snippet().replace('"runs/start_simple"', '"runs_start_simple"'), scope)
    model_back = scope["model"]

    setup, state = restored_by_the_workflow(config, str(tmp_path / "runs_start_simple"))
    _, params, rest = nnx.split(model_back, nnx.Param, ...)
    for a, b in zip(leaves(params), leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves(rest), leaves(state.model_state), strict=True):
        np.testing.assert_array_equal(a, b)
    x = setup.dataset.split("test")[0][:8]
    expected, _ = engine.forward(setup.task.eval_graphdef, state.params, state.model_state, x)
    np.testing.assert_allclose(np.asarray(model_back(x)), np.asarray(expected), rtol=1e-6)


def test_a_checkpoint_is_nested_dicts_with_the_models_pure_params(reference_run):
    workdir, _ = reference_run
    manager = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"))
    restored = manager.restore(60, args=ocp.args.StandardRestore())
    assert sorted(restored) == ["opt_state", "params", "step"]  # an MLP has no model_state
    assert int(restored["step"]) == 60
    names = checkpoints.named_leaves(restored["params"])
    assert sorted(names) == ["hidden/0/bias", "hidden/0/kernel", "out/bias", "out/kernel"]
    assert not any(".value" in name or "[" in name for name in checkpoints.named_leaves(restored))


def test_a_run_checkpointed_in_the_older_flat_layout_resumes_to_the_same_numbers(
    reference_run, tmp_path
):
    ref_dir, ref_summary = reference_run
    workdir = tmp_path / "run"
    shutil.copytree(ref_dir, workdir)
    config = small_config()
    setup = experiment.prepare(config)
    ckpt = checkpoints.Checkpointer(str(workdir / "checkpoints"))
    state, _, _ = ckpt.restore_latest(setup.state)
    ckpt.close()
    # Rewrite steps 20 and 40 as the older layout wrote them (flat, keystr names, its checksums)
    # and drop 60, so the run resumes from an old-layout checkpoint and writes 60 anew.
    sums = {}
    for step in (20, 40):
        ckpt = checkpoints.Checkpointer(str(workdir / "checkpoints"))
        old = ckpt.restore(step, setup.state)
        ckpt.close()
        flat = checkpoints.to_flat(old)
        shutil.rmtree(workdir / "checkpoints" / str(step))
        manager = ocp.CheckpointManager(os.path.abspath(workdir / "checkpoints"))
        manager.save(step, args=ocp.args.StandardSave(flat), force=True)
        manager.wait_until_finished()
        manager.close()
        sums[str(step)] = checkpoints.digest(jax.device_get(flat))
    shutil.rmtree(workdir / "checkpoints" / "60")
    (workdir / "checkpoints" / "checksums.json").write_text(json.dumps(sums))
    assert checkpoints.Checkpointer(str(workdir / "checkpoints"))._flat_layout(40)

    summary = train_run(config, workdir)
    same_numbers(summary.metrics, ref_summary.metrics)
    assert not [f for f in summary.findings if f.id == "corrupt_checkpoint"]
    assert not checkpoints.Checkpointer(str(workdir / "checkpoints"))._flat_layout(60)
