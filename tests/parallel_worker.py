"""Data-parallel runs on 8 simulated CPU devices, as a separate process (XLA_FLAGS must be set
before jax is imported): `python parallel_worker.py CASE...`. Prints one JSON line per case.

Cases: `curves` (the loss curve of one device, 8 devices replicated and 8 sharded; `bn` adds a
BatchNorm model), `indivisible` (the error for a batch the mesh cannot split), `per_host`
(per-host data on 8 devices: two runs, a resumed one, the blocks), `per_host_2` (per-host data
on 2 devices with the multi-host test's flags, for tests/test_multihost.py to compare with).
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.conftest import small_config  # noqa: E402


def curve(config, devices: int, layout: str) -> dict:
    """One short fit on `devices` devices: per-step losses, final val loss, where params live."""
    import jax

    from workflow import engine, experiment

    config.parallel.data_devices = devices
    config.parallel.params = layout
    setup = experiment.prepare(config)
    result = engine.fit(setup.task, setup.state, setup.dataset, config, progress=False)
    leaves = jax.tree.leaves(result.state.params)
    specs = sorted({str(getattr(leaf.sharding, "spec", None)) for leaf in leaves})
    return {
        "losses": [float(v) for v in result.step_losses],
        "val_loss": result.records[-1]["val_loss"],
        "devices": len(jax.tree.leaves(result.state.params)[0].sharding.device_set),
        "param_specs": specs,
    }


def curves(kind: str, model: str) -> dict:
    """The same 40 steps on 1 device, 8 replicated and 8 sharded."""
    config = small_config(kind, model, num_steps=40, batch_size=64, checkpoint_every=0)
    if model == "mlp":  # a hidden layer the 8 devices divide, for "sharded" to split
        config.model.hidden_sizes = (64,)
    return {
        name: curve(config.copy_and_resolve_references(), devices, layout)
        for name, devices, layout in (
            ("one", 1, "replicated"),
            ("replicated", 8, "replicated"),
            ("sharded", 8, "sharded"),
        )
    }


def per_host() -> dict:
    """Per-host data on 8 devices, 40 steps: one uninterrupted run, and a second one stopped at
    step 20, checkpointed, restored and run on to 40."""
    import tempfile

    import jax
    import numpy as np

    from workflow import engine, experiment
    from workflow.engine import checkpoints

    def run(num_steps: int, checkpointer=None, restore: bool = False):
        config = small_config(num_steps=num_steps, batch_size=64, checkpoint_every=20)
        config.parallel.data = "per_host"
        setup = experiment.prepare(config)
        state = setup.state
        if restore:
            state, step, _ = checkpointer.restore_latest(setup.state)
            assert step == 20, step
        result = engine.fit(
            setup.task, state, setup.dataset, config, checkpointer=checkpointer, progress=False
        )
        return setup, result

    def params(result) -> list:
        return [np.asarray(leaf) for leaf in jax.device_get(jax.tree.leaves(result.state.params))]

    setup, first = run(40)
    with tempfile.TemporaryDirectory() as directory:
        ckpt = checkpoints.Checkpointer(directory)
        _, stopped = run(20, ckpt)
        ckpt.close()
        ckpt = checkpoints.Checkpointer(directory)
        _, resumed = run(40, ckpt, restore=True)
        ckpt.close()
    return {
        "losses": [float(v) for v in first.step_losses],
        "second_losses": [float(v) for v in (*stopped.step_losses, *resumed.step_losses)],
        "same_params": all(
            np.array_equal(a, b) for a, b in zip(params(first), params(resumed), strict=True)
        ),
        "val_loss": first.records[-1]["val_loss"],
        "data": first.data,
        "train_size": len(setup.dataset.y_train),
        "shard": setup.dataset.info.get("shard"),
        "gather": gather_check(),
    }


def gather_check() -> dict:
    """Each device's part of a batch comes from its own block: examples numbered by their row,
    gathered by engine.block_gather, against numpy's block-by-block gather."""
    import jax
    import numpy as np

    from workflow import data, engine

    config = small_config(batch_size=64)
    mesh = engine.data_mesh(config)
    n = 8 * 67 + 5  # 5 rows past the last full block, dropped
    x, y = np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32), np.arange(n)
    xg, yg, block = engine.device_blocks(x, y.astype(np.int32), mesh, held_in_parts=False)
    idx = data.block_batch_indices(block, 8, 64, 0, 0, 3)
    gather = jax.jit(engine.block_gather(mesh))
    batches = [gather(xg, yg, jax.device_put(row, engine.batch_sharding(mesh))) for row in idx]
    expected = [
        np.concatenate([d * block + row[d * 8 : (d + 1) * 8] for d in range(8)]) for row in idx
    ]
    return {
        "block": block,
        "x_spec": str(xg.sharding.spec),
        "gathered_as_expected": all(
            np.array_equal(np.asarray(yb), want) and np.array_equal(np.asarray(xb)[:, 0], want)
            for (xb, yb), want in zip(batches, expected, strict=True)
        ),
        "each_block_own_rows": bool(
            all((row[d * 8 : (d + 1) * 8] < block).all() for row in idx for d in range(8))
        ),
    }


def per_host_2() -> dict:
    """tests/test_multihost.py's run (small_config, 60 steps) with per-host data on 2 devices
    of one process: the numbers two processes of one device each must give."""
    from workflow import engine, experiment

    config = small_config()
    config.parallel.data = "per_host"
    config.parallel.data_devices = 2
    setup = experiment.prepare(config)
    result = engine.fit(setup.task, setup.state, setup.dataset, config, progress=False)
    return {
        "metrics": experiment.final_metrics(setup, result.state),
        "losses": [float(v) for v in result.step_losses],
        "data": result.data,
        "normalization": setup.dataset.normalization,
    }


def indivisible() -> dict:
    """The UsageError of batch 100 on 8 devices."""
    from workflow import engine
    from workflow.errors import UsageError

    config = small_config(batch_size=100)
    try:
        engine.data_mesh(config)
    except UsageError as e:
        return {"error": str(e)}
    return {"error": None}


def main(cases: list[str]) -> None:
    """Run each case and print its JSON line."""
    for case in cases:
        if case == "curves":
            result = curves("tabular", "mlp")
        elif case == "bn":
            result = curves("image", "resnet_small")
        elif case == "per_host":
            result = per_host()
        elif case == "per_host_2":
            result = per_host_2()
        else:
            result = indivisible()
        print(json.dumps({"case": case, **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
