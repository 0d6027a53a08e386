"""Data-parallel runs on 8 simulated CPU devices, as a separate process (XLA_FLAGS must be set
before jax is imported): `python parallel_worker.py CASE...`. Prints one JSON line per case.

Cases: `curves` (the loss curve of one device, 8 devices replicated and 8 sharded; `bn` adds a
BatchNorm model), `indivisible` (the error for a batch the mesh cannot split).
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

    from workflow import experiment, training

    config.parallel.data_devices = devices
    config.parallel.params = layout
    setup = experiment.prepare(config)
    result = training.fit(setup.task, setup.state, setup.dataset, config, progress=False)
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


def indivisible() -> dict:
    """The UsageError of batch 100 on 8 devices."""
    from workflow import training
    from workflow.errors import UsageError

    config = small_config(batch_size=100)
    try:
        training.data_mesh(config)
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
        else:
            result = indivisible()
        print(json.dumps({"case": case, **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
